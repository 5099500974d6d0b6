"""The control plane on a real `bentoml serve`: a refused change gets the same verdict on HTTP
and gRPC (V2 REST and gRPC loads, TF Serving's ReloadConfig) and changes nothing (`/models`,
`/readyz` and each model's labels and policy are the same before and after); a path from a
request stays inside the model roots; TF Serving's reload replaces the model list; the
control routes take application/json only."""

from __future__ import annotations

import json
import os

import grpc
import pytest
import tritonclient.grpc as triton_grpc
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import Server, eventually
from tests.test_repository_server import add_version

pytestmark = pytest.mark.slow
ADMIN = "admin-key"
AUTH = {"authorization": f"Bearer {ADMIN}"}
SHOES = {"labels": {"stable": 1}, "traffic": {"stable": 100}}
GRPC_CODE = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 409: "FAILED_PRECONDITION"}


@pytest.fixture(scope="module")
def served(server_env, tiny_models, tmp_path_factory):
    """shoes (the default classifier) and boots in the repository; a folder of versions outside
    it, a symlink in it to there, and an allowed root holding sandals."""
    tmp = tmp_path_factory.mktemp("control")
    root, folders = tmp / "models", {"outside": tmp / "outside" / "shoes", "allowed": tmp / "allowed"}
    for name in ("shoes", "boots"):
        add_version(root, name, 1, tiny_models["classifier"])
    add_version(tmp / "outside", "shoes", 1, tiny_models["classifier"])
    add_version(tmp / "allowed", "sandals", 1, tiny_models["classifier"])
    os.symlink(tmp / "outside", root / "link")  # no versions in it: not a model of the root
    folders["link"] = root / "link" / "shoes"
    server = Server({**server_env, "BENTOML_HOME": str(tmp / "home"), "DIPTYCH_MODEL_ROOT": str(root),
                     "DIPTYCH_STORE": "false", "DIPTYCH_CLASSIFIER": "shoes",
                     "DIPTYCH_GENERATOR": str(tiny_models["generator"]), "DIPTYCH_POLL_S": "0.5",
                     "DIPTYCH_ADMIN_KEYS": ADMIN, "DIPTYCH_ALLOWED_ROOTS": str(tmp / "allowed"),
                     "DIPTYCH_CLASSIFIER_RUNTIME": "tensorflow", "DIPTYCH_GENERATOR_RUNTIME": "tensorflow",
                     "DIPTYCH_REPOSITORY": json.dumps({"shoes": SHOES})}, tmp / "server.log")
    try:
        server.wait("/readyz")
        assert eventually(lambda: ("boots", "1") in state(server)[0], 120)
        yield server, folders
    finally:
        server.stop()


def state(server: Server) -> tuple[dict, int]:
    """What a change could change: each version's state, labels and policy; readiness. Read once
    no version is loading or unloading: a test before may have left one draining, and it would
    be gone by the next read whatever the change under test did."""
    seen = {}

    def settled() -> bool:
        seen["models"] = {(entry["name"], entry["version"]): (entry["state"], entry["labels"], entry["policy"])
                          for entry in server.client.get("/models").json()["models"]}
        return not any(entry[0] in ("loading", "unloading") for entry in seen["models"].values())

    assert eventually(settled, 120), f"versions still loading or unloading: {seen['models']}"
    return seen["models"], server.client.get("/readyz").status_code


def http_load(server: Server, table: dict) -> tuple[int, str]:
    answer = server.client.post("/v2/repository/models/shoes/load", headers=AUTH,
                                json={"parameters": {"config": json.dumps(table)}})
    return answer.status_code, answer.json().get("error", "")


def grpc_load(server: Server, table: dict) -> str:
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    try:
        client.load_model("shoes", headers=AUTH, config=json.dumps(table))
        return "OK"
    except InferenceServerException as error:
        return error.status().removeprefix("StatusCode.")
    finally:
        client.close()


def reload(server: Server, models: dict[str, dict]) -> str:
    """TF Serving's ReloadConfig: models by name, each with `labels`, `specific` and `base_path`."""
    request = model_management_pb2.ReloadConfigRequest()
    for name, config in models.items():
        model = request.config.model_config_list.config.add(name=name, base_path=config.get("base_path", ""))
        model.version_labels.update(config.get("labels", {}))
        if "specific" in config:
            model.model_version_policy.specific.versions.extend(config["specific"])
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                request, timeout=120, metadata=list(AUTH.items()))
            return "OK"
        except grpc.RpcError as error:
            return error.code().name


def everything_but(shoes: dict) -> dict[str, dict]:
    return {"shoes": shoes, "boots": {}, "generator": {}}


@pytest.mark.parametrize("table, status, said", [
    ({**SHOES, "versions": "specific:999"}, 409, "shoes is the default classifier"),
    ({**SHOES, "traffic": {"nothing": 10}}, 400, "traffic.nothing"),
    ({"labels": {"2": 1}}, 400, "labels: '2'"),
    ({**SHOES, "traffic": {"1": -5}}, 400, "traffic.1: -5"),
    ({**SHOES, "traffic": {"1": 10**30}}, 400, "traffic.1"),
    ({**SHOES, "shadow": "nobody"}, 400, "shadow: 'nobody'"),
    ({**SHOES, "path": "outside"}, 403, "outside the model roots"),
    ({**SHOES, "path": "link"}, 403, "outside the model roots"),  # a symlink in the root, to outside it
])
def test_a_refused_load_config_gets_one_verdict_on_http_and_grpc_and_changes_nothing(served, table, status, said):
    server, folders = served
    table = {**table, "path": str(folders[table["path"]])} if "path" in table else table
    before = state(server)
    assert before[1] == 200
    answer = http_load(server, table)
    assert answer[0] == status and said in answer[1], answer
    assert state(server) == before
    assert grpc_load(server, table) == GRPC_CODE[status]
    assert state(server) == before


@pytest.mark.parametrize("shoes, code", [
    ({"labels": {"stable": 1}, "specific": [999]}, "FAILED_PRECONDITION"),
    ({"labels": {"2": 1}}, "INVALID_ARGUMENT"),
    ({"labels": {"stable": -1}}, "INVALID_ARGUMENT"),
    ({"labels": {"stable": 1}, "base_path": "outside"}, "PERMISSION_DENIED"),
    ({"labels": {"stable": 1}, "base_path": "link"}, "PERMISSION_DENIED"),
])
def test_a_refused_tf_serving_reload_gets_the_same_verdict_and_changes_nothing(served, shoes, code):
    server, folders = served
    shoes = {**shoes, "base_path": str(folders[shoes["base_path"]])} if "base_path" in shoes else shoes
    before = state(server)
    assert reload(server, everything_but(shoes)) == code
    assert state(server) == before


def test_a_tf_serving_reload_replaces_the_model_list_and_never_retires_a_default(served):
    server, _ = served
    before = state(server)
    assert reload(server, {"shoes": SHOES, "boots": {}}) == "FAILED_PRECONDITION"  # the default generator left out
    assert state(server) == before
    assert reload(server, {"shoes": {"labels": {"stable": 1, "old": 1}}, "generator": {}}) == "OK"
    assert eventually(lambda: ("boots", "1") not in state(server)[0], 60), state(server)
    assert state(server)[0][("shoes", "1")] == ("available", ["old", "stable"], "latest:1")
    assert reload(server, everything_but({"labels": {"stable": 1}})) == "OK"
    assert eventually(lambda: state(server)[0].get(("boots", "1"), ("",))[0] == "available", 120), state(server)


def test_a_load_may_name_a_folder_under_an_allowed_root(served):
    server, folders = served
    answer = server.client.post("/v2/repository/models/sandals/load", headers=AUTH, json={
        "parameters": {"config": json.dumps({"path": str(folders["allowed"] / "sandals")})}})
    assert answer.status_code == 200, answer.text
    assert state(server)[0][("sandals", "1")][0] == "available"
    assert server.client.post("/v2/repository/models/sandals/unload", headers=AUTH, json={}).status_code == 200


@pytest.mark.parametrize("content_type, body", [
    ("text/plain;charset=UTF-8", b"{}"),
    ("application/x-www-form-urlencoded", b"parameters=x"),
    ("multipart/form-data; boundary=x", b"--x--\r\n"),
])
@pytest.mark.parametrize("route", ["/v2/repository/models/boots/unload", "/v2/repository/models/boots/load",
                                   "/v2/repository/index"])
def test_control_routes_refuse_what_a_web_page_sends_without_a_preflight(served, route, content_type, body):
    server, _ = served
    before = state(server)
    answer = server.client.post(route, headers={**AUTH, "content-type": content_type}, content=body)
    assert answer.status_code == 415 and "send the body as application/json" in answer.json()["error"], answer.text
    assert state(server) == before
    assert "access-control-allow-origin" not in answer.headers
