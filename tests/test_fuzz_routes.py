"""Fuzzing the routes that take a model, a version or a label in their path, and the control
plane (docs/reliability.md; tests/test_fuzz.py fuzzes the bodies of the inference routes):
nothing a client sends is answered with a 5xx.

- In process: version numbers (ASCII digits within int64, wherever one is parsed), model
  references, and JSON documents nested to any depth, through the core's one parser of each.
- Over real HTTP: TF Serving's REST API (`/v1/models/...`, with version and label paths) and
  the Open Inference Protocol's REST paths, on the session's open server; the model
  repository's control routes (`/v2/repository/...` index, load, unload), with an admin key,
  on a server of this module's own (its models are loaded and unloaded).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
from urllib.parse import quote

import grpc
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorflow_serving.apis import model_management_pb2, predict_pb2
from tensorflow_serving.config.model_server_config_pb2 import ModelConfig
from tritonclient.grpc import service_pb2 as v2_pb

from proto.diptych.v1 import diptych_pb2 as pb
from service.core import ValidationError
from service.core.repository import ModelRef
from service.core.validation import MAX_JSON_DEPTH, MAX_VERSION, decimal, json_document, requested_version
from service.grpc.model_service import MAX_RELOAD_MODELS, ModelServicer
from service.http.v2rest import v2_request
from tests.conftest import Server, repository_server
from tests.grpc_clients import png_bytes
from tests.reliability import connect, read_response, request_head
from tests.test_fuzz import FUZZ, JSON, bodies

pytestmark = pytest.mark.slow
ADMIN = "fuzz-admin-key"
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN}"}
# Versions as clients get them wrong: other scripts' digits int() reads ("١" is 1, "۲" is 2),
# digits it does not ("²"), more digits than it takes, beyond int64, signs, spaces, fractions.
VERSIONS = ["1", "0", "2", "007", "\u0661", "\u06f2", "\u00b2", "9" * 5000, str(MAX_VERSION), str(MAX_VERSION + 1),
            "-1", "+1", " 1", "1.0", "1e3", "", "x"]
NAMES = ["classifier", "generator", "nomodel", "spare", "\u00e9", "a" * 300, "classifier:1", "classifier@x"]


@pytest.fixture(scope="module")
def server(grpc_servers) -> Server:
    return grpc_servers[0]


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


DEEP = st.sampled_from([nested(MAX_JSON_DEPTH + 1), nested(5000), '{"a":' * 3000 + "1" + "}" * 3000,
                        '{"parameters": {"config": ' + json.dumps(nested(5000)) + "}}",
                        '{"instances": ' + nested(3000) + "}", '{"inputs": [{"data": ' + nested(3000) + "}]}"])


# -- in process -----------------------------------------------------------------------------


@settings(FUZZ, max_examples=500)
@given(st.one_of(st.sampled_from(VERSIONS), st.text(max_size=25), st.integers(-2**70, 2**70), JSON))
def test_a_version_is_ascii_digits_within_int64_or_refused(value):
    try:
        number = requested_version(value, "version")
    except ValidationError as error:
        assert error.field == "version" and "not a version number" in error.problem
        return
    assert 0 <= number <= MAX_VERSION
    assert number == value or (value.isascii() and value.isdigit() and int(value) == number)


@settings(FUZZ, max_examples=500)
@given(st.one_of(st.text(max_size=30), st.builds("classifier:{}".format, st.sampled_from(VERSIONS))))
def test_a_model_reference_parses_or_is_refused_naming_the_field(text):
    try:
        ref = ModelRef.parse(text)
    except ValidationError as error:
        assert error.field == "model" and error.problem
        return
    assert ref.version is None or 0 <= ref.version <= MAX_VERSION


@settings(FUZZ, max_examples=300)
@given(st.one_of(JSON.map(json.dumps), DEEP, st.integers(0, 300).map(nested), st.binary(max_size=64)))
def test_json_documents_parse_or_are_refused_at_any_depth(text):
    try:
        parsed = json_document(text)
    except ValidationError as error:
        assert error.field == "body" and error.problem
        return
    assert json.dumps(parsed) == json.dumps(json.loads(text))  # NaN is not equal to itself


@settings(FUZZ, max_examples=200)
@given(st.one_of(st.sampled_from(["9" * 5000, "9" * 20, "", "-1", "\u00b2", "1e3", "0", "3"]), st.text(max_size=25)))
def test_a_v2_header_length_that_is_no_count_is_ignored(header):
    """`Inference-Header-Content-Length` is read in ASCII digits within int64, else ignored (the
    body is all JSON, as `²` is taken in test_fuzz.py): thousands of digits made int() raise (a 500)."""
    body = json.dumps({"inputs": []}).encode()
    try:
        request, _ = v2_request(body, header, "classifier")
    except ValidationError as error:
        assert error.field == "body" and decimal(header) is not None, error  # a count that cuts the JSON short
        return
    assert request.inputs == {}


@pytest.mark.parametrize(("names", "problem"), [
    ([f"m{i}" for i in range(MAX_RELOAD_MODELS + 1)], f"{MAX_RELOAD_MODELS + 1} models listed: at most"),
    (["a", "b", "a"], "'a' is listed twice"),
])
def test_a_reload_config_too_long_or_with_a_model_twice_is_refused_before_any_change(names, problem):
    """Counted at once (a list.count per name was quadratic, on the event loop), and bounded."""
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.extend(ModelConfig(name=name, base_path="/m") for name in names)
    with pytest.raises(ValidationError, match=re.escape(problem)):
        asyncio.run(ModelServicer(engine=None).HandleReloadConfigRequest(request, None))  # the engine is never asked


# -- over HTTP: TF Serving REST and the Open Inference Protocol's REST paths ------------------


def assert_no_server_error(answer: httpx.Response) -> None:
    assert answer.status_code < 500, (answer.request.method, str(answer.request.url)[:200], answer.status_code,
                                      answer.text[:500])
    if answer.status_code >= 400 and answer.headers.get("content-type", "").startswith("application/json"):
        body = answer.json()  # an error that says what was wrong, or the protocol's "not ready" (V2's 400)
        assert body.get("error") or body.get("ready") is False, answer.text


def segment(text: str) -> str:
    return quote(text, safe="")


IMAGE = {"b64": base64.b64encode(png_bytes()).decode()}
TF_BODIES = st.one_of(bodies(), DEEP, st.sampled_from([
    {"instances": [IMAGE]}, {"inputs": [IMAGE]}, {"examples": [{"image_bytes": IMAGE}]}, {"instances": [[1, 2]]},
    {"signature_name": "classify_pixels", "instances": [[[[0]] * 28] * 28]}]).map(json.dumps))
V2_INFER = json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [IMAGE["b64"]],
                                   "parameters": {"content_type": "base64"}}]})
V2_BODIES = st.one_of(bodies(), DEEP, st.just(V2_INFER))


@settings(FUZZ, max_examples=300)
@given(name=st.sampled_from(NAMES), where=st.sampled_from(["", "versions", "labels"]),
       which=st.one_of(st.sampled_from(VERSIONS + ["stable", "one"]), st.text(max_size=8)),
       route=st.sampled_from([":predict", ":classify", "", "/metadata"]), body=TF_BODIES)
def test_tf_serving_rest_paths_and_bodies_get_no_server_error(server, name, where, which, route, body):
    path = f"/v1/models/{segment(name)}" + (f"/{where}/{segment(which)}" if where else "") + route
    if route.startswith(":"):
        answer = server.client.post(path, content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        answer = server.client.get(path, timeout=30)
    assert_no_server_error(answer)


@settings(FUZZ, max_examples=300)
@given(name=st.sampled_from(NAMES), version=st.one_of(st.none(), st.sampled_from(VERSIONS), st.text(max_size=8)),
       route=st.sampled_from(["/infer", "/ready", ""]), body=V2_BODIES)
def test_v2_rest_paths_and_bodies_get_no_server_error(server, name, version, route, body):
    path = f"/v2/models/{segment(name)}" + ("" if version is None else f"/versions/{segment(version)}") + route
    if route == "/infer":
        answer = server.client.post(path, content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        answer = server.client.get(path, timeout=30)
    assert_no_server_error(answer)


@pytest.mark.parametrize("method, path", [
    ("POST", f"/v1/models/classifier/versions/{'9' * 5000}:predict"),
    ("POST", "/v1/models/classifier/versions/\u0661:predict"),
    ("GET", "/v1/models/classifier/versions/\u00b2"),
    ("POST", f"/v2/models/classifier/versions/{'9' * 5000}/infer"),
    ("GET", "/v2/models/classifier/versions/\u0661"),
])
def test_a_version_that_is_no_number_is_a_400_naming_it(server, method, path):
    """Regression: thousands of digits, or "²", raised in int(): 500; "١" served version 1."""
    body = json.loads(V2_INFER) if path.startswith("/v2/") else {"instances": [IMAGE]}
    answer = server.client.request(method, quote(path, safe="/:"), json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"][0]["loc"] == ["version"] and "not a version number" in answer.json()["error"]


def test_grpc_versions_that_are_no_number_are_invalid_argument(server, control):
    """A negative ModelSpec.version (int64 on the wire), other scripts' digits in V2's model_version."""
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name, predict.model_spec.version.value = "classifier", -1
    infer = v2_pb.ModelInferRequest(model_name="classifier", model_version="\u0661")
    load = pb.LoadModelRequest(name="spare", version=-1)
    calls = [(server, "/tensorflow.serving.PredictionService/Predict", predict, "model_spec.version: -1"),
             (server, "/inference.GRPCInferenceService/ModelInfer", infer, "version: '\u0661'"),
             (control, "/diptych.v1.Diptych/LoadModel", load, "version: -1")]
    for target, method, request, problem in calls:
        with grpc.insecure_channel(target.grpc_target) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary(method)(request.SerializeToString(), timeout=30,
                                            metadata=[("authorization", f"Bearer {ADMIN}")])
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, refused.value.details())
        assert refused.value.details().startswith(f"{problem} is not a version number"), refused.value.details()


def test_deeply_nested_json_is_a_400_saying_so(server):
    """Regression: TF Serving REST answered RecursionError with a 500."""
    for path in ("/v1/models/classifier:predict", "/v2/repository/index"):
        answer = server.client.post(path, content=nested(100_000), headers={"content-type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == f"body: JSON nested more than {MAX_JSON_DEPTH} levels deep"


# -- over HTTP: the control routes, on a server of their own ------------------------------------


CONTROL_BODY_BYTES = 100_000


@pytest.fixture(scope="module")
def control(tiny_models, tmp_path_factory):
    """Admin keys on; a default classifier, and a spare model in the repository folder that
    the fuzzing loads, unloads and configures. Bodies: at most 100 kB, whole within 3 s."""
    root = tmp_path_factory.mktemp("fuzz-repository")
    shutil.copytree(tiny_models["classifier"], root / "spare" / "1")
    with repository_server(tmp_path_factory, "fuzz", model_root=str(root), classifier=str(tiny_models["classifier"]),
                           generator="", admin_keys=ADMIN, max_body_bytes=str(CONTROL_BODY_BYTES),
                           body_timeout_s="3") as server:
        yield server


TABLES = st.one_of(st.sampled_from([
    {}, {"versions": "all"}, {"versions": "latest:1"}, {"labels": {"stable": 1}},
    {"labels": {"stable": 1}, "traffic": {"stable": 100}}, {"versions": "specific:\u0661"}, {"log_sample": 2},
    {"unknown": 1}]), JSON)
PARAMETERS = st.fixed_dictionaries({}, optional={
    "version": st.one_of(st.sampled_from(VERSIONS), st.integers(-2**70, 2**70), st.booleans(), st.floats(), JSON),
    "config": st.one_of(TABLES.map(json.dumps), DEEP, JSON),
})
CONTROL_BODIES = st.one_of(st.fixed_dictionaries({}, optional={"parameters": st.one_of(PARAMETERS, JSON),
                                                               "ready": JSON}).map(json.dumps),
                           DEEP, bodies(), st.just(""))


@settings(FUZZ, max_examples=200)
@given(name=st.sampled_from(["spare", "nomodel", "\u00e9", "a" * 300]),
       action=st.sampled_from(["load", "unload", "index"]), body=CONTROL_BODIES)
def test_control_routes_get_no_server_error(control, name, action, body):
    path = "/v2/repository/index" if action == "index" else f"/v2/repository/models/{segment(name)}/{action}"
    answer = control.client.post(path, content=body, timeout=120, headers={
        "content-type": "application/json", "authorization": f"Bearer {ADMIN}"})
    assert_no_server_error(answer)


@pytest.mark.parametrize("parameters", [{"version": "9" * 5000}, {"version": "\u0661"}, {"version": "\u00b2"},
                                        {"version": -1}, {"version": 2**64}])
def test_a_load_version_that_is_no_number_is_a_400_naming_it(control, parameters):
    for action in ("load", "unload"):
        answer = control.client.post(f"/v2/repository/models/spare/{action}", json={"parameters": parameters},
                                     headers={"authorization": f"Bearer {ADMIN}"})
        assert answer.status_code == 400, answer.text
        assert answer.json()["detail"][0]["loc"] == ["parameters", "version"], answer.text


def test_a_deeply_nested_config_is_a_400_naming_it(control):
    answer = control.client.post("/v2/repository/models/spare/load", headers={"authorization": f"Bearer {ADMIN}"},
                                 json={"parameters": {"config": nested(5000)}})
    assert answer.status_code == 400 and answer.json()["detail"][0]["loc"] == ["parameters", "config"], answer.text


@pytest.mark.parametrize("path", ["/v2/repository/models/spare/load", "/v2/repository/index"])
def test_a_body_trickling_past_body_timeout_s_is_a_408_and_the_next_is_served(control, path):
    """A control route and an inference-side route: a client that sends part of its body and
    stops is cut off by the deadline (it held its connection and body until BentoML's traffic
    timeout, 40 s), and the route serves the next request."""
    body = b'{"parameters": {}}'
    sock = connect(control)
    try:
        sock.sendall(request_head(path, len(body), headers=ADMIN_HEADERS) + body[:5])  # and no more
        code, answer = read_response(sock)
    finally:
        sock.close()
    assert code == 408, answer
    assert json.loads(answer)["error"] == "body: not received whole within 3 s (body_timeout_s): send the request at once"
    assert control.client.post(path, content=body, headers={**ADMIN_HEADERS, "content-type": "application/json"}
                               ).status_code == 200


@pytest.mark.parametrize("chunked", [False, True])
def test_a_control_body_over_max_body_bytes_is_a_413(control, chunked):
    """The load/unload routes read their bodies through the guard's bounded reader too (they
    read any length before): declared too long, or streamed past the limit."""
    body = json.dumps({"parameters": {"config": "x" * CONTROL_BODY_BYTES}}).encode()
    for action in ("load", "unload"):
        answer = control.client.post(f"/v2/repository/models/spare/{action}", content=iter([body]) if chunked else body,
                                     headers={**ADMIN_HEADERS, "content-type": "application/json"})
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"] == f"body: larger than {CONTROL_BODY_BYTES} bytes"


def test_the_control_server_is_sound_after_the_fuzzing(control):
    assert control.client.get("/readyz").status_code == 200
    assert control.client.post("/v2/repository/index", json={}).status_code == 200
