"""The gRPC server: diptych.v1, TF Serving's PredictionService and ModelService, and the Open
Inference Protocol on one port, with standard health checking and server reflection.

BentoML 1.4 serves no gRPC for new-style services, so this grpc.aio server runs inside
each BentoML worker, on the worker's event loop, and calls the worker's `Engine`: HTTP and
gRPC requests share the loaded models, the batches and the admission slots. With several
workers, each one binds the same port with SO_REUSEPORT and the kernel spreads the
connections. A request may be as large as an HTTP body (`max_body_bytes`); replies are not
limited, as on HTTP. Health reports NOT_SERVING until the models are warm, and again from
the start of a shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tensorflow_serving.apis import (
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

from proto.diptych.v1 import diptych_pb2
from proto.inference import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc

from ..core import Engine, Settings
from . import diptych
from .gate import Gate
from .inference import InferenceServicer
from .model_service import ModelServicer
from .tfserving import PredictionServicer

log = logging.getLogger("diptych")

MAX_CONNECTION_AGE_S = 300

SERVICES = (
    diptych_pb2.DESCRIPTOR.services_by_name["Diptych"].full_name,
    prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
)


class GrpcServer:
    def __init__(self, engine: Engine, settings: Settings, kinds: Iterable[type]) -> None:
        self.engine = engine
        self.address = f"{settings.grpc_host}:{settings.grpc_port}"
        self.server = grpc.aio.server(
            interceptors=[Gate(engine)],
            options=[("grpc.max_receive_message_length", settings.max_body_bytes), ("grpc.so_reuseport", 1),
                     # Clients reconnect (and re-resolve a headless Service) at least this often, so
                     # new pods get connections: GOAWAY, then calls in flight get a grace to finish.
                     ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_S * 1000),
                     ("grpc.max_connection_age_grace_ms", int(settings.timeout_s * 1000))],
        )
        self.health = health.aio.HealthServicer()
        self.server.add_generic_rpc_handlers((diptych.handlers(engine, kinds),))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(engine), self.server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(engine), self.server)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(engine), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self._watch: asyncio.Task | None = None

    async def start(self) -> None:
        """Bind (a port that cannot be bound fails the worker's start) and serve."""
        for service in ("", *SERVICES):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.add_insecure_port(self.address)
        await self.server.start()
        self._watch = asyncio.create_task(self._serving_when_ready())
        log.info("gRPC on %s: %s", self.address, ", ".join(SERVICES))

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls and let the calls in flight finish, for up to `grace_s`."""
        if self._watch is not None:
            self._watch.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)

    async def _serving_when_ready(self) -> None:
        while not self.engine.ready:
            await asyncio.sleep(0.1)
        for service in ("", *SERVICES):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
