"""The BentoML service over real HTTP: `bentoml serve` on loopback with tiny real models.

Two servers start side by side, once for the module: an open one with the defaults
(models from the BentoML store) and a locked-down one (API keys, small limits, models
from folders).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys

import httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, Server, eventually
from tests.reliability import connect, metric, read_response, request_head

pytestmark = pytest.mark.slow
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

KEYS = ("key-from-env", "key-from-file")
LIMITS = {"DIPTYCH_MAX_IMAGES": "2", "DIPTYCH_MAX_PIXELS": "100000", "DIPTYCH_MAX_BODY_BYTES": "200000",
          "DIPTYCH_MAX_GENERATE": "4", "DIPTYCH_MAX_STEPS": "4", "DIPTYCH_MAX_CONCURRENCY": "1",
          "DIPTYCH_TIMEOUT_S": "0"}  # no wait at all: every inference times out, deterministically


@pytest.fixture(scope="module")
def servers(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
    env = {**os.environ, "BENTOML_HOME": str(tmp / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    env = {key: value for key, value in env.items() if not key.startswith("DIPTYCH_")}
    publish = subprocess.run([sys.executable, "-m", "training.publish", str(tiny_models["classifier"]),
                              str(tiny_models["generator"])], env=env, capture_output=True, text=True, cwd=ROOT)
    assert publish.returncode == 0, publish.stderr[-3000:]
    (tmp / "keys").write_text(f"# mounted secret\n{KEYS[1]}\n")
    open_server = Server(env, tmp / "open.log")
    open_server.home = tmp / "bentoml"  # its model store, with the LiteRT conversions training.publish stored
    # A BENTOML_HOME of its own (its models are folders): servers sharing one also share the
    # metrics folder in it, and each would count the other's models in diptych_model_info.
    locked = Server({**env, **LIMITS, "BENTOML_HOME": str(tmp / "locked-home"),
                     "DIPTYCH_API_KEYS": KEYS[0], "DIPTYCH_API_KEYS_FILE": str(tmp / "keys"),
                     "DIPTYCH_ACCESS_LOG": "true", "DIPTYCH_TRACING": "true",
                     "DIPTYCH_CLASSIFIER": str(tiny_models["classifier"]),
                     "DIPTYCH_GENERATOR": str(tiny_models["generator"])}, tmp / "locked.log")
    try:
        open_server.wait("/livez")
        # Live but still loading: readiness and inference say so, with Retry-After.
        open_server.startup = (open_server.client.get("/readyz"), classify(open_server.client, [png_bytes()]))
        open_server.wait("/readyz")
        locked.wait("/readyz")
        yield open_server, locked
    finally:
        open_server.stop()
        locked.stop()


@pytest.fixture(scope="module")
def server(servers) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def locked(servers) -> Server:
    return servers[1]


@pytest.fixture(scope="module")
def fashion(tiny_models):
    """30 Fashion-MNIST test items as PNG bytes, their labels, and the raw model's scores."""
    import tensorflow as tf

    from training.data import load_dataset

    test = load_dataset("fashion-mnist", split="test")
    images = [png_bytes(image) for image in test.images[:30]]
    raw = tf.saved_model.load(str(tiny_models["classifier"])).signatures["serving_default"]
    scores = raw(image_bytes=tf.constant(images))["scores"].numpy()
    return images, [test.class_names[i] for i in test.labels[:30]], scores, test.class_names


def png_bytes(pixels: np.ndarray | None = None, fmt: str = "PNG", mode: str | None = None) -> bytes:
    image = Image.fromarray(np.squeeze(pixels)) if pixels is not None else Image.new("RGB", (40, 30), (90, 30, 200))
    buffer = io.BytesIO()
    (image.convert(mode) if mode else image).save(buffer, format=fmt)
    return buffer.getvalue()


def classify(client: httpx.Client, images: list[bytes], **fields) -> httpx.Response:
    body = {"images": [base64.b64encode(image).decode() for image in images], **fields}
    return client.post("/classify", json=body)


def assert_error(response: httpx.Response, status: int, field: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if field:
        fields = [".".join(str(part) for part in item["loc"]) for item in body["detail"]]
        assert any(name.startswith(field) for name in fields), (field, body)
    assert all(item["msg"] for item in body["detail"])
    return body


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
    }


def total(metrics: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in metrics.items() if sample == name and wanted <= sample_labels)


# -- readiness, health, models --------------------------------------------------------------


def test_ready_only_after_models_are_warm(server):
    readyz, inference = server.startup
    assert readyz.status_code == 503
    assert inference.status_code == 503 and inference.headers["Retry-After"]
    assert inference.json()["detail"][0]["type"] == "not_ready"
    assert server.client.get("/readyz").status_code == 200
    assert server.client.get("/livez").status_code == 200


def test_models_lists_both_cards(server, tiny_models):
    models = {model["kind"]: model for model in server.client.get("/models").json()["models"]}
    assert models["classifier"]["name"] == "classifier" and models["classifier"]["version"] == "1"
    assert models["classifier"]["source"] == "classifier:1"  # the store tag of the version served
    assert len(models["classifier"]["card"]["labels"]) == 10
    assert models["generator"]["card"]["latent_dim"] > 0
    assert server.client.get("/models/generator").json()["card"]["classes"][7] == "Sneaker"
    assert_error(server.client.get("/models/nope"), 404, "name")


def test_openapi_documents_every_field(server):
    spec = server.client.get("/docs.json").json()
    fields = {
        route: set(spec["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"])
        for route in ("/classify", "/generate", "/interpolate")
    }
    assert fields == {
        "/classify": {"images", "top_k", "model", "abstain_below"},
        "/generate": {"count", "seed", "class", "latents", "psi", "model", "format"},
        "/interpolate": {"seeds", "latents", "steps", "class", "psi", "model"},
    }


# -- classify -------------------------------------------------------------------------------


def test_classify_photos_as_multipart(server):
    photos = {"coffee.jpg": png_bytes(skimage.data.coffee(), "JPEG"), "chelsea.png": png_bytes(skimage.data.chelsea()),
              "astronaut.webp": png_bytes(skimage.data.astronaut(), "WEBP")}
    response = server.client.post("/classify", files=[("images", (name, data)) for name, data in photos.items()],
                                  data={"top_k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    # auto: LiteRT when its stored conversion is verified and measured cheaper in CPU per image
    report = json.loads(next(server.home.glob("models/classifier/*/litert/report.json")).read_text())
    cost = report["cpu_ms_per_image"]
    cheaper = "litert" if report["verified"] and cost["litert"] < cost["tensorflow"] else "tensorflow"
    assert response.headers["X-Model-Runtime"] == cheaper, report
    assert body["model"] == {"name": "classifier", "version": "1", "runtime": cheaper}
    assert response.headers["X-Model-Name"] == "classifier" and response.headers["X-Model-Version"] == "1"
    assert [len(labels) for labels in body["predictions"]] == [3, 3, 3]
    for labels in body["predictions"]:
        scores = [item["score"] for item in labels]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001


def test_classify_fashion_mnist_matches_the_raw_model(server, fashion):
    images, truth, raw_scores, class_names = fashion
    response = classify(server.client, images[:30], top_k=10)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    for labels, raw in zip(predictions, raw_scores):
        served = {item["label"]: item["score"] for item in labels}
        np.testing.assert_allclose([served[name] for name in class_names], raw, atol=1e-4)
    top1 = [labels[0]["label"] for labels in predictions]
    assert np.mean([p == t for p, t in zip(top1, truth)]) > 0.3  # chance is 0.1


def test_classify_every_format_and_mode(server, tiny_models):
    """Each file gets the scores the exported graph's own `serving_default` gives it (for
    the TIFF and the 1-bit BMP, which TensorFlow's decoder cannot read: a PNG of the same
    pixels), so every format and mode is read as the model was trained to see it."""
    import tensorflow as tf

    photo = skimage.data.chelsea()[::8, ::8]
    variants = [png_bytes(photo, "BMP"), png_bytes(photo, "GIF"), png_bytes(photo, "TIFF"),
                png_bytes(photo, "PNG", "RGBA"), png_bytes(photo, "PNG", "I;16"), png_bytes(photo, "JPEG", "CMYK"),
                png_bytes(photo, "BMP", "1"), png_bytes(photo, "PNG", "P"), png_bytes(photo, "JPEG", "L")]
    response = classify(server.client, variants, top_k=10)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(variants)
    graph = tf.saved_model.load(str(tiny_models["classifier"])).signatures["serving_default"]
    readable = [png_bytes(np.asarray(Image.open(io.BytesIO(data)))) if index in (2, 6) else data
                for index, data in enumerate(variants)]
    expected = graph(image_bytes=tf.constant(readable))["scores"].numpy()
    labels = server.client.get("/models/classifier").json()["card"]["labels"]
    for index, (row, scores) in enumerate(zip(predictions, expected)):
        served = {item["label"]: item["score"] for item in row}
        assert sorted(served) == sorted(labels), row
        # Pillow's and TensorFlow's JPEG decoders round differently (test_runtime.py)
        tolerance = 0.01 if readable[index].startswith(b"\xff\xd8") else 1e-3
        np.testing.assert_allclose([served[label] for label in labels], scores, atol=tolerance, err_msg=str(index))
        assert row[0]["label"] == labels[int(scores.argmax())], index


def test_python_client(server, fashion):
    """The README's example: bentoml.SyncHTTPClient, one dict per call."""
    import bentoml

    with bentoml.SyncHTTPClient(server.url) as client:
        result = client.classify({"images": [base64.b64encode(fashion[0][0]).decode()], "top_k": 3})
        generated = client.generate({"seed": 1, "count": 2, "format": "json"})
        strip = client.interpolate({"seeds": [1, 2], "steps": 4})
    assert result["model"]["name"] == "classifier" and len(result["predictions"][0]) == 3
    assert generated["seed"] == 1 and len(generated["images"]) == 2
    assert Image.open(strip).size[0] == 4 * Image.open(io.BytesIO(base64.b64decode(generated["images"][0]["png"]))).size[0]


# -- generate and interpolate ---------------------------------------------------------------


def test_generate_is_deterministic_for_a_seed(server):
    first = server.client.post("/generate", json={"seed": 7, "class": "Sneaker"})
    again = server.client.post("/generate", json={"seed": 7, "class": 7})
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.headers["X-Seed"] == "7" and first.headers["X-Model-Name"] == "generator"
    assert first.content == again.content
    shown = server.client.post("/generate", json={"seed": 7, "count": 3, "format": "json"}).json()
    assert shown["seed"] == 7 and [image["class"] for image in shown["images"]] == ["T-shirt/top", "Trouser", "Pullover"]
    replay = server.client.post("/generate", json={"latents": [image["latent"] for image in shown["images"]],
                                                   "class": 0, "format": "json"}).json()
    assert replay["seed"] is None
    assert replay["images"][0]["png"] == shown["images"][0]["png"]


def test_generate_without_seed_reports_the_one_it_drew(server):
    drawn = server.client.post("/generate", json={})
    again = server.client.post("/generate", json={"seed": int(drawn.headers["X-Seed"])})
    assert drawn.content == again.content


def test_generate_grid_and_interpolate_strip(server):
    card = server.client.get("/models/generator").json()["card"]
    height, width = card["image_size"]
    grid = Image.open(io.BytesIO(server.client.post("/generate", json={"count": 5, "format": "grid"}).content))
    assert grid.size == (3 * width, 2 * height)
    strip = server.client.post("/interpolate", json={"seeds": [1, 2], "steps": 6, "class": "Bag"})
    assert strip.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(strip.content)).size == (6 * width, height)
    latents = np.random.default_rng(0).standard_normal((2, card["latent_dim"])).tolist()
    assert server.client.post("/interpolate", json={"latents": latents, "steps": 3}).status_code == 200


# -- bad input: a 4xx naming the field, never a 500 -----------------------------------------

PNG = png_bytes()
BAD_CLASSIFY_JSON = [
    ({"images": ["not base64!"]}, "images"),
    ({"images": [base64.b64encode(b"just text").decode()]}, "images"),
    ({"images": [base64.b64encode(PNG[: len(PNG) // 2]).decode()]}, "images"),
    ({"images": [""]}, "images"),
    ({"images": []}, "images"),
    ({"images": "abc"}, "images"),
    ({"images": [base64.b64encode(PNG).decode()], "top_k": "5"}, "top_k"),
    ({"images": [base64.b64encode(PNG).decode()], "top_k": 0}, "top_k"),
    ({"images": [base64.b64encode(PNG).decode()], "top_k": 11}, "top_k"),
    ({"images": [base64.b64encode(PNG).decode()], "topk": 5}, "topk"),
    ({}, "images"),
]
BAD_GENERATE = [
    ({"class": "Unicorn"}, "class"),
    ({"class": 10}, "class"),
    ({"class": "9" * 5000}, "class"),  # more digits than int() takes: was a 500
    ({"latents": [[0.0, 1.0]]}, "latents"),
    ({"count": 0}, "count"),
    ({"count": 65, "format": "json"}, "count"),
    ({"count": "2"}, "count"),
    ({"seed": -1}, "seed"),
    ({"seed": 1, "latents": [[0.0]]}, "seed"),
    ({"count": 2}, "format"),
    ({"format": "gif"}, "format"),
    ({"colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("body", "field"), BAD_CLASSIFY_JSON)
def test_bad_classify_json(server, body, field):
    assert_error(server.client.post("/classify", json=body), 400, field)


@pytest.mark.parametrize(("body", "field"), BAD_GENERATE)
def test_bad_generate(server, body, field):
    assert_error(server.client.post("/generate", json=body), 400, field)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-1e999"])
def test_latents_must_be_finite(server, value):
    dim = server.client.get("/models/generator").json()["card"]["latent_dim"]
    row = ", ".join([value] + ["0.5"] * (dim - 1))
    body = f'{{"latents": [[{row}]]}}'
    assert_error(server.client.post("/generate", content=body, headers={"content-type": "application/json"}), 400, "latents")


@pytest.mark.parametrize(("body", "field"), [
    ({"seeds": [1, 2, 3]}, "seeds"), ({"seeds": [1, 2], "steps": 1}, "steps"), ({}, "seeds"),
    ({"seeds": [1, 2], "latents": [[0.0], [1.0]]}, "seeds"),
])
def test_bad_interpolate(server, body, field):
    assert_error(server.client.post("/interpolate", json=body), 400, field)


@pytest.mark.parametrize(("content", "content_type", "field"), [
    (b"", "application/json", "body"),
    (b"{not json", "application/json", ""),
    (b"[1, 2]", "application/json", ""),
])
def test_unparseable_bodies(server, content, content_type, field):
    for route in ("/classify", "/generate", "/interpolate"):
        assert_error(server.client.post(route, content=content, headers={"content-type": content_type}), 400, field)


@pytest.mark.parametrize(("files", "field"), [
    ([("images", ("empty.png", b""))], "images"),
    ([("images", ("note.txt", b"hello"))], "images"),
    ([("images", ("cut.jpg", png_bytes(fmt="JPEG")[:300]))], "images"),
    ([("images", ("ok.png", PNG)), ("top_k", (None, "many"))], "top_k"),
    ([("images", ("ok.png", PNG)), ("top_k", (None, "9" * 5000))], "top_k"),  # int() refuses it: was a 500
    ([("images", (None, "not a file"))], "images"),
    ([("images", ("ok.png", PNG)), ("extra", (None, "1"))], "extra"),
])
def test_bad_multipart(server, files, field):
    assert_error(server.client.post("/classify", files=files), 400, field)


def test_bad_image_in_a_batch_spares_the_others(server):
    """Undecodable images are isolated: the error names the right one."""
    truncated = png_bytes(skimage.data.coffee(), "JPEG")[:2000]
    body = assert_error(classify(server.client, [PNG, truncated, PNG]), 400, "images.1")
    assert "truncated" in body["error"]


# -- metrics --------------------------------------------------------------------------------


def test_metrics_move_after_real_requests(server, fashion):
    before = scrape(server.client)
    assert classify(server.client, fashion[0][:4]).status_code == 200
    assert server.client.post("/generate", json={"count": 3, "format": "grid"}).status_code == 200
    assert server.client.post("/generate", json={"count": 0}).status_code == 400
    after = scrape(server.client)

    def moved(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    clf, gen = {"model": "classifier", "version": "1"}, {"model": "generator", "version": "1"}
    assert moved("diptych_images_classified_total", **clf) == 4
    assert moved("diptych_predictions_total", **clf) == 4
    assert moved("diptych_images_generated_total", **gen) == 3
    assert moved("diptych_inference_seconds_count", **clf) >= 1
    assert moved("diptych_batch_size_sum", **gen) == 3
    assert moved("diptych_requests_rejected_total", reason="invalid_input") == 1
    assert total(after, "diptych_model_info", kind="classifier", **clf) == 1
    assert moved("bentoml_service_request_total") >= 3  # BentoML's own metrics are there too


# -- the locked-down server: API keys and limits --------------------------------------------


def test_keys_are_required_for_inference_and_models(locked):
    for response in (locked.client.get("/models"), classify(locked.client, [PNG]),
                     locked.client.get("/models", headers={"Authorization": "Bearer wrong"}),
                     locked.client.get("/models", headers={"Authorization": KEYS[0]})):
        body = assert_error(response, 401, "authorization")
        assert response.headers["WWW-Authenticate"] == "Bearer" and "API key" in body["error"]
    for key in KEYS:
        assert locked.client.get("/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_health_and_metrics_stay_open(locked):
    for path in ("/livez", "/readyz", "/metrics", "/docs.json"):
        assert locked.client.get(path).status_code == 200


def test_a_body_that_fails_to_parse_is_not_logged_as_a_server_error(server):
    response = server.client.post("/classify", json={"images": "not a list"})
    assert_error(response, 400, "images")
    log = server.log.read_text()
    assert "Traceback" not in log and "ValidationError" not in log, log[-3000:]


MODELS_ACCESS_LINE = re.compile(r"\(scheme=http,method=GET,path=/models,")


def test_keys_are_never_logged(locked):
    """The locked server writes an access line per request (after the response): the key must
    be absent once this request's line is there, not merely before it is written."""
    lines_before = len(MODELS_ACCESS_LINE.findall(locked.log.read_text()))
    for key in KEYS:
        answer = locked.client.get("/models", headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200 and answer.json()["models"], answer.text
    assert eventually(lambda: len(MODELS_ACCESS_LINE.findall(locked.log.read_text())) >= lines_before + len(KEYS)), \
        locked.log.read_text()[-2000:]
    assert not any(key in locked.log.read_text() for key in KEYS)


ACCESS_LINE = re.compile(r"\(scheme=http,method=POST,path=/classify,")


def test_access_log_and_tracing_are_settings(servers):
    """Both off by default (they cost CPU on every request); the locked server has both on:
    BentoML's log line per request, and its OpenTelemetry middleware's request id header."""
    open_server, locked = servers
    body = {"images": [base64.b64encode(png_bytes()).decode()]}
    plain = open_server.client.post("/classify", json=body)
    assert plain.status_code == 200 and "X-BentoML-Request-ID" not in plain.headers
    # The locked server's timeout_s is 0, so its classify answers 504: still one request, one line.
    traced = locked.client.post("/classify", json=body, headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert traced.status_code == 504
    assert re.fullmatch(r"[0-9a-f]{16}", traced.headers.get("X-BentoML-Request-ID", "")), traced.headers
    # the line is written after the response
    assert eventually(lambda: ACCESS_LINE.search(locked.log.read_text())), locked.log.read_text()[-2000:]
    assert not ACCESS_LINE.search(open_server.log.read_text())


def test_the_log_says_what_was_loaded_and_what_runs_it(server):
    """The core's INFO lines reach the log: each model, where it came from, and its runtime."""
    log = server.log.read_text()
    for kind in ("classifier", "generator"):
        assert re.search(rf"{kind} {kind}:\S+ loaded from \S+ and warmed up on (litert|tensorflow)", log), log[-3000:]
    assert re.search(r"classifier classifier:\S+ runs on (LiteRT|TensorFlow)", log), log[-3000:]


def test_auth_is_off_without_keys(server):
    """No keys configured: no credentials are checked, not even ones that would be wrong."""
    body = {"images": [base64.b64encode(PNG).decode()], "top_k": 1}
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": ""}):
        assert server.client.get("/models", headers=headers).status_code == 200
        assert server.client.post("/classify", json=body, headers=headers).status_code == 200


AUTH = {"Authorization": f"Bearer {KEYS[1]}"}


@pytest.mark.parametrize(("request_args", "status", "field"), [
    (("/classify", {"images": [base64.b64encode(PNG).decode()] * 3}), 413, "images"),
    (("/classify", {"images": [base64.b64encode(png_bytes(np.zeros((400, 400), np.uint8))).decode()]}), 413, "images.0"),
    (("/classify", {"images": [base64.b64encode(os.urandom(160_000)).decode()]}), 413, "body"),
    (("/generate", {"count": 5, "format": "grid"}), 400, "count"),
    (("/interpolate", {"seeds": [1, 2], "steps": 5}), 400, "steps"),
])
def test_limits(locked, request_args, status, field):
    route, body = request_args
    assert_error(locked.client.post(route, json=body, headers=AUTH), status, field)


def test_chunked_body_over_the_limit(locked):
    chunks = (b"x" * 50_000 for _ in range(5))
    assert_error(locked.client.post("/classify", content=chunks, headers=AUTH), 413, "body")


def test_timeout_is_a_504(locked):
    body = assert_error(locked.client.post("/generate", json={"seed": 1}, headers=AUTH), 504, "")
    assert body["detail"][0]["type"] == "timeout"


def test_a_body_still_arriving_holds_no_slot(locked):
    """One request slot: a request still sending its body does not hold it (max_concurrency
    slow bodies refused everyone else), so the next request is admitted, not refused. The
    refusal itself, with Retry-After: test_grpc.py::test_overload_is_resource_exhausted_and_the_slots_are_shared_with_http."""
    body = b'{"images": []}'
    holder = connect(locked)
    try:
        holder.sendall(request_head("/classify", len(body), headers=AUTH) + body[:5])
        assert eventually(lambda: metric(locked, "diptych_requests_receiving") == 1)  # it is in, with no slot
        admitted = locked.client.post("/classify", json={"images": []}, headers=AUTH)
        holder.sendall(body[5:])
        held, _ = read_response(holder)
    finally:
        holder.close()
    assert_error(admitted, 400, "images")  # admitted: its own fault, an empty list of images
    assert held == 400  # the holder's body, once whole: an empty list of images
