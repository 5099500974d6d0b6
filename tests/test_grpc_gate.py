"""The gRPC gate on a real grpc.aio server (no models): which methods take one of the
engine's admission slots. Every method does, unless the gate lists it as open (health,
reflection) or as metadata; so a method added later is held to `max_concurrency` too."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import grpc
from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2

from proto.diptych.v1 import diptych_pb2
from service.core import Engine, Settings
from service.grpc.gate import Gate
from service.kinds import KINDS
from tests.conftest import free_port

Code = grpc.StatusCode
NEW_METHOD = "/diptych.v2.Diptych/Caption"  # on no list: what a future inference method looks like
# The Open Inference Protocol's stubs clash with tritonclient's in one process (tests/test_v2.py): read its .proto
V2 = Path(__file__).resolve().parents[1] / "proto" / "inference" / "grpc_predict_v2.proto"
SERVED = sorted(
    [f"/{service.full_name}/{method.name}"
     for service in (diptych_pb2.DESCRIPTOR.services_by_name["Diptych"],
                     prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
                     model_service_pb2.DESCRIPTOR.services_by_name["ModelService"])
     for method in service.methods]
    + [f"/inference.GRPCInferenceService/{name}" for name in re.findall(r"rpc (\w+)\(", V2.read_text())]
)
# Written out here, not read from the gate's tables, so moving a method there turns this red.
# Inference takes a slot; metadata and the load/unload API (an admin key, and a load outlasts
# requests) take none, nor do health, reflection and V2 liveness/readiness.
ADMITTED = [
    "/diptych.v1.Diptych/Classify",
    "/diptych.v1.Diptych/Feedback",  # as HTTP's POST /feedback
    "/diptych.v1.Diptych/Generate",
    "/inference.GRPCInferenceService/ModelInfer",
    "/tensorflow.serving.PredictionService/Classify",
    "/tensorflow.serving.PredictionService/MultiInference",
    "/tensorflow.serving.PredictionService/Predict",
    "/tensorflow.serving.PredictionService/Regress",
    NEW_METHOD,
]
UNADMITTED = [
    "/diptych.v1.Diptych/ListModels",
    "/diptych.v1.Diptych/LoadModel",
    "/diptych.v1.Diptych/UnloadModel",
    "/inference.GRPCInferenceService/ModelMetadata",
    "/inference.GRPCInferenceService/ModelReady",
    "/inference.GRPCInferenceService/RepositoryIndex",
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerMetadata",
    "/inference.GRPCInferenceService/ServerReady",
    "/tensorflow.serving.ModelService/GetModelStatus",
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
    "/tensorflow.serving.PredictionService/GetModelMetadata",
    "/grpc.health.v1.Health/Check",
]


async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"answered"


def handlers(methods: list[str]) -> list[grpc.GenericRpcHandler]:
    """One generic handler per service, each method answering raw bytes (no protobuf needed)."""
    services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for method in methods:
        service, name = method.strip("/").split("/")
        services.setdefault(service, {})[name] = grpc.unary_unary_rpc_method_handler(answer)
    return [grpc.method_handlers_generic_handler(service, table) for service, table in services.items()]


async def codes_while_the_slot_is_held(methods: list[str]) -> dict[str, Code]:
    """Serve `methods` behind the gate with one request slot, hold that slot, call each method."""
    engine = Engine(Settings(max_concurrency=1, model_control=True, store=False), KINDS)
    server = grpc.aio.server(interceptors=[Gate(engine)])
    server.add_generic_rpc_handlers(handlers(methods))
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    await server.start()
    codes = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with engine.admit():
                for method in methods:
                    try:
                        await channel.unary_unary(method)(b"", timeout=10)
                        codes[method] = Code.OK
                    except grpc.aio.AioRpcError as error:
                        codes[method] = error.code()
            assert await channel.unary_unary(NEW_METHOD)(b"", timeout=10) == b"answered"  # once the slot is free
    finally:
        await server.stop(None)
    return codes


def test_every_method_but_health_and_metadata_needs_a_slot():
    # every method the protos serve is classified above, and nothing else is
    assert sorted(set(ADMITTED + UNADMITTED) - {NEW_METHOD, "/grpc.health.v1.Health/Check"}) == SERVED
    codes = asyncio.run(codes_while_the_slot_is_held(ADMITTED + UNADMITTED))
    assert {method: codes[method] for method in ADMITTED} == dict.fromkeys(ADMITTED, Code.RESOURCE_EXHAUSTED)
    assert {method: codes[method] for method in UNADMITTED} == dict.fromkeys(UNADMITTED, Code.OK)
