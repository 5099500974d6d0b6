"""One `VersionStatus`, every protocol (service/core/manager/status.py): the manager reports
each version once, typed, and each protocol renders it through its own table of states. A real
server holds one model with a broken newest version (failed, with its reason) and the version
before it serving in its place (available, with a reason too); diptych's `/models` and
ListModels, the V2 repository index (REST and gRPC), V2 model readiness and metadata, and TF
Serving's model status (REST and gRPC) must all say the same of both."""

from __future__ import annotations

import shutil

import grpc
import pytest
import tritonclient.grpc as triton_grpc
from tensorflow_serving.apis import get_model_status_pb2, model_pb2, model_service_pb2_grpc

from proto.diptych.v1 import diptych_pb2 as pb
from proto.diptych.v1 import diptych_pb2_grpc
from service import tfserving, v2
from service.core import VersionState
from tests.conftest import repository_server

pytestmark = pytest.mark.slow


def test_each_protocol_has_one_word_for_every_state():
    for table in (v2.REPOSITORY_STATES, tfserving.STATES):
        assert set(table) == set(VersionState), table
    assert len(set(v2.REPOSITORY_STATES.values())) == len(VersionState)  # no two states read alike


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("status-repository")
    shutil.copytree(tiny_models["classifier"], root / "shoes" / "1")
    shutil.copytree(tiny_models["classifier"], root / "shoes" / "2")
    (root / "shoes" / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")
    with repository_server(tmp_path_factory, "status", model_root=str(root), classifier="shoes",
                           generator="") as server:
        yield server


def test_every_protocol_renders_the_same_version_status(server):
    listed = {int(entry["version"]): entry for entry in server.client.get("/models").json()["models"]
              if entry["name"] == "shoes"}
    states = {number: VersionState(entry["state"]) for number, entry in listed.items()}
    reasons = {number: entry["reason"] for number, entry in listed.items()}
    assert states == {1: VersionState.AVAILABLE, 2: VersionState.FAILED}, listed
    assert reasons[1].startswith("serves in place of version 2") and reasons[2], reasons

    with grpc.insecure_channel(server.grpc_target) as channel:
        models = diptych_pb2_grpc.DiptychStub(channel).ListModels(pb.ListModelsRequest(), timeout=30).models
        model_status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name="shoes")), timeout=30)
    assert {int(model.version): (model.state, model.reason) for model in models if model.name == "shoes"} == \
        {number: (states[number].value, reasons[number]) for number in states}

    index = server.client.post("/v2/repository/index", json={}).json()
    grpc_index = triton_grpc.InferenceServerClient(server.grpc_target).get_model_repository_index(as_json=True)
    triton = {1: ("READY", reasons[1]), 2: ("UNAVAILABLE", reasons[2])}  # v2.REPOSITORY_STATES, in Triton's words
    for answer in (index, grpc_index["models"]):
        assert {int(entry["version"]): (entry["state"], entry.get("reason", "")) for entry in answer
                if entry["name"] == "shoes"} == triton, answer
    ready = {number: server.client.get(f"/v2/models/shoes/versions/{number}/ready").status_code == 200
             for number in states}
    assert ready == {number: state is VersionState.AVAILABLE for number, state in states.items()}
    assert server.client.get("/v2/models/shoes").json()["versions"] == \
        [str(number) for number, state in states.items() if state is VersionState.AVAILABLE]

    rest = server.client.get("/v1/models/shoes").json()["model_version_status"]
    tf_serving = {1: ("AVAILABLE", ""), 2: ("END", reasons[2])}  # tfserving.STATES; only a failure is an error
    assert {int(entry["version"]): (entry["state"], entry["status"]["error_message"]) for entry in rest} == tf_serving
    names = get_model_status_pb2.ModelVersionStatus.State.Name
    assert {status.version: (names(status.state), status.status.error_message)
            for status in model_status.model_version_status} == tf_serving
