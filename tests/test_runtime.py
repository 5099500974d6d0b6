"""The runtimes under the serving core: LiteRT conversion and its proof, the TensorFlow
fallback, the interpreter pool under concurrent load, and decoding outside the graph.

Everything runs in-process on the tiny real models of `tiny_models` (tests/conftest.py),
except publishing, which is the CLI's job.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import prometheus_client
import psutil
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image

from contract import litert as conversion
from contract import runtime
from contract.card import FILE as CARD_FILE
from contract.runtime import LITERT, TENSORFLOW, LiteRTRuntime, SavedModelRuntime
from service.core import runtimes as served_runtimes
from service.core.batching import Batcher
from service.core.config import Settings
from service.core.images import decode, resize
from service.core.models import locate
from service.kinds import Classifier, Generator
from tests.conftest import eventually
from training.data import load_dataset
from training.export import SCORE_TOLERANCE
from training.gan_export import PIXEL_TOLERANCE

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "camera")


def encode(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.squeeze(pixels)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fashion() -> np.ndarray:
    return load_dataset("fashion-mnist", split="test").images[:24]


@pytest.fixture(scope="module")
def classifier_conversion(tiny_models):
    info = locate(str(tiny_models["classifier"]))
    return info.path, info, conversion.convert_and_verify(info.path, info.card, interpreters=2)


@pytest.fixture(scope="module")
def generator_conversion(tiny_models):
    info = locate(str(tiny_models["generator"]))
    return info.path, info, conversion.convert_and_verify(info.path, info.card, interpreters=2)


# -- the export's numeric signature (training/export.py) ------------------------------------


def test_classify_resized_is_the_numeric_core_of_classify_pixels(tiny_models, fashion):
    model = tf.saved_model.load(str(tiny_models["classifier"]))
    size = json.loads((tiny_models["classifier"] / "model_card.json").read_text())["image_size"][0]
    pixels = np.stack([resize(image, size) for image in fashion[:6]])
    resized = model.signatures["classify_resized"](images=tf.constant(pixels))
    assert set(resized) == {"scores"}
    by_pixels = model.signatures["classify_pixels"](images=tf.constant(pixels))["scores"]
    np.testing.assert_allclose(resized["scores"].numpy(), by_pixels.numpy(), atol=1e-6)


# -- conversion and its proof ---------------------------------------------------------------


def test_classifier_conversion_is_verified(classifier_conversion):
    _, _, converted = classifier_conversion
    report = converted.report
    assert converted.verified, report
    assert report["max_difference"] <= SCORE_TOLERANCE and report["top1_agreement"] == 1.0
    assert report["calibration"] == "the export's 40 calibration inputs" and report["signature"] == "classify_resized"
    assert set(report["images_per_second"]) == {TENSORFLOW, LITERT}
    assert all(cost > 0 for cost in report["cpu_ms_per_image"].values()) and len(report["cpu_ms_per_image"]) == 2


def test_the_default_recipes_backbone_model_converts_and_verifies(tmp_path):
    """The tiny classifier above is the scratch CNN; this is the default recipe's model
    (EfficientNet-Lite0, max-pooled features of six depths, a dense head), trained on a
    few images: its flatbuffer must verify too, or `make demo` would serve it on TensorFlow."""
    trained = subprocess.run(
        [sys.executable, "-m", "training.classifier", "--data", "fashion-mnist", "--quick", "--per-class", "5",
         "--image-size", "96", "--head-steps", "50", "--no-evaluate", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    info = locate(str(tmp_path / "1"))
    assert info.card.backbone == "efficientnet-lite0"
    converted = conversion.convert_and_verify(info.path, info.card, interpreters=2)
    assert converted.verified, converted.report
    assert converted.report["max_difference"] <= SCORE_TOLERANCE


@pytest.mark.parametrize("cost, speed, litert", [
    ({TENSORFLOW: 4.0, LITERT: 3.0}, {TENSORFLOW: 300, LITERT: 200}, True),  # CPU cost decides, not the wall clock
    ({TENSORFLOW: 3.0, LITERT: 4.0}, {TENSORFLOW: 200, LITERT: 300}, False),
])
def test_auto_prefers_the_runtime_that_costs_less_cpu(cost, speed, litert):
    report = {"verified": True, "images_per_second": speed, "cpu_ms_per_image": cost}
    assert conversion.Conversion(b"flatbuffer", report).faster is litert


def test_litert_equals_tensorflow_on_photos_and_fashion_items(classifier_conversion, fashion):
    """Given identical pixels, the two runtimes agree within the tolerance, with the same top-1."""
    path, info, converted = classifier_conversion
    size = info.card.image_size[0]
    files = [encode(getattr(skimage.data, name)()) for name in PHOTOS] + [encode(item) for item in fashion]
    pixels = np.stack([decode(data, size, "image") for data in files])
    expected = SavedModelRuntime(path, "classify_resized").run({"images": pixels})["scores"]
    got = LiteRTRuntime(converted.flatbuffer, 1).run({"images": pixels})["scores"]
    assert np.abs(got - expected).max() <= SCORE_TOLERANCE
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_end_to_end_against_the_exported_graph(classifier_conversion, fashion):
    """Bytes in, scores out: Pillow decoding + LiteRT against the graph's own `serving_default`.

    Lossless files enlarged to the model's size (Fashion-MNIST's) decode to the graph's
    pixels bit for bit (service/core/enlarge.py), so only LiteRT differs; shrunk ones to the
    same pixels but for rounding ties (0.01% of the pixels one grey level off), so the scores
    agree closely; JPEG decoders differ more (TF uses libjpeg's fast integer DCT, Pillow the
    accurate one). Measured on 200 items: 0.006 for the 160-px EfficientNet-Lite0
    classifier's photos, top-1 the same throughout.
    """
    path, info, converted = classifier_conversion
    size = info.card.image_size[0]
    graph = tf.saved_model.load(path).signatures["serving_default"]
    litert = LiteRTRuntime(converted.flatbuffer, 1)

    def largest_difference(files: list[bytes]) -> float:
        served = litert.run({"images": np.stack([decode(data, size, "image") for data in files])})["scores"]
        return float(np.abs(served - graph(image_bytes=tf.constant(files))["scores"].numpy()).max())

    assert largest_difference([encode(item) for item in fashion]) <= SCORE_TOLERANCE
    photos = [getattr(skimage.data, name)() for name in PHOTOS]
    assert largest_difference([encode(photo) for photo in photos]) <= 1e-3
    assert largest_difference([encode(photo, "JPEG", quality=90) for photo in photos]) <= 0.05


def test_generator_conversion_is_verified_and_equal(generator_conversion):
    path, info, converted = generator_conversion
    assert converted.verified, converted.report
    latents = np.random.default_rng(1).standard_normal((5, info.card.latent_dim)).astype(np.float32)
    inputs = {"latents": latents, "class_ids": np.array([0, 3, 9, 1, 1], np.int32)}
    expected = SavedModelRuntime(path).run(inputs)["images"]
    got = LiteRTRuntime(converted.flatbuffer, 1).run(inputs)["images"]
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= PIXEL_TOLERANCE


def test_a_stored_conversion_is_read_back(classifier_conversion, tmp_path):
    _, _, converted = classifier_conversion
    converted.save(tmp_path)
    again = conversion.Conversion.load(tmp_path)
    assert again.verified and again.flatbuffer == converted.flatbuffer and again.report == converted.report
    assert conversion.Conversion.load(tmp_path / "elsewhere") is None


# -- choosing the runtime -------------------------------------------------------------------


def test_failed_conversion_is_served_by_tensorflow_with_the_reason(tiny_models, tmp_path, caplog, fashion):
    export = tmp_path / "1"
    shutil.copytree(tiny_models["classifier"], export)
    (export / conversion.CALIBRATION).unlink()  # fails in the conversion's own process, as a real one would
    with caplog.at_level(logging.WARNING, logger="diptych"):
        model = Classifier.load(locate(str(export)), Settings(classifier_runtime="litert", interpreters=2))
    try:
        assert model.info.runtime == TENSORFLOW
        assert model.info.conversion["verified"] is False and "no calibration sample" in model.info.conversion["reason"]
        assert any("runs on TensorFlow" in r.message and "no calibration sample" in r.message for r in caplog.records)
        scores = model.batcher.submit([(encode(fashion[0]), "images[0]")])[0].result(30)
        assert scores.shape == (10,) and abs(scores.sum() - 1) < 1e-4
    finally:
        model.close()


def test_a_conversion_that_does_not_finish_is_stopped_with_the_reason(tiny_models, tmp_path):
    """The child provably never finishes: the version's card is a named pipe that nobody
    writes to, so reading it blocks for ever. Only the timeout can end `convert_apart`, and
    the child is gone after it."""
    info = locate(str(tiny_models["classifier"]))
    stuck = tmp_path / "1"
    shutil.copytree(info.path, stuck)
    (stuck / CARD_FILE).unlink()
    os.mkfifo(stuck / CARD_FILE)
    pool = ThreadPoolExecutor(1)
    try:
        stopped = pool.submit(conversion.convert_apart, stuck, info.card, interpreters=1, timeout_s=3).result(300)
        assert not stopped.verified and stopped.report["reason"] == "the conversion did not finish in 3 s"
        assert not [child.cmdline() for child in psutil.Process().children(recursive=True)
                    if "contract.litert" in child.cmdline()]
    finally:
        with contextlib.suppress(OSError):  # a child still blocked reads end-of-file, fails and exits
            os.close(os.open(stuck / CARD_FILE, os.O_WRONLY | os.O_NONBLOCK))
        pool.shutdown()


def test_tensorflow_runtime_never_converts(tiny_models, monkeypatch):
    monkeypatch.setattr(served_runtimes, "convert_apart",
                        lambda *args: pytest.fail("converted although tensorflow was chosen"))
    model = Generator.load(locate(str(tiny_models["generator"])), Settings(generator_runtime="tensorflow"))
    model.close()
    assert model.info.runtime == TENSORFLOW and model.info.conversion is None


def test_runtime_settings_are_checked():
    assert Settings.load({"DIPTYCH_CLASSIFIER_RUNTIME": "litert", "DIPTYCH_INTERPRETERS": "3"}).interpreters == 3
    with pytest.raises(ValueError, match="generator_runtime"):
        Settings.load({"DIPTYCH_GENERATOR_RUNTIME": "onnx"})


def test_publish_stores_the_verified_conversion_beside_the_saved_model(tiny_models, tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    published = subprocess.run([sys.executable, "-m", "training.publish", str(tiny_models["classifier"])],
                               env=env, capture_output=True, text=True, cwd=ROOT)
    assert published.returncode == 0, published.stderr[-3000:]
    assert "LiteRT verified" in published.stdout
    stored = next((tmp_path / "bentoml" / "models" / "classifier").glob("*/saved_model.pb")).parent
    assert (stored / "litert" / "model.tflite").is_file()
    assert json.loads((stored / "litert" / "report.json").read_text())["verified"] is True

    def publish(path):
        return subprocess.run([sys.executable, "-m", "training.publish", str(path)], env=env,
                              capture_output=True, text=True, cwd=ROOT)

    assert "already published" in publish(tiny_models["classifier"]).stdout  # same export: nothing to do
    # Another export with the same name and version (a second checkout, an older recipe):
    # refused with what to do, and the stored model is left as it was.
    other = tmp_path / "other" / "1"
    shutil.copytree(tiny_models["classifier"], other)
    (other / "saved_model.pb").write_bytes((other / "saved_model.pb").read_bytes() + b"\0")
    before = (stored / "saved_model.pb").read_bytes()
    refused = publish(other)
    assert refused.returncode == 2
    assert "already holds a different model" in refused.stderr and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (stored / "saved_model.pb").read_bytes() == before


# -- the pool under load --------------------------------------------------------------------


def test_classifier_pool_answers_each_request_with_its_own_scores(classifier_conversion, tiny_models, fashion):
    """Many threads, distinct images, two interpreters: every answer is its own image's."""
    path, info, converted = classifier_conversion
    size = info.card.image_size[0]
    files = [encode(item) for item in fashion] + [encode(getattr(skimage.data, name)()) for name in PHOTOS]
    expected = SavedModelRuntime(path, "classify_resized").run(
        {"images": np.stack([decode(data, size, "image") for data in files])})["scores"]
    labels = {"model": info.name, "version": info.version, "runtime": LITERT}  # the runtime is a label
    metrics = ("diptych_batch_size_sum", "diptych_batch_size_count")

    def recorded() -> dict[str, float]:  # the process-wide registry: other tests may have counted here too
        return {name: prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0 for name in metrics}

    before = recorded()
    model = Classifier.load(locate(str(tiny_models["classifier"])), Settings(classifier_runtime="litert", interpreters=2,
                                                                    max_batch_size=8))
    assert model.info.runtime == LITERT
    assert model.info.conversion["niceness"] == 19  # converted in a process of its own, at the lowest priority

    def request(index: int) -> tuple[int, np.ndarray]:
        chosen = [(index + offset) % len(files) for offset in range(1 + index % 3)]  # 1-3 images a request
        futures = model.batcher.submit([(files[i], f"images[{n}]") for n, i in enumerate(chosen)])
        return chosen, [future.result(60) for future in futures]

    try:
        with ThreadPoolExecutor(16) as clients:
            answers = list(clients.map(request, range(120)))
    finally:
        model.close()
    for chosen, rows in answers:
        np.testing.assert_allclose(np.stack(rows), expected[chosen], atol=SCORE_TOLERANCE)
    items = sum(len(chosen) for chosen, _ in answers)
    moved = {name: value - before[name] for name, value in recorded().items()}
    assert moved["diptych_batch_size_sum"] == items  # every image in exactly one model call
    assert 1 <= moved["diptych_batch_size_count"] <= items


def test_generator_pool_answers_each_request_with_its_own_images(generator_conversion, tiny_models):
    path, info, converted = generator_conversion
    rng = np.random.default_rng(2)
    latents = rng.standard_normal((40, info.card.latent_dim)).astype(np.float32)
    class_ids = (np.arange(40) % 10).astype(np.int32)
    expected = SavedModelRuntime(path).run({"latents": latents, "class_ids": class_ids})["images"]
    model = Generator.load(locate(str(tiny_models["generator"])), Settings(generator_runtime="litert", interpreters=2))
    assert model.info.runtime == LITERT

    def request(index: int) -> tuple[list[int], list[np.ndarray]]:
        chosen = [(index * 7 + offset) % 40 for offset in range(1 + index % 4)]
        futures = model.batcher.submit([(latents[i], int(class_ids[i])) for i in chosen])
        return chosen, [future.result(60) for future in futures]

    try:
        with ThreadPoolExecutor(16) as clients:
            answers = list(clients.map(request, range(120)))
    finally:
        model.close()
    for chosen, images in answers:
        assert np.abs(np.stack(images).astype(int) - expected[chosen].astype(int)).max() <= PIXEL_TOLERANCE


def test_batch_workers_share_a_burst_and_run_at_once():
    both_running = threading.Barrier(2, timeout=10)  # broken (an error) unless two batches overlap
    sizes = []

    def run_batch(items):
        sizes.append(len(items))
        both_running.wait()
        return [item * 2 for item in items]

    batcher = Batcher(run_batch, max_batch_size=32, workers=2)
    assert eventually(lambda: batcher._idle == 2, 10)  # both workers waiting: the burst below finds them idle
    futures = batcher.submit(list(range(10)))
    assert [future.result(10) for future in futures] == [2 * i for i in range(10)]
    assert sorted(sizes) == [5, 5]
    batcher.close()


# -- decoding outside the graph -------------------------------------------------------------


@pytest.mark.parametrize("name", PHOTOS)
def test_resize_matches_the_graph(name):
    """Shrinking (Pillow in float mode) against `tf.image.resize(antialias=True)`: equal up to
    rounding ties. Enlarging is bit for bit: tests/test_enlarge.py."""
    photo = getattr(skimage.data, name)()
    photo = photo if photo.ndim == 3 else photo[..., None]
    for size in (32, 160, 224):
        graph = tf.image.resize(tf.constant(photo), (size, size), antialias=True)
        graph = tf.cast(tf.clip_by_value(tf.round(graph), 0, 255), tf.uint8).numpy()
        graph = np.repeat(graph, 3, axis=-1) if graph.shape[-1] == 1 else graph
        difference = np.abs(resize(photo, size).astype(int) - graph.astype(int))
        assert difference.max() <= 1 and difference.mean() < 0.01


def test_decode_turns_photos_upright_and_reads_every_mode():
    half = np.zeros((20, 40, 3), np.uint8)
    half[:, 20:] = 255  # right half white
    stored = Image.fromarray(half)
    exif = stored.getexif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=95)
    upright = decode(buffer.getvalue(), 16, "images[0]").astype(int)
    assert upright[:6].mean() < 40 and upright[-6:].mean() > 215  # the white half is now at the bottom

    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    reference = decode(encode(grey), 16, "image")
    assert reference.shape == (16, 16, 3) and (reference[..., 0] == grey).all()
    for variant in (Image.fromarray(grey).convert("RGBA"), Image.fromarray(grey).convert("P"),
                    Image.fromarray(grey.astype(np.uint16) * 257)):
        buffer = io.BytesIO()
        variant.save(buffer, format="PNG")
        np.testing.assert_array_equal(decode(buffer.getvalue(), 16, "image"), reference)


def test_large_jpegs_are_decoded_in_draft_mode_close_to_a_full_decode():
    photo = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((2048, 2048)))
    data = encode(photo, "JPEG", quality=90)
    full = resize(np.asarray(Image.open(io.BytesIO(data))), 64)
    drafted = decode(data, 64, "image")
    assert np.abs(drafted.astype(int) - full.astype(int)).mean() < 2


@pytest.mark.parametrize("files, quota", [
    ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2, 1.5 CPUs: rounded up
    ({"cpu.max": "max 100000\n"}, None),
    ({"quota": "50000\n", "period": "100000\n"}, 1),  # cgroup v1
    ({"quota": "-1\n", "period": "100000\n"}, None),
    ({}, None),  # no cgroup files: no quota
])
def test_the_cpu_quota_of_a_container_caps_the_cores(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    layout = ((str(tmp_path / "cpu.max"),), (str(tmp_path / "quota"), str(tmp_path / "period")))
    assert runtime.cpu_quota(layout) == quota
