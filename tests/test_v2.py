"""The Open Inference Protocol (KServe V2), proven with a client we did not write: NVIDIA's
tritonclient, over HTTP and gRPC, against `bentoml serve`; plus plain JSON over REST."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.conftest import GRPC_KEYS, Server
from tests.grpc_clients import png_bytes

pytestmark = pytest.mark.slow
CLIENTS = {"http": triton_http, "grpc": triton_grpc}


@pytest.fixture(scope="module")
def server(grpc_servers) -> Server:
    return grpc_servers[0]


@pytest.fixture(scope="module")
def locked(grpc_servers) -> Server:
    return grpc_servers[1]


def client(server: Server, protocol: str):
    module = CLIENTS[protocol]
    return module, module.InferenceServerClient(server.url[len("http://"):] if protocol == "http" else server.grpc_target)


@pytest.fixture(scope="module")
def fashion(tiny_models):
    from training.data import load_dataset

    test = load_dataset("fashion-mnist", split="test")
    files = [png_bytes(image) for image in test.images[:6]]
    raw = tf.saved_model.load(str(tiny_models["classifier"])).signatures["serving_default"]
    return files, test.class_names, raw(image_bytes=tf.constant(files))["scores"].numpy()


@pytest.fixture(scope="module")
def raw_generator(tiny_models):
    return tf.saved_model.load(str(tiny_models["generator"])).signatures["serving_default"]


@pytest.mark.parametrize("protocol", CLIENTS)
def test_health_and_metadata(server, protocol):
    module, triton = client(server, protocol)
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("classifier") and triton.is_model_ready("generator", "1")
    assert not triton.is_model_ready("generator", "2")
    metadata = triton.get_model_metadata("classifier")
    if protocol == "grpc":
        metadata = {"name": metadata.name, "versions": list(metadata.versions), "platform": metadata.platform,
                    "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in metadata.inputs],
                    "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in metadata.outputs]}
    assert metadata == {
        "name": "classifier", "versions": ["1"], "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "classes", "datatype": "BYTES", "shape": [-1, 10]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1, 10]}],
    }


@pytest.mark.parametrize("protocol", CLIENTS)
def test_classify_images(server, protocol, fashion):
    files, class_names, raw_scores = fashion
    module, triton = client(server, protocol)
    images = module.InferInput("image_bytes", [len(files)], "BYTES")
    images.set_data_from_numpy(np.array(files, dtype=object))
    result = triton.infer("classifier", [images])
    np.testing.assert_allclose(result.as_numpy("scores"), raw_scores, atol=1e-3)
    assert result.as_numpy("classes")[0].tolist() == [name.encode() for name in class_names]
    only = triton.infer("classifier", [images], model_version="1", outputs=[module.InferRequestedOutput("scores")])
    assert only.as_numpy("classes") is None and only.as_numpy("scores").shape == (len(files), 10)


@pytest.mark.parametrize("protocol", CLIENTS)
def test_generate_images(server, protocol, raw_generator):
    module, triton = client(server, protocol)
    latents = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    class_ids = np.array([7, 8, 9], np.int32)
    inputs = [module.InferInput("latents", [3, 64], "FP32"), module.InferInput("class_ids", [3], "INT32")]
    inputs[0].set_data_from_numpy(latents)
    inputs[1].set_data_from_numpy(class_ids)
    images = triton.infer("generator", inputs).as_numpy("images")
    expected = raw_generator(latents=tf.constant(latents), class_ids=tf.constant(class_ids))["images"].numpy()
    assert images.shape == expected.shape and images.dtype == np.uint8
    assert np.abs(images.astype(int) - expected).max() <= 2


@pytest.mark.parametrize("protocol", CLIENTS)
def test_errors(server, protocol):
    module, triton = client(server, protocol)
    images = module.InferInput("image_bytes", [1], "BYTES")
    images.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    latents = module.InferInput("latents", [1, 64], "FP64")
    latents.set_data_from_numpy(np.zeros((1, 64)))
    ids = module.InferInput("class_ids", [1], "INT32")
    ids.set_data_from_numpy(np.zeros(1, np.int32))
    cases = [
        (lambda: triton.infer("nope", [images]), "404", "NOT_FOUND", "Request for unknown model: 'nope' is not found"),
        (lambda: triton.infer("classifier", [images], model_version="2"), "404", "NOT_FOUND",
         "Request for unknown model: 'classifier' version 2 is not found"),
        (lambda: triton.infer("classifier", [images]), "400", "INVALID_ARGUMENT", "images[0]: not an image"),
        (lambda: triton.infer("generator", [latents, ids]), "400", "INVALID_ARGUMENT",
         "latents: must be float32, got float64"),
    ]
    for call, http_status, grpc_status, message in cases:
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == (http_status if protocol == "http" else f"StatusCode.{grpc_status}")
        assert caught.value.message().startswith(message)


def test_keys_and_open_health(locked):
    auth = {"authorization": f"Bearer {GRPC_KEYS[1]}"}
    for protocol in CLIENTS:
        _, triton = client(locked, protocol)
        assert triton.is_server_ready()  # health is open
        with pytest.raises(InferenceServerException) as refused:
            triton.get_model_metadata("classifier")
        assert refused.value.status() == ("401" if protocol == "http" else "StatusCode.UNAUTHENTICATED")
        assert refused.value.message().startswith("an API key is required"), refused.value.message()
        assert triton.is_model_ready("classifier", headers=auth)
    assert locked.client.get("/v2/models/classifier").status_code == 401
    assert locked.client.get("/v2/health/live").status_code == 200


def test_rest_json_without_binary_data(server, fashion):
    """Plain JSON (curl): BYTES as base64 with content_type base64, outputs as JSON values."""
    files, class_names, raw_scores = fashion
    body = {"id": "request-1", "inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES",
                                           "parameters": {"content_type": "base64"},
                                           "data": [base64.b64encode(f).decode() for f in files[:2]]}]}
    reply = server.client.post("/v2/models/classifier/infer", json=body)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    result = reply.json()
    assert (result["model_name"], result["model_version"], result["id"]) == ("classifier", "1", "request-1")
    outputs = {tensor["name"]: tensor for tensor in result["outputs"]}
    assert outputs["scores"]["datatype"] == "FP32" and outputs["scores"]["shape"] == [2, 10]
    np.testing.assert_allclose(np.reshape(outputs["scores"]["data"], (2, 10)), raw_scores[:2], atol=1e-3)
    assert outputs["classes"]["data"][:10] == class_names
    latents = {"inputs": [{"name": "latents", "shape": [1, 64], "datatype": "FP32", "data": [[0.5] * 64]},
                          {"name": "class_ids", "shape": [1], "datatype": "INT32", "data": [3]}]}
    images = server.client.post("/v2/models/generator/versions/1/infer", json=latents).json()["outputs"][0]
    assert images["datatype"] == "UINT8" and len(images["data"]) == np.prod(images["shape"])


@pytest.mark.parametrize(("body", "field"), [
    (b"{not json", "body"),
    (b'{"inputs": [{"name": "image_bytes", "shape": [1]}]}', "inputs[0].datatype"),
    (b'{"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}', "inputs[0].shape"),
    (b'{"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "STRING", "data": ["a"]}]}', "inputs[0].datatype"),
    (b'{"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [1]}]}', "inputs[0].data"),
    (b'{"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["a"]}], '
     b'"outputs": [{"name": "logits"}]}', "outputs"),
])
def test_rest_bad_requests_name_the_field(server, body, field):
    reply = server.client.post("/v2/models/classifier/infer", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith(f"{field}: ")
