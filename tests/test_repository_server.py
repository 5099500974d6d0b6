"""The model repository on a real `bentoml serve`, on every protocol: versions appearing by
hot reload, labels, model references, the load/unload API (tritonclient's model repository
calls, TF Serving's ModelService, diptych.v1), TF Serving's REST API with `requests`-style
calls, and two classifiers trained on different data served side by side."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tritonclient.utils import InferenceServerException

from proto.diptych.v1 import diptych_pb2 as pb
from proto.diptych.v1 import diptych_pb2_grpc
from tests.conftest import ROOT, Server, eventually
from tests.grpc_clients import png_bytes
from training.data.builtin import FASHION_MNIST_CLASSES

pytestmark = pytest.mark.slow
ADMIN = "admin-key"


def add_version(root: Path, name: str, number: int, source: Path) -> None:
    staging = root / name / f".{number}.partial"
    shutil.copytree(source, staging)
    staging.rename(root / name / str(number))


@pytest.fixture(scope="module")
def folder_classifier(tmp_path_factory) -> Path:
    """A second classifier, trained on an image folder: dark and light squares."""
    data = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    for label, level in (("dark", 40), ("light", 215)):
        (data / label).mkdir()
        for index in range(12):
            pixels = np.clip(rng.normal(level, 12, (24, 24, 3)), 0, 255).astype(np.uint8)
            (data / label / f"{index}.png").write_bytes(png_bytes(pixels))
    out = tmp_path_factory.mktemp("squares-model")
    trained = subprocess.run(
        [sys.executable, "-m", "training.classifier", "--data", str(data), "--backbone", "scratch", "--image-size", "24",
         "--epochs", "30", "--quick", "--no-evaluate", "--name", "squares", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    return out / "1"


@pytest.fixture(scope="module")
def served(server_env, tiny_models, folder_classifier, tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    add_version(root, "shoes", 1, tiny_models["classifier"])
    add_version(root, "squares", 1, folder_classifier)
    repository = {"shoes": {"versions": "all", "labels": {"stable": 1}}}
    # A BENTOML_HOME of its own: `bentoml serve` empties its home's metrics folder as it starts,
    # which would wipe the metrics of the session's other servers (tests/conftest.py).
    server = Server({**server_env, "BENTOML_HOME": str(tmp_path_factory.mktemp("repository-home")),
                     "DIPTYCH_MODEL_ROOT": str(root), "DIPTYCH_STORE": "false",
                     "DIPTYCH_CLASSIFIER": "shoes", "DIPTYCH_GENERATOR": str(tiny_models["generator"]),
                     "DIPTYCH_POLL_S": "0.5", "DIPTYCH_ADMIN_KEYS": ADMIN,
                     "DIPTYCH_CLASSIFIER_RUNTIME": "tensorflow", "DIPTYCH_REPOSITORY": json.dumps(repository)},
                    tmp_path_factory.mktemp("repository-server") / "server.log")
    try:
        server.wait("/readyz")
        yield server, root, tiny_models
    finally:
        server.stop()


def versions(server: Server, name: str = "shoes") -> dict[str, str]:
    return {entry["version"]: entry["state"] for entry in server.client.get("/models").json()["models"]
            if entry["name"] == name}


def classify(server: Server, model: str | None = None, top_k: int = 2, **params) -> dict:
    body = {"images": [base64.b64encode(png_bytes()).decode()], "top_k": top_k, **({"model": model} if model else {})}
    answer = server.client.post("/classify", json=body, params=params)
    assert answer.status_code == 200, answer.text
    return {"version": answer.headers["x-model-version"], "name": answer.headers["x-model-name"],
            "labels": [label["label"] for label in answer.json()["predictions"][0]],
            "request id": answer.headers["x-request-id"]}


def test_a_version_copied_in_is_served_without_a_restart(served):
    server, root, tiny_models = served
    assert versions(server) == {"1": "available"} and classify(server)["version"] == "1"
    add_version(root, "shoes", 2, tiny_models["classifier"])
    assert eventually(lambda: versions(server).get("2") == "available", 120), versions(server)
    assert classify(server)["version"] == "2"  # no version named: the newest
    assert classify(server, "shoes:1")["version"] == "1" and classify(server, "shoes@stable")["version"] == "1"
    assert classify(server, model="shoes:1")["version"] == "1"  # the query parameter
    listed = {entry["version"]: entry for entry in server.client.get("/models").json()["models"]
              if entry["name"] == "shoes"}
    assert listed["1"]["labels"] == ["stable"] and listed["2"]["labels"] == [] and listed["2"]["policy"] == "all"


def test_two_classifiers_trained_on_different_data_answer_their_own_labels(served):
    server, _, _ = served
    shoes, squares = classify(server, "shoes", top_k=10), classify(server, "squares")
    assert (shoes["name"], squares["name"]) == ("shoes", "squares")
    assert set(squares["labels"]) == {"dark", "light"}
    assert sorted(shoes["labels"]) == sorted(FASHION_MNIST_CLASSES)  # every score of the ten, and only those
    assert not set(shoes["labels"]) & {"dark", "light"}
    dark = np.full((24, 24, 3), 30, np.uint8)
    answer = server.client.post("/classify", json={"model": "squares", "top_k": 1,
                                                   "images": [base64.b64encode(png_bytes(dark)).decode()]})
    assert answer.json()["predictions"][0][0]["label"] == "dark"


def test_a_bad_reference_is_a_clear_4xx(served):
    server, _, _ = served
    for model, status in (("shoes:9", 404), ("boots", 404), ("shoes@beta", 404), ("shoes:", 400), ("generator", 404)):
        answer = server.client.post("/classify", json={"model": model, "images": [
            base64.b64encode(png_bytes()).decode()]})
        assert answer.status_code == status, (model, answer.text)
        assert answer.json()["detail"][0]["loc"] == ["model"]


def test_request_ids_come_back_on_http_and_grpc(served):
    server, _, _ = served
    answer = server.client.post("/classify", json={"images": [base64.b64encode(png_bytes()).decode()]},
                                headers={"X-Request-Id": "trace-1234"})
    assert answer.headers["x-request-id"] == "trace-1234"
    assert len(classify(server)["request id"]) == 32  # one made when the client sent none
    with grpc.insecure_channel(server.grpc_target) as channel:
        _, call = diptych_pb2_grpc.DiptychStub(channel).Classify.with_call(
            pb.ClassifyRequest(images=[png_bytes()], model="squares", top_k=1), metadata=[("x-request-id", "grpc-99")],
            timeout=30)
    assert dict(call.trailing_metadata())["x-request-id"] == "grpc-99"


def test_tritonclient_repository_index_load_and_unload(served):
    server, _, _ = served
    http = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    index = {(entry["name"], entry["version"]): entry["state"] for entry in http.get_model_repository_index()}
    assert index[("shoes", "1")] == "READY" and index[("squares", "1")] == "READY"
    with pytest.raises(InferenceServerException) as refused:
        http.unload_model("squares")  # no admin key
    assert refused.value.status() == "401"
    headers = {"authorization": f"Bearer {ADMIN}"}  # gRPC metadata keys are lower case
    http.unload_model("squares", headers=headers)
    assert eventually(lambda: "1" not in versions(server, "squares"), 60)
    grpc_client = triton_grpc.InferenceServerClient(server.grpc_target)
    grpc_client.load_model("squares", headers=headers)
    assert versions(server, "squares") == {"1": "available"}
    ready = grpc_client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "squares", "version": "1", "state": "READY"}.items() <= next(
        entry for entry in ready if entry["name"] == "squares").items()
    with pytest.raises(InferenceServerException) as unknown:
        grpc_client.load_model("boots", headers=headers)
    assert unknown.value.status() == "StatusCode.NOT_FOUND"


def test_tf_serving_rest_predict_classify_status_and_metadata(served):
    server, _, _ = served
    image = {"b64": base64.b64encode(png_bytes()).decode()}
    row = server.client.post("/v1/models/shoes/versions/1:predict", json={"instances": [image, image]})
    assert row.status_code == 200, row.text
    predictions = row.json()["predictions"]
    assert len(predictions) == 2 and len(predictions[0]["scores"]) == 10 and "Sneaker" in predictions[0]["classes"]
    columnar = server.client.post("/v1/models/shoes/labels/stable:predict", json={"inputs": [image]})
    assert columnar.status_code == 200 and len(columnar.json()["outputs"]["scores"]) == 1
    dim = server.client.get("/models/generator").json()["card"]["latent_dim"]
    generated = server.client.post("/v1/models/generator:predict", json={
        "instances": [{"latents": [0.0] * dim, "class_ids": 3}, {"latents": [0.5] * dim, "class_ids": 1}]})
    assert generated.status_code == 200, generated.text
    assert np.array(generated.json()["predictions"]).shape[0] == 2
    classified = server.client.post("/v1/models/shoes:classify", json={"examples": [{"image_bytes": image}]})
    assert classified.status_code == 200 and len(classified.json()["results"][0]) == 10
    status = server.client.get("/v1/models/shoes").json()["model_version_status"]
    assert {entry["version"]: entry["state"] for entry in status}["1"] == "AVAILABLE"
    assert status[0]["status"] == {"error_code": "OK", "error_message": ""}
    metadata = server.client.get("/v1/models/generator/metadata").json()
    latents_info = metadata["metadata"]["signature_def"]["signatureDef"]["serving_default"]["inputs"]["latents"]
    assert [int(dim["size"]) for dim in latents_info["tensorShape"]["dim"]] == [-1, dim]  # the width, declared
    missing = server.client.post("/v1/models/shoes/versions/9:predict", json={"instances": [image]})
    assert missing.status_code == 404 and missing.json()["error"] == "Servable not found for request: Specific(shoes, 9)"
    bad = server.client.post("/v1/models/shoes:predict", json={"instances": [{"b64": "not base64!"}]})
    assert bad.status_code == 400 and "base64" in bad.json()["error"]


def test_tf_serving_grpc_versions_labels_status_and_reload(served):
    server, _, _ = served
    with grpc.insecure_channel(server.grpc_target) as channel:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="shoes", version_label="stable"))
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([png_bytes()]))
        assert predict(request, timeout=30).model_spec.version.value == 1
        request.model_spec.ClearField("version_label")
        request.model_spec.version.value = 7
        with pytest.raises(grpc.RpcError) as missing:
            predict(request, timeout=30)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert "Specific(shoes, 7)" in missing.value.details()
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        status = models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
            model_spec=model_pb2.ModelSpec(name="squares")), timeout=30)
        assert [(s.version, s.state) for s in status.model_version_status] == [
            (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
        reload = model_management_pb2.ReloadConfigRequest()  # as TF Serving's, it lists every model served
        config = reload.config.model_config_list.config.add(name="squares")
        config.version_labels["stable"] = 1
        shoes = reload.config.model_config_list.config.add(name="shoes")
        shoes.model_version_policy.all.SetInParent()
        shoes.version_labels["stable"] = 1
        reload.config.model_config_list.config.add(name="generator")
        with pytest.raises(grpc.RpcError) as refused:
            models.HandleReloadConfigRequest(reload, timeout=60)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = models.HandleReloadConfigRequest(reload, timeout=60, metadata=[("authorization", f"Bearer {ADMIN}")])
        assert answer.status.error_code == 0
        assert classify(server, "squares@stable")["version"] == "1"
