"""The load/unload API on a real `bentoml serve`: diptych.v1 `LoadModel` / `UnloadModel`
over real gRPC stubs, their refusals as gRPC status codes, and the two protocols sharing
one state (a version loaded over HTTP and unloaded over gRPC is seen so on both)."""

from __future__ import annotations

import base64
import json

import grpc
import pytest

from proto.diptych.v1 import diptych_pb2 as pb
from proto.diptych.v1 import diptych_pb2_grpc
from tests.conftest import Server, eventually
from tests.grpc_clients import png_bytes
from tests.test_repository_server import add_version

pytestmark = pytest.mark.slow
ADMIN = "control-admin-key"
AS_ADMIN = [("authorization", f"Bearer {ADMIN}")]


@pytest.fixture(scope="module")
def served(server_env, tiny_models, tmp_path_factory):
    """`shoes` (the default classifier) with versions 1 and 2, only the newest aspired, and
    `boots`, a model that is no default (so it can be unloaded whole)."""
    root = tmp_path_factory.mktemp("control-repository")
    for name, number in (("shoes", 1), ("shoes", 2), ("boots", 1)):
        (root / name).mkdir(exist_ok=True)
        add_version(root, name, number, tiny_models["classifier"])
    server = Server({**server_env, "BENTOML_HOME": str(tmp_path_factory.mktemp("control-home")),
                     "DIPTYCH_MODEL_ROOT": str(root), "DIPTYCH_STORE": "false", "DIPTYCH_CLASSIFIER": "shoes",
                     "DIPTYCH_GENERATOR": str(tiny_models["generator"]), "DIPTYCH_ADMIN_KEYS": ADMIN,
                     "DIPTYCH_CLASSIFIER_RUNTIME": "tensorflow",
                     "DIPTYCH_REPOSITORY": json.dumps({"shoes": {"versions": "latest:1"}})},
                    tmp_path_factory.mktemp("control-server") / "server.log")
    try:
        server.wait("/readyz")
        with grpc.insecure_channel(server.grpc_target) as channel:
            yield server, diptych_pb2_grpc.DiptychStub(channel)
    finally:
        server.stop()


def listed_over_grpc(stub, name: str) -> dict[str, str]:
    return {model.version: model.state for model in stub.ListModels(pb.ListModelsRequest(), timeout=30).models
            if model.name == name}


def listed_over_http(server: Server, name: str) -> dict[str, str]:
    return {entry["version"]: entry["state"] for entry in server.client.get("/models").json()["models"]
            if entry["name"] == name}


def classify_code(stub, model: str) -> grpc.StatusCode:
    """The status of a Classify call naming `model` (OK when a version answered)."""
    try:
        answer = stub.Classify(pb.ClassifyRequest(images=[png_bytes()], model=model, top_k=1), timeout=60)
    except grpc.RpcError as error:
        return error.code()
    assert answer.model.name == model.split(":")[0]
    return grpc.StatusCode.OK


def test_load_model_serves_a_version_beside_the_policys_and_unload_model_removes_it(served):
    server, stub = served
    assert listed_over_grpc(stub, "shoes") == {"2": "available"}
    assert classify_code(stub, "shoes:1") == grpc.StatusCode.NOT_FOUND
    assert stub.LoadModel(pb.LoadModelRequest(name="shoes", version=1), metadata=AS_ADMIN,
                          timeout=300) == pb.LoadModelResponse()
    assert listed_over_grpc(stub, "shoes") == {"1": "available", "2": "available"}  # loaded when it answers
    assert listed_over_http(server, "shoes") == {"1": "available", "2": "available"}
    answer = stub.Classify(pb.ClassifyRequest(images=[png_bytes()], model="shoes:1", top_k=1), timeout=60)
    assert (answer.model.name, answer.model.version) == ("shoes", "1")
    stub.UnloadModel(pb.UnloadModelRequest(name="shoes", version=1), metadata=AS_ADMIN, timeout=60)
    assert eventually(lambda: listed_over_grpc(stub, "shoes") == {"2": "available"}, 60), listed_over_grpc(stub, "shoes")
    assert classify_code(stub, "shoes:1") == grpc.StatusCode.NOT_FOUND
    assert classify_code(stub, "shoes") == grpc.StatusCode.OK  # the policy's version kept serving


def test_unload_model_without_a_version_stops_the_whole_model_and_load_model_brings_it_back(served):
    _, stub = served
    assert classify_code(stub, "boots") == grpc.StatusCode.OK
    stub.UnloadModel(pb.UnloadModelRequest(name="boots"), metadata=AS_ADMIN, timeout=60)
    assert eventually(lambda: not listed_over_grpc(stub, "boots"), 60), listed_over_grpc(stub, "boots")
    assert classify_code(stub, "boots") == grpc.StatusCode.NOT_FOUND
    stub.LoadModel(pb.LoadModelRequest(name="boots"), metadata=AS_ADMIN, timeout=300)
    assert listed_over_grpc(stub, "boots") == {"1": "available"}
    assert classify_code(stub, "boots") == grpc.StatusCode.OK


@pytest.mark.parametrize("method, request_, metadata, code, words", [
    ("LoadModel", pb.LoadModelRequest(name="shoes", version=1), [], grpc.StatusCode.UNAUTHENTICATED, "key"),
    ("UnloadModel", pb.UnloadModelRequest(name="boots"), [("authorization", "Bearer not-the-admin-key")],
     grpc.StatusCode.UNAUTHENTICATED, "not valid"),
    ("LoadModel", pb.LoadModelRequest(name="sandals"), AS_ADMIN, grpc.StatusCode.NOT_FOUND, "'sandals'"),
    ("LoadModel", pb.LoadModelRequest(name="shoes", version=9), AS_ADMIN, grpc.StatusCode.INVALID_ARGUMENT,
     "version 9 is not in the repository"),
    ("UnloadModel", pb.UnloadModelRequest(name="sandals"), AS_ADMIN, grpc.StatusCode.NOT_FOUND, "'sandals'"),
    ("UnloadModel", pb.UnloadModelRequest(name="shoes"), AS_ADMIN, grpc.StatusCode.FAILED_PRECONDITION,
     "default model"),
    ("UnloadModel", pb.UnloadModelRequest(name="shoes", version=2), AS_ADMIN, grpc.StatusCode.INVALID_ARGUMENT,
     "version 2 was not loaded on request"),
], ids=["load-without-a-key", "unload-with-a-wrong-key", "load-an-unknown-model", "load-a-missing-version",
        "unload-an-unknown-model", "unload-the-default-model",
        "unload-a-version-the-policy-serves"])
def test_a_refused_load_or_unload_has_its_code_and_changes_nothing(served, method, request_, metadata, code, words):
    server, stub = served
    before = {name: listed_over_grpc(stub, name) for name in ("shoes", "boots")}
    with pytest.raises(grpc.RpcError) as refused:
        getattr(stub, method)(request_, metadata=metadata, timeout=60)
    assert refused.value.code() == code and words in refused.value.details(), refused.value.details()
    assert {name: listed_over_grpc(stub, name) for name in ("shoes", "boots")} == before
    assert listed_over_http(server, "shoes") == before["shoes"]


def test_a_version_loaded_over_http_is_unloaded_over_grpc_and_both_see_it(served):
    server, stub = served
    loaded = server.client.post("/v2/repository/models/shoes/load", json={"parameters": {"version": 1}},
                                headers={"authorization": f"Bearer {ADMIN}"}, timeout=300)
    assert loaded.status_code == 200, loaded.text
    assert listed_over_grpc(stub, "shoes") == listed_over_http(server, "shoes") == {"1": "available",
                                                                                    "2": "available"}
    assert classify_code(stub, "shoes:1") == grpc.StatusCode.OK
    stub.UnloadModel(pb.UnloadModelRequest(name="shoes", version=1), metadata=AS_ADMIN, timeout=60)
    assert eventually(lambda: listed_over_http(server, "shoes") == {"2": "available"}, 60), listed_over_http(
        server, "shoes")
    assert listed_over_grpc(stub, "shoes") == {"2": "available"}
    index = server.client.post("/v2/repository/index").json()
    assert {(entry["name"], entry["version"]) for entry in index if entry["name"] == "shoes"} == {("shoes", "2")}
    answer = server.client.post("/classify", json={"model": "shoes:1", "images": [
        base64.b64encode(png_bytes()).decode()]})
    assert answer.status_code == 404, answer.text
