"""The gRPC APIs over real stubs against `bentoml serve`: diptych.v1, TF Serving's
PredictionService, health and reflection; errors, keys, limits, overload, deadlines,
metrics and a graceful stop. (The Open Inference Protocol: tests/test_v2.py.)"""

from __future__ import annotations

import base64
import io
import os
import signal

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from proto.diptych.v1 import diptych_pb2 as pb
from proto.diptych.v1 import diptych_pb2_grpc
from tests.conftest import GRPC_KEYS, Server, eventually
from tests.grpc_clients import health, png_bytes
from tests.reliability import connect, read_response, request_head

pytestmark = pytest.mark.slow
Code = grpc.StatusCode
AUTH = (("authorization", f"Bearer {GRPC_KEYS[0]}"),)
SERVICES = ("diptych.v1.Diptych", "tensorflow.serving.PredictionService", "inference.GRPCInferenceService")


@pytest.fixture(scope="module")
def server(grpc_servers) -> Server:
    return grpc_servers[0]


@pytest.fixture(scope="module")
def locked(grpc_servers) -> Server:
    return grpc_servers[1]


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield channel


@pytest.fixture(scope="module")
def locked_channel(locked):
    with grpc.insecure_channel(locked.grpc_target) as channel:
        yield channel


@pytest.fixture(scope="module")
def diptych(channel) -> diptych_pb2_grpc.DiptychStub:
    return diptych_pb2_grpc.DiptychStub(channel)


@pytest.fixture(scope="module")
def tf_serving(channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def fashion(tiny_models):
    """8 Fashion-MNIST test images (uint8 [8, 28, 28, 1] and PNG files), the labels and the raw model's scores."""
    from training.data import load_dataset

    test = load_dataset("fashion-mnist", split="test")
    pixels = test.images[:8]
    files = [png_bytes(image) for image in pixels]
    raw = tf.saved_model.load(str(tiny_models["classifier"])).signatures["serving_default"]
    return pixels, files, test.class_names, raw(image_bytes=tf.constant(files))["scores"].numpy()


def failure(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


def scrape(server: Server) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(server.client.get("/metrics").text)
        for sample in family.samples
    }


def total(metrics: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in metrics.items() if sample == name and wanted <= sample_labels)


# -- health and reflection ------------------------------------------------------------------


def test_health_is_not_serving_until_the_models_are_warm(server, channel):
    assert server.startup["health"] == health_pb2.HealthCheckResponse.NOT_SERVING
    code, details = server.startup["classify"]
    assert code == Code.UNAVAILABLE and "loading" in details
    assert eventually(lambda: health(channel) == health_pb2.HealthCheckResponse.SERVING)
    for service in SERVICES:
        assert health(channel, service) == health_pb2.HealthCheckResponse.SERVING


def test_reflection_describes_every_service(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    assert {*SERVICES, "grpc.health.v1.Health"} <= set(database.get_services())
    pool = DescriptorPool(database)
    assert [method.name for method in pool.FindServiceByName("diptych.v1.Diptych").methods] == \
        ["Classify", "Generate", "ListModels", "LoadModel", "UnloadModel", "Feedback"]
    predict = pool.FindServiceByName("tensorflow.serving.PredictionService").methods_by_name["Predict"]
    assert predict.input_type.full_name == "tensorflow.serving.PredictRequest"
    infer = pool.FindServiceByName("inference.GRPCInferenceService").methods_by_name["ModelInfer"]
    assert "raw_input_contents" in infer.input_type.fields_by_name


# -- diptych.v1 -----------------------------------------------------------------------------


def test_classify_answers_as_http_does(server, diptych, fashion):
    _, files, _, raw_scores = fashion
    reply = diptych.Classify(pb.ClassifyRequest(images=files, top_k=3))
    body = server.client.post("/classify", json={"images": [base64.b64encode(f).decode() for f in files], "top_k": 3})
    assert reply.model == pb.ModelRef(name="classifier", version="1")
    served = [[(label.label, label.score) for label in row.labels] for row in reply.predictions]
    over_http = [[(item["label"], item["score"]) for item in row] for row in body.json()["predictions"]]
    assert [[label for label, _ in row] for row in served] == [[label for label, _ in row] for row in over_http]
    np.testing.assert_allclose([[s for _, s in row] for row in served], [[s for _, s in row] for row in over_http], atol=1e-6)
    np.testing.assert_allclose([row[0][1] for row in served], raw_scores.max(axis=1), atol=1e-3)


def test_classify_defaults_to_five_labels(diptych, fashion):
    assert [len(row.labels) for row in diptych.Classify(pb.ClassifyRequest(images=fashion[1][:2])).predictions] == [5, 5]


def test_generate_pngs_and_the_latents_that_make_them(server, diptych):
    reply = diptych.Generate(pb.GenerateRequest(seed=7, count=3))
    body = server.client.post("/generate", json={"seed": 7, "count": 3, "format": "json"}).json()
    assert reply.model.name == "generator" and reply.seed == 7
    assert [image.png for image in reply.images] == [base64.b64decode(image["png"]) for image in body["images"]]
    assert [image.class_name for image in reply.images] == ["T-shirt/top", "Trouser", "Pullover"]
    replay = diptych.Generate(pb.GenerateRequest(latents=[image.latent for image in reply.images], class_id=0))
    assert not replay.HasField("seed") and replay.images[0].png == reply.images[0].png
    drawn = diptych.Generate(pb.GenerateRequest(class_name="Sneaker"))
    assert drawn.HasField("seed") and drawn.images[0].class_id == 7
    assert diptych.Generate(pb.GenerateRequest(seed=drawn.seed, class_id=7)).images[0].png == drawn.images[0].png


def test_generate_grid(diptych):
    reply = diptych.Generate(pb.GenerateRequest(count=5, class_name="Bag", format=pb.FORMAT_GRID))
    height, width = Image.open(io.BytesIO(diptych.Generate(pb.GenerateRequest(seed=1)).images[0].png)).size[::-1]
    assert Image.open(io.BytesIO(reply.grid)).size == (3 * width, 2 * height)
    assert [image.png for image in reply.images] == [b""] * 5 and len(reply.images[0].latent.values) > 0


def test_list_models(diptych):
    models = {model.kind: model for model in diptych.ListModels(pb.ListModelsRequest()).models}
    assert (models["classifier"].name, models["classifier"].version) == ("classifier", "1")
    assert models["classifier"].source == "classifier:1"  # the store tag of the version served
    assert len(models["classifier"].card["labels"]) == 10
    assert models["generator"].card["classes"][7] == "Sneaker"


PNG = png_bytes()
BAD_INPUTS = [  # a diptych.v1 call, and the same request over HTTP
    ("Classify", pb.ClassifyRequest(images=[b"just text"]), "/classify", {"images": [b"just text"]}),
    ("Classify", pb.ClassifyRequest(images=[PNG[: len(PNG) // 2]]), "/classify", {"images": [PNG[: len(PNG) // 2]]}),
    ("Classify", pb.ClassifyRequest(), "/classify", {"images": []}),
    ("Classify", pb.ClassifyRequest(images=[b""]), "/classify", {"images": [b""]}),
    ("Classify", pb.ClassifyRequest(images=[PNG], top_k=0), "/classify", {"images": [PNG], "top_k": 0}),
    ("Classify", pb.ClassifyRequest(images=[PNG], top_k=11), "/classify", {"images": [PNG], "top_k": 11}),
    ("Generate", pb.GenerateRequest(class_name="Unicorn"), "/generate", {"class": "Unicorn"}),
    ("Generate", pb.GenerateRequest(class_id=10), "/generate", {"class": 10}),
    ("Generate", pb.GenerateRequest(latents=[pb.Latent(values=[0.0, 1.0])]), "/generate", {"latents": [[0.0, 1.0]]}),
    ("Generate", pb.GenerateRequest(latents=[pb.Latent(values=[float("nan")] * 64)]), "/generate", None),
    ("Generate", pb.GenerateRequest(count=0), "/generate", {"count": 0}),
    ("Generate", pb.GenerateRequest(count=65), "/generate", {"count": 65, "format": "json"}),
    ("Generate", pb.GenerateRequest(seed=-1), "/generate", {"seed": -1}),
    ("Generate", pb.GenerateRequest(seed=1, latents=[pb.Latent(values=[0.0])]), "/generate", {"seed": 1, "latents": [[0.0]]}),
]


@pytest.mark.parametrize(("method", "request_", "route", "body"), BAD_INPUTS)
def test_bad_input_is_invalid_argument_with_the_http_message(server, diptych, method, request_, route, body):
    error = failure(getattr(diptych, method), request_)
    assert error.code() == Code.INVALID_ARGUMENT
    if body is None:  # JSON has no NaN: the message still names the field
        assert error.details().startswith("latents: must be finite")
        return
    body = {key: [base64.b64encode(item).decode() for item in value] if key == "images" else value
            for key, value in body.items()}
    assert error.details() == server.client.post(route, json=body).json()["error"]


# -- TF Serving's PredictionService -----------------------------------------------------------


def predict(stub, model: str, inputs: dict, signature: str = "", output_filter: tuple = ()) -> tuple:
    request = predict_pb2.PredictRequest(output_filter=output_filter)
    request.model_spec.name, request.model_spec.signature_name = model, signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    reply = stub.Predict(request)
    return reply, {name: tf.make_ndarray(value) for name, value in reply.outputs.items()}


def test_tf_predict_runs_both_classifier_signatures(tf_serving, fashion):
    pixels, files, class_names, raw_scores = fashion
    reply, encoded = predict(tf_serving, "classifier", {"image_bytes": np.array(files, dtype=object)})
    assert reply.model_spec.name == "classifier" and reply.model_spec.version.value == 1
    assert reply.model_spec.signature_name == "serving_default"
    assert encoded["scores"].shape == (8, 10) and encoded["scores"].dtype == np.float32
    assert encoded["classes"][3].tolist() == [name.encode() for name in class_names]
    np.testing.assert_allclose(encoded["scores"], raw_scores, atol=1e-3)
    _, decoded = predict(tf_serving, "classifier", {"images": pixels}, "classify_pixels")
    np.testing.assert_allclose(decoded["scores"], encoded["scores"], atol=1e-6)
    _, filtered = predict(tf_serving, "classifier", {"image_bytes": np.array(files[:1], dtype=object)},
                          output_filter=("scores",))
    assert list(filtered) == ["scores"]


def test_tf_predict_runs_both_generator_signatures(tf_serving, tiny_models):
    """generate_seeded draws the latents the SavedModel's own graph draws for the seed."""
    seeded = tf.saved_model.load(str(tiny_models["generator"])).signatures["generate_seeded"]
    expected = seeded(seed=tf.constant(7, tf.int64), count=tf.constant(3), class_id=tf.constant(-1))
    _, served = predict(tf_serving, "generator", {"seed": np.int64(7), "count": np.int32(3), "class_id": np.int32(-1)},
                        "generate_seeded")
    np.testing.assert_array_equal(served["latents"], expected["latents"].numpy())
    np.testing.assert_array_equal(served["class_ids"], [0, 1, 2])
    assert served["images"].dtype == np.uint8
    assert np.abs(served["images"].astype(int) - expected["images"].numpy()).max() <= 2
    _, again = predict(tf_serving, "generator", {"latents": served["latents"], "class_ids": served["class_ids"]})
    np.testing.assert_array_equal(again["images"], served["images"])


def test_tf_classify_returns_every_class_in_label_order(tf_serving, fashion):
    _, files, class_names, raw_scores = fashion
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "classifier"
    for image in files[:3]:
        request.input.example_list.examples.add().features.feature["image_bytes"].bytes_list.value.append(image)
    reply = tf_serving.Classify(request)
    assert reply.model_spec.version.value == 1
    rows = reply.result.classifications
    assert [[item.label for item in row.classes] for row in rows] == [class_names] * 3
    np.testing.assert_allclose([[item.score for item in row.classes] for row in rows], raw_scores[:3], atol=1e-3)


def test_tf_multi_inference_is_one_classify_task(tf_serving, fashion):
    _, files, class_names, raw_scores = fashion
    request = inference_pb2.MultiInferenceRequest()
    task = request.tasks.add(method_name="tensorflow/serving/classify")
    task.model_spec.name = "classifier"
    for image in files[:2]:
        request.input.example_list.examples.add().features.feature["image_bytes"].bytes_list.value.append(image)
    (result,) = tf_serving.MultiInference(request).results
    assert (result.model_spec.name, result.model_spec.version.value) == ("classifier", 1)
    rows = result.classification_result.classifications
    assert [[item.label for item in row.classes] for row in rows] == [class_names] * 2
    np.testing.assert_allclose([[item.score for item in row.classes] for row in rows], raw_scores[:2], atol=1e-3)


@pytest.mark.parametrize(("tasks", "words"), [
    ([], "at least one task"),
    ([("classifier", "tensorflow/serving/classify"), ("generator", "tensorflow/serving/classify")], "same model name"),
    ([("classifier", "tensorflow/serving/regress")], "no regression signature"),
    ([("classifier", "tensorflow/serving/predict")], "Unsupported signature method_name"),
    ([("classifier", "tensorflow/serving/classify")] * 2, "send one task"),
    ([("generator", "tensorflow/serving/classify")], "Classify serves the classifier"),
])
def test_tf_multi_inference_refuses_what_it_cannot_run(tf_serving, tasks, words):
    request = inference_pb2.MultiInferenceRequest()
    for model, method in tasks:
        request.tasks.add(method_name=method).model_spec.name = model
    request.input.example_list.examples.add().features.feature["image_bytes"].bytes_list.value.append(PNG)
    error = failure(tf_serving.MultiInference, request)
    assert error.code() == Code.INVALID_ARGUMENT and words in error.details(), error.details()


def test_tf_metadata_is_the_saved_models_signature_defs(tf_serving, tiny_models):
    for kind in ("classifier", "generator"):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = kind
        reply = tf_serving.GetModelMetadata(request)
        served = get_model_metadata_pb2.SignatureDefMap()
        assert reply.metadata["signature_def"].Unpack(served)
        saved = saved_model_pb2.SavedModel.FromString((tiny_models[kind] / "saved_model.pb").read_bytes())
        assert dict(served.signature_def) == dict(saved.meta_graphs[0].signature_def)
        assert (reply.model_spec.name, reply.model_spec.version.value) == (kind, 1)


@pytest.mark.parametrize(("name", "version", "words"), [
    ("nope", None, "Latest(nope)"), ("classifier", 9, "Specific(classifier, 9)"), ("generator", 2, "Specific(generator, 2)"),
])
def test_tf_unknown_servable_is_not_found_in_tf_serving_words(tf_serving, name, version, words):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    predicting = predict_pb2.PredictRequest(model_spec=request.model_spec)
    for call, message in ((tf_serving.GetModelMetadata, request), (tf_serving.Predict, predicting)):
        error = failure(call, message)
        assert (error.code(), error.details()) == (Code.NOT_FOUND, f"Servable not found for request: {words}")


def test_tf_unknown_signature_is_failed_precondition_as_in_tf_serving(tf_serving):
    error = failure(predict, tf_serving, "classifier", {"image_bytes": np.array([PNG], dtype=object)}, "bogus")
    assert error.code() == Code.FAILED_PRECONDITION, error.details()
    assert 'Serving signature name: "bogus" not found in signature def' in error.details()


@pytest.mark.parametrize(("model", "signature", "inputs", "field"), [
    ("classifier", "", {"images": np.zeros((1, 8, 8, 3), np.uint8)}, "inputs"),
    ("classifier", "", {"image_bytes": np.array([[PNG]], dtype=object)}, "image_bytes"),
    ("classifier", "", {"image_bytes": np.array([b"junk"], dtype=object)}, "images[0]"),
    ("classifier", "classify_pixels", {"images": np.zeros((1, 8, 8, 2), np.uint8)}, "images"),
    ("generator", "", {"latents": np.zeros((1, 64)), "class_ids": np.zeros(1, np.int32)}, "latents"),
    # the signature declares the latent width: a row of 3 is refused by its shape
    ("generator", "", {"latents": np.zeros((1, 3), np.float32), "class_ids": np.zeros(1, np.int32)}, "latents"),
    ("generator", "", {"latents": np.zeros((2, 64), np.float32), "class_ids": np.array([0, 10], np.int32)}, "class_ids[1]"),
    ("generator", "generate_seeded", {"seed": np.int64(1), "count": np.int32(0), "class_id": np.int32(0)}, "count"),
    ("generator", "generate_seeded", {"seed": np.int64(1), "count": np.int32(1), "class_id": np.int32(10)}, "class_id"),
])
def test_tf_bad_input_is_invalid_argument(tf_serving, model, signature, inputs, field):
    error = failure(predict, tf_serving, model, inputs, signature)
    assert error.code() == Code.INVALID_ARGUMENT and error.details().startswith(f"{field}: "), error.details()


def test_tf_unserved_methods_are_unimplemented(tf_serving):
    from tensorflow_serving.apis import regression_pb2

    assert failure(tf_serving.Regress, regression_pb2.RegressionRequest()).code() == Code.UNIMPLEMENTED


# -- metrics --------------------------------------------------------------------------------


def test_metrics_count_grpc_calls_with_a_protocol_label(server, diptych, fashion):
    before = scrape(server)
    diptych.Classify(pb.ClassifyRequest(images=fashion[1][:4]))
    failure(diptych.Generate, pb.GenerateRequest(count=0))
    method = "/diptych.v1.Diptych/Classify"

    def moved(name, **labels):
        return total(scrape(server), name, **labels) - total(before, name, **labels)

    assert eventually(lambda: moved("diptych_requests_total", protocol="grpc", method=method, code="OK") == 1)
    assert moved("diptych_images_classified_total", model="classifier") == 4
    assert moved("diptych_request_seconds_count", protocol="grpc", method=method) == 1
    assert eventually(lambda: moved("diptych_requests_rejected_total", protocol="grpc", reason="invalid_input") == 1)
    assert moved("diptych_requests_total", protocol="grpc", method="/diptych.v1.Diptych/Generate",
                 code="INVALID_ARGUMENT") == 1
    server.client.post("/classify", json={"images": [base64.b64encode(fashion[1][0]).decode()]})
    assert eventually(lambda: moved("diptych_requests_total", protocol="http", method="POST /classify", code="200") == 1)


# -- the locked-down server: keys, limits, overload, deadlines -------------------------------


def test_keys_are_required_in_metadata(locked, locked_channel):
    stub = diptych_pb2_grpc.DiptychStub(locked_channel)
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", GRPC_KEYS[0]),)):
        error = failure(stub.ListModels, pb.ListModelsRequest(), metadata=metadata)
        assert error.code() == Code.UNAUTHENTICATED and "API key" in error.details()
    for key in GRPC_KEYS:
        assert stub.ListModels(pb.ListModelsRequest(), metadata=(("authorization", f"Bearer {key}"),)).models
    tf_stub = prediction_service_pb2_grpc.PredictionServiceStub(locked_channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "classifier"
    assert failure(tf_stub.GetModelMetadata, request).code() == Code.UNAUTHENTICATED
    assert health(locked_channel) == health_pb2.HealthCheckResponse.SERVING  # health stays open
    assert not any(key in locked.log.read_text() for key in GRPC_KEYS)


@pytest.mark.parametrize(("method", "request_", "message"), [
    ("Classify", pb.ClassifyRequest(images=[PNG] * 3), "images: 3 images; at most 2 per request"),
    ("Generate", pb.GenerateRequest(count=5), "count: must be between 1 and 4 images"),
])
def test_limits_are_the_http_limits(locked_channel, method, request_, message):
    error = failure(getattr(diptych_pb2_grpc.DiptychStub(locked_channel), method), request_, metadata=AUTH)
    assert (error.code(), error.details()) == (Code.INVALID_ARGUMENT, message)


def test_messages_are_limited_to_the_http_body_size(locked_channel):
    """max_body_bytes is 200000 here: gRPC refuses a larger message before it is parsed."""
    error = failure(diptych_pb2_grpc.DiptychStub(locked_channel).Classify,
                    pb.ClassifyRequest(images=[os.urandom(250_000)]), metadata=AUTH)
    assert error.code() == Code.RESOURCE_EXHAUSTED


def holding_the_slot(server: Server, call, slots: int = 1) -> bool:
    """True once `call`, still running, holds one of the server's request slots (`slots` taken in all)."""
    return eventually(lambda: total(scrape(server), "diptych_requests_in_flight") == slots) and not call.done()


@pytest.fixture(scope="module")
def paired(server_env, tiny_models, tmp_path_factory):
    """A server of its own whose generator runs a batch only once it holds two images (one
    batch worker, batches of 2, a 10-minute window): a Generate of one image holds its
    request slot, for as long as the test likes, until a second image joins it. Two slots."""
    tmp = tmp_path_factory.mktemp("paired")
    server = Server({**server_env, "BENTOML_HOME": str(tmp / "home"), "DIPTYCH_MAX_CONCURRENCY": "2",
                     "DIPTYCH_MAX_BATCH_SIZE": "2", "DIPTYCH_INTERPRETERS": "1", "DIPTYCH_BATCH_WINDOW_MS": "600000",
                     "DIPTYCH_TIMEOUT_S": "120", "DIPTYCH_BODY_TIMEOUT_S": "120",  # a body is held across steps
                     "DIPTYCH_CLASSIFIER": str(tiny_models["classifier"]),
                     "DIPTYCH_GENERATOR": str(tiny_models["generator"])}, tmp / "paired.log")
    try:
        server.wait("/readyz")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def paired_channel(paired):
    with grpc.insecure_channel(paired.grpc_target) as channel:
        yield channel


def test_overload_is_resource_exhausted_and_the_slots_are_shared_with_http(paired, paired_channel):
    """Two request slots, held by two gRPC calls (each image waits for a second one), and an
    HTTP request still sending its body, which holds none: then HTTP is refused, and so is
    every gRPC inference method. One call cancelled frees its slot; the HTTP body, once whole,
    takes it and brings the second image of the other: both are answered."""
    stub = diptych_pb2_grpc.DiptychStub(paired_channel)
    held = stub.Generate.future(pb.GenerateRequest(seed=1), timeout=120)
    assert holding_the_slot(paired, held)
    waiting = stub.Classify.future(pb.ClassifyRequest(images=[PNG]), timeout=120)
    body = b'{"seed": 2}'
    holder = connect(paired)
    try:
        holder.sendall(request_head("/generate", len(body)) + body[:5])
        assert holding_the_slot(paired, waiting, slots=2)
        assert eventually(lambda: total(scrape(paired), "diptych_requests_receiving") == 1)
        over_http = paired.client.post("/classify", json={"images": []})
        multi = inference_pb2.MultiInferenceRequest()
        multi.tasks.add(method_name="tensorflow/serving/classify").model_spec.name = "classifier"
        multi.input.example_list.examples.add().features.feature["image_bytes"].bytes_list.value.append(PNG)
        over_multi = failure(prediction_service_pb2_grpc.PredictionServiceStub(paired_channel).MultiInference, multi,
                             timeout=60)
        over_grpc = failure(stub.Classify, pb.ClassifyRequest(images=[PNG]), timeout=60)
        assert not held.done()
        waiting.cancel()
        assert holding_the_slot(paired, held, slots=1)
        holder.sendall(body[5:])
        code, png = read_response(holder)
    finally:
        holder.close()
    assert len(held.result().images) == 1
    assert code == 200 and png.startswith(b"\x89PNG")
    assert over_http.status_code == 503 and over_http.json()["detail"][0]["type"] == "overloaded"
    assert over_http.headers["Retry-After"] == "1"
    assert over_multi.code() == Code.RESOURCE_EXHAUSTED  # every inference method takes a slot
    assert (over_grpc.code(), over_grpc.details()) == (Code.RESOURCE_EXHAUSTED, "more than 2 requests in flight; retry shortly")
    assert ("retry-after", "1") in over_grpc.trailing_metadata()
    assert eventually(lambda: total(scrape(paired), "diptych_requests_in_flight") == 0)


def test_the_deadline_is_honoured(paired, paired_channel):
    """The call gives up at its deadline (its image waits for a second one), and its image
    leaves the batch unrun: the next image fills the batch of two, and is the only one generated."""
    stub = diptych_pb2_grpc.DiptychStub(paired_channel)
    before = scrape(paired)
    error = failure(stub.Generate, pb.GenerateRequest(seed=3), timeout=0.3)
    assert error.code() == Code.DEADLINE_EXCEEDED
    method = "/diptych.v1.Diptych/Generate"

    def ended(code):
        return total(scrape(paired), "diptych_requests_total", method=method, code=code) - \
            total(before, "diptych_requests_total", method=method, code=code)

    assert eventually(lambda: ended("DEADLINE_EXCEEDED") + ended("CANCELLED") == 1)
    assert len(stub.Generate(pb.GenerateRequest(seed=4), timeout=60).images) == 1
    generated = "diptych_images_generated_total"
    assert total(scrape(paired), generated) == total(before, generated) + 1


# -- shutdown -------------------------------------------------------------------------------


def test_sigterm_lets_calls_in_flight_finish(server_env, tiny_models, tmp_path):
    """A server of its own whose Generate waits for a second image (batches of two, a long
    window). SIGTERM arrives while one call is held; the server then announces its drain (its
    health Watch turns NOT_SERVING) with the call still in flight, and the call still finishes.
    What proves it is that order, observed: not a guess that the window outlasts the signal."""
    draining = Server({**server_env, "BENTOML_HOME": str(tmp_path / "home"), "DIPTYCH_MAX_BATCH_SIZE": "2",
                       "DIPTYCH_INTERPRETERS": "1", "DIPTYCH_BATCH_WINDOW_MS": "15000", "DIPTYCH_TIMEOUT_S": "60",
                       "DIPTYCH_CLASSIFIER": str(tiny_models["classifier"]),
                       "DIPTYCH_GENERATOR": str(tiny_models["generator"])}, tmp_path / "draining.log")
    try:
        draining.wait("/readyz")
        with grpc.insecure_channel(draining.grpc_target) as channel:
            assert eventually(lambda: health(channel) == health_pb2.HealthCheckResponse.SERVING, 120)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=120)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            held = diptych_pb2_grpc.DiptychStub(channel).Generate.future(pb.GenerateRequest(seed=1, count=1))
            assert holding_the_slot(draining, held)
            os.kill(draining.process.pid, signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING  # draining has begun
            assert not held.done(), f"the call ended before the drain was announced: {held.exception()}"
            watch.cancel()  # a Watch is a call in flight too: the drain would wait for it
            assert len(held.result(timeout=120).images) == 1
        assert draining.process.wait(timeout=60) == 0
        with pytest.raises(httpx.TransportError):
            draining.client.get("/livez")
    finally:
        draining.stop()
