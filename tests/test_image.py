"""The container image (deploy/Dockerfile), built and run in a real Docker engine.

The image is built as `make image` builds it (deploy/image/build.py), with the tiny models,
in a private dockerd (tests/docker_engine.py; skipped, saying why, where none can start).
One container runs for the module as production would run it: read-only root file system
with tmpfs where the service writes, a memory limit, two workers; host networking on
loopback ports picked here. Then HTTP and gRPC inference, health, metrics, and last a
SIGTERM that must stop it cleanly. The Dockerfile lint needs no engine.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from proto.diptych.v1 import diptych_pb2 as pb
from proto.diptych.v1 import diptych_pb2_grpc
from tests.conftest import ROOT, free_port
from tests.docker_engine import WRITABLE, DockerEngine, diptych_image, docker_engine, removed_after  # noqa: F401
from tests.grpc_clients import health, png_bytes

DOCKERFILES = [ROOT / "deploy" / "Dockerfile", ROOT / "deploy" / "image" / "prometheus.Dockerfile"]
GRACE_S = 40  # docker stop's grace period in the test; compose and Kubernetes give 45 s
WORKERS = 2


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_lint_clean(dockerfile: Path):
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


class Container:
    """The module's running container: its name, loopback addresses and engine."""

    def __init__(self, engine: DockerEngine, name: str) -> None:
        self.engine, self.name = engine, name
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url, self.grpc_target = f"http://127.0.0.1:{self.http_port}", f"127.0.0.1:{self.grpc_port}"

    def state(self) -> dict:
        return json.loads(self.engine.docker("inspect", "--format", "{{json .State}}", self.name).stdout)

    def logs(self) -> str:
        result = self.engine.docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *command: str) -> subprocess.CompletedProcess:
        return self.engine.docker("exec", self.name, *command, check=False)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.state()["Running"], f"the container stopped:\n{self.logs()[-4000:]}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise TimeoutError(f"/readyz not 200 after {timeout} s:\n{self.logs()[-4000:]}")


@pytest.fixture(scope="module")
def container(docker_engine: DockerEngine, diptych_image: str):
    with removed_after(docker_engine, f"diptych-test-{os.getpid()}") as name:
        running = Container(docker_engine, name)
        tmpfs = [option for path in WRITABLE for option in ("--tmpfs", path)]
        env = {"BENTOML_HOST": "127.0.0.1", "BENTOML_PORT": running.http_port, "DIPTYCH_GRPC_HOST": "127.0.0.1",
               "DIPTYCH_GRPC_PORT": running.grpc_port, "DIPTYCH_WORKERS": WORKERS, "DIPTYCH_INTERPRETERS": 1}
        docker_engine.docker(
            "run", "--detach", "--name", name, "--network", "host", "--read-only", *tmpfs, "--memory", "3g",
            "--health-interval", "1s",  # the image's check, asked more often than its 15 s
            *[option for key, value in env.items() for option in ("--env", f"{key}={value}")], diptych_image)
        running.wait_ready()
        yield running


@pytest.fixture(scope="module")
def http(container: Container):
    with httpx.Client(base_url=container.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def diptych(container: Container):
    with grpc.insecure_channel(container.grpc_target) as channel:
        yield diptych_pb2_grpc.DiptychStub(channel), channel


@pytest.fixture(scope="module")
def fashion_pngs() -> list[bytes]:
    """Three Fashion-MNIST test images (of different classes) as PNG files."""
    from training.data import load_dataset

    test = load_dataset("fashion-mnist", split="test", per_class=1)
    return [png_bytes(image) for image in test.images[:3]]


@pytest.fixture(scope="module")
def expected_top1(tiny_models, fashion_pngs) -> list[tuple[str, float]]:
    """(label, score) the tiny classifier gives each image here, outside the container:
    the service's own decoding, then the SavedModel's numeric signature."""
    import tensorflow as tf

    from service.core.images import decode

    card = json.loads((tiny_models["classifier"] / "model_card.json").read_text())
    size, labels = int(card["image_size"][0]), card["labels"]
    pixels = np.stack([decode(data, size, "images") for data in fashion_pngs])
    model = tf.saved_model.load(str(tiny_models["classifier"]))
    scores = model.signatures["classify_resized"](images=tf.constant(pixels))["scores"].numpy()
    return [(labels[int(row.argmax())], float(row.max())) for row in scores]


@pytest.mark.slow
def test_image_metadata(docker_engine: DockerEngine, diptych_image: str):
    """Non-root, both ports, a HEALTHCHECK, no phoning home, OCI labels with this revision."""
    config = json.loads(docker_engine.docker("image", "inspect", "--format", "{{json .Config}}", diptych_image).stdout)
    assert config["User"] == "10001:10001"
    assert {"3000/tcp", "50051/tcp"} <= set(config["ExposedPorts"])
    assert "/opt/diptych/bin/healthcheck.py" in config["Healthcheck"]["Test"]
    assert "BENTOML_DO_NOT_TRACK=true" in config["Env"]
    labels = config["Labels"]
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    assert labels["org.opencontainers.image.revision"] == (revision.stdout.strip() or "unknown")
    for key in ("title", "description", "licenses", "version", "created"):
        assert labels[f"org.opencontainers.image.{key}"], key


@pytest.mark.slow
def test_bad_worker_setting_exits_with_a_reason(docker_engine: DockerEngine, diptych_image: str):
    result = docker_engine.docker("run", "--rm", "--network", "none", "--env", "DIPTYCH_WORKERS=two", diptych_image,
                                  check=False)
    assert result.returncode == 1
    assert "DIPTYCH_WORKERS must be a whole number" in result.stderr


@pytest.mark.slow
def test_runs_as_non_root_on_a_read_only_root(container: Container):
    assert container.exec("id", "-u").stdout.strip() == "10001"
    written = container.exec("touch", "/opt/diptych/service/x")
    assert written.returncode != 0 and "Read-only file system" in written.stderr


@pytest.mark.slow
def test_the_image_serves_with_the_contract_and_without_training(container: Container):
    """Training and serving share only the model contract: training/ is not in the image."""
    assert container.exec("ls", "/opt/diptych").stdout.split() == ["bin", "contract", "proto", "service"]


@pytest.mark.slow
def test_workers_from_env(container: Container):
    """DIPTYCH_WORKERS=2 → two BentoML worker processes, each with the models."""
    workers = "import os; print(sum(open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')[2:3] == " \
              "[b'_bentoml_impl.worker.service'] for pid in os.listdir('/proc') if pid.isdigit()))"
    count = container.exec("python", "-c", workers)  # worker command lines: python -m _bentoml_impl.worker.service
    assert count.stdout.strip() == str(WORKERS), count.stderr


@pytest.mark.slow
def test_http_classify(http: httpx.Client, fashion_pngs, expected_top1):
    files = [("images", (f"{index}.png", data, "image/png")) for index, data in enumerate(fashion_pngs)]
    response = http.post("/classify", files=files, data={"top_k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "classifier"
    for row, (label, score) in zip(body["predictions"], expected_top1, strict=True):
        assert len(row) == 3
        assert row[0]["label"] == label
        assert row[0]["score"] == pytest.approx(score, abs=1e-4)


@pytest.mark.slow
def test_grpc_classify(diptych, fashion_pngs, expected_top1):
    stub, _ = diptych
    reply = stub.Classify(pb.ClassifyRequest(images=fashion_pngs, top_k=2), timeout=30)
    assert [(row.labels[0].label, pytest.approx(row.labels[0].score, abs=1e-4)) for row in reply.predictions] == \
        expected_top1


@pytest.mark.slow
def test_generate_over_http_and_grpc_agree(http: httpx.Client, diptych):
    """The same seed gives the same images on both protocols: one engine behind both."""
    stub, _ = diptych
    response = http.post("/generate", json={"seed": 7, "count": 2, "format": "json"})
    assert response.status_code == 200, response.text
    over_http = [pixels(base64.b64decode(image["png"])) for image in response.json()["images"]]
    over_grpc = [pixels(image.png) for image in stub.Generate(pb.GenerateRequest(seed=7, count=2), timeout=30).images]
    assert len(over_http) == 2 and over_http[0].shape == (28, 28)
    assert all(np.array_equal(a, b) for a, b in zip(over_http, over_grpc, strict=True))
    assert not np.array_equal(over_http[0], over_http[1])


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


@pytest.mark.slow
def test_health_endpoints_and_healthcheck(container: Container, http: httpx.Client, diptych):
    assert http.get("/livez").status_code == 200
    assert http.get("/readyz").status_code == 200
    assert health(diptych[1]) == 1  # SERVING
    deadline = time.monotonic() + 60
    while (status := container.state()["Health"]["Status"]) != "healthy" and time.monotonic() < deadline:
        time.sleep(1)
    assert status == "healthy", container.state()["Health"]["Log"][-3:]


@pytest.mark.slow
def test_metrics(http: httpx.Client, fashion_pngs):
    """/metrics carries diptych's own metrics, summed over both workers."""
    before = metric_families(http)
    files = [("images", (f"{index}.png", data, "image/png")) for index, data in enumerate(fashion_pngs[:2])]
    assert http.post("/classify", files=files).status_code == 200
    after = metric_families(http)
    assert {"diptych_model_info", "diptych_images_classified", "diptych_requests", "diptych_inference_seconds"} <= \
        set(after)
    assert total(after["diptych_images_classified"]) == total(before["diptych_images_classified"]) + 2
    kinds = {sample.labels["kind"] for sample in after["diptych_model_info"].samples if sample.value == 1}
    assert kinds == {"classifier", "generator"}


def metric_families(http: httpx.Client) -> dict:
    response = http.get("/metrics")
    assert response.status_code == 200
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def total(counter) -> float:
    return sum(sample.value for sample in counter.samples if sample.name.endswith("_total"))


@pytest.mark.slow
def test_sigterm_stops_cleanly_within_the_grace_period(container: Container):
    """Last: `docker stop` sends SIGTERM; BentoML runs the shutdown hooks in every worker
    (gRPC drains, batchers stop) and the container exits 0 by itself: had the grace period
    run out, docker would have sent SIGKILL, and the exit code would be 137."""
    container.engine.docker("stop", "--time", str(GRACE_S), container.name, timeout=GRACE_S + 30)
    state, logs = container.state(), container.logs()
    assert state["ExitCode"] == 0 and not state["OOMKilled"], logs[-3000:]
    assert logs.count("Completed async cleanup hook: close") == WORKERS, logs[-3000:]
