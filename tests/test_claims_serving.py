"""Serving claims of the README and docs that no other test checked, each against a real
`bentoml serve` on loopback with real stubs: the server's own `timeout_s` ending a gRPC call
that set no deadline, two BentoML workers both serving gRPC on one port, the `X-Model-*`
headers of /interpolate and of V2 REST inference, and the exact V2 server metadata."""

from __future__ import annotations

import base64
import io
import json
import tomllib

import grpc
import psutil
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2
from PIL import Image

# The Open Inference Protocol's messages as tritonclient ships them: ours would clash with
# them in protobuf's one descriptor pool (the same `inference` package), see test_fuzz.py.
from tritonclient.grpc import service_pb2 as grpc_predict_v2_pb2
from tritonclient.grpc import service_pb2_grpc as grpc_predict_v2_pb2_grpc

from proto.diptych.v1 import diptych_pb2, diptych_pb2_grpc
from tests.conftest import ROOT, Server, eventually
from tests.grpc_clients import health, png_bytes
from tests.reliability import worker_processes

pytestmark = pytest.mark.slow
WORKERS = 2
CHANNELS = 16  # connections spread by the kernel over the workers' sockets: all on one worker, p = 2**-15
TIMEOUT_S = 0.5
WINDOW_MS = 3000  # a lone call waits this long for company: past the timeout


@pytest.fixture(scope="module")
def two_workers(server_env, tiny_models, tmp_path_factory):
    """Two BentoML workers (README, "Configuration": BENTOML_CONFIG_OVERRIDES), gRPC on, and
    every inference call held by the batch window past the server's `timeout_s`. Models from
    their folders on TensorFlow (no LiteRT conversion at start), a BENTOML_HOME of its own."""
    tmp = tmp_path_factory.mktemp("two-workers")
    server = Server({**server_env, "BENTOML_HOME": str(tmp / "home"),
                     "BENTOML_CONFIG_OVERRIDES": json.dumps({"services": {"diptych": {"workers": WORKERS}}}),
                     "DIPTYCH_TIMEOUT_S": str(TIMEOUT_S), "DIPTYCH_BATCH_WINDOW_MS": str(WINDOW_MS),
                     "DIPTYCH_INTERPRETERS": "1", "DIPTYCH_CLASSIFIER_RUNTIME": "tensorflow",
                     "DIPTYCH_GENERATOR_RUNTIME": "tensorflow", "DIPTYCH_CLASSIFIER": str(tiny_models["classifier"]),
                     "DIPTYCH_GENERATOR": str(tiny_models["generator"])}, tmp / "server.log")
    channels = [grpc.insecure_channel(server.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(CHANNELS)]
    try:
        server.wait("/readyz")

        def serving(channel) -> bool:
            try:
                return health(channel) == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                return False

        # Each channel holds one connection to one worker: all SERVING means both workers are warm.
        assert eventually(lambda: all(serving(channel) for channel in channels), timeout=240), \
            server.log.read_text()[-3000:]
        yield server, channels
    finally:
        for channel in channels:
            channel.close()
        server.stop()


def test_two_workers_both_answer_grpc_on_one_port(two_workers):
    """With SO_REUSEPORT each worker listens on the gRPC port, and the kernel spreads the
    connections: after one answered call on each of 16 channels, both worker processes hold
    some of those connections, and between them all 16."""
    server, channels = two_workers
    workers = worker_processes(server)
    assert len(workers) == WORKERS
    started = lambda: server.log.read_text().count(f"gRPC on {server.grpc_target}:") == WORKERS  # noqa: E731
    assert eventually(started, 120)  # one server per worker; /readyz may answer before the second's starts
    for channel in channels:
        answer = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel).ServerMetadata(
            grpc_predict_v2_pb2.ServerMetadataRequest(), timeout=10)
        assert answer.name == "diptych"
    held = {worker.pid: [c for c in worker.net_connections(kind="tcp")
                         if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.grpc_port]
            for worker in workers}
    assert all(held.values()), {pid: len(connections) for pid, connections in held.items()}
    assert sum(map(len, held.values())) == CHANNELS


def test_the_servers_own_timeout_ends_a_grpc_call_with_deadline_exceeded(two_workers):
    """The client sets no deadline; the server's `timeout_s` (0.5 s) ends the call while the
    batch window (3 s) still holds it: DEADLINE_EXCEEDED over gRPC, 504 over HTTP. Without the
    server's timeout the call would be answered once the window closed; a client deadline
    would end it with gRPC's own details, not the server's "no result within"."""
    server, channels = two_workers
    with pytest.raises(grpc.RpcError) as error:
        diptych_pb2_grpc.DiptychStub(channels[0]).Generate(diptych_pb2.GenerateRequest(seed=1))
    assert (error.value.code(), error.value.details()) == (grpc.StatusCode.DEADLINE_EXCEEDED,
                                                           f"no result within {TIMEOUT_S:g} s")
    answer = server.client.post("/generate", json={"seed": 1})
    assert answer.status_code == 504
    assert answer.json()["detail"] == [{"loc": [], "msg": f"no result within {TIMEOUT_S:g} s", "type": "timeout"}]


# -- the open test server (conftest's grpc_servers) ----------------------------------------------


@pytest.fixture(scope="module")
def server(grpc_servers) -> Server:
    return grpc_servers[0]


def served(server: Server, kind: str) -> dict:
    (model,) = [model for model in server.client.get("/models").json()["models"] if model["kind"] == kind]
    return model


def test_interpolate_names_the_model_in_its_headers(server):
    generator = served(server, "generator")
    strip = server.client.post("/interpolate", json={"seeds": [1, 2], "steps": 3})
    assert strip.status_code == 200, strip.text
    assert strip.headers["content-type"] == "image/png"
    assert {key: strip.headers[key] for key in ("X-Model-Name", "X-Model-Version", "X-Model-Runtime")} == {
        "X-Model-Name": generator["name"], "X-Model-Version": generator["version"],
        "X-Model-Runtime": generator["runtime"]}
    side = generator["card"]["image_size"][0]
    assert Image.open(io.BytesIO(strip.content)).size == (3 * side, side)  # three images in a row


def test_v2_rest_inference_names_the_model_in_its_headers(server):
    """Both models, JSON answers and binary ones (Triton's extension) alike."""
    generator, classifier = served(server, "generator"), served(server, "classifier")
    latent_dim = generator["card"]["latent_dim"]
    body = {"inputs": [{"name": "latents", "datatype": "FP32", "shape": [1, latent_dim], "data": [0.0] * latent_dim},
                       {"name": "class_ids", "datatype": "INT32", "shape": [1], "data": [0]}]}
    answers = {
        generator["name"]: server.client.post(f"/v2/models/{generator['name']}/infer", json=body),
        f"{generator['name']} binary": server.client.post(
            f"/v2/models/{generator['name']}/infer", json={**body, "parameters": {"binary_data_output": True}}),
        classifier["name"]: server.client.post(f"/v2/models/{classifier['name']}/infer", json={"inputs": [
            {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
             "data": [base64.b64encode(png_bytes()).decode()]}]}),
    }
    for (what, answer), model in zip(answers.items(), (generator, generator, classifier)):
        assert answer.status_code == 200, (what, answer.text)
        assert (answer.headers["X-Model-Name"], answer.headers["X-Model-Version"]) == (
            model["name"], str(model["card"]["version"])), what
    assert "Inference-Header-Content-Length" in answers[f"{generator['name']} binary"].headers


def test_v2_server_metadata_is_exact_over_rest_and_grpc(server):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    expected = {"name": "diptych", "version": version, "extensions": ["binary_tensor_data"]}
    assert server.client.get("/v2").json() == expected
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel).ServerMetadata(
            grpc_predict_v2_pb2.ServerMetadataRequest(), timeout=10)
    assert json_format.MessageToDict(answer) == expected


def test_warmup_defaults_to_three_rounds_of_batch_sizes_1_and_32(server):
    """The settings' defaults (DIPTYCH_WARMUP_ROUNDS=3, DIPTYCH_MAX_BATCH_SIZE=32), as the
    open server logs them; tests/test_claims_models.py sets other values."""
    log = server.log.read_text()
    for kind in ("classifier", "generator"):
        model = served(server, kind)
        assert f"{kind} {model['name']}:{model['version']} warm-up: 6 model calls, batch sizes 1, 32" in log
