"""The BentoML service: `bentoml serve service.service:Diptych`.

BentoML runs the worker, its lifecycle, health, metrics and the API explorer; diptych's HTTP
routes are one app of ours mounted into it (`service.http`), so no BentoML IO type stands
between a request and the engine. Models load and warm up in the background: /livez answers
at once, /readyz once both are warm. The gRPC APIs (diptych.v1, TF Serving, Open Inference
Protocol) are served from this worker too, on `grpc_port`, by `service.grpc`: they call the
same engine, models and batches.
"""

from __future__ import annotations

import os

import bentoml

from . import http, logs
from .core import Engine, Settings
from .core.control import SharedControl
from .core.promotion import warn_if_several_workers
from .kinds import registered

settings = Settings.load()
KINDS = registered(settings.kind_modules)  # the shipped kinds and kind_modules'


# Both off by default: measured per HTTP request, the access log costs ~0.3 ms of CPU and
# OpenTelemetry's middleware ~0.8 ms, though it records nothing at BentoML's default sample
# rate of 0; the rest of the front end ~1.2 ms (docs/serving.md, "Where an HTTP request's
# CPU goes"). With tracing off, no URL enters that middleware.
@bentoml.service(name="diptych", traffic={"timeout": settings.timeout_s + 10},
                 logging={"access": {"enabled": settings.access_log}},
                 tracing={} if settings.tracing else {"excluded_urls": [".*"]})
class Diptych:
    """Classify images and generate them, with one model each."""

    def __init__(self) -> None:
        logs.configure(settings.log_format)  # here: BentoML has set up the worker's log handlers
        self.engine = Engine(settings, KINDS, SharedControl.of_supervisor(), os.environ.get("DIPTYCH_CONFIG"))
        warn_if_several_workers(self.engine.manager.repository.configs, bentoml_workers())
        self.engine.start()
        self.grpc = None  # a service.grpc.GrpcServer once started

    def __is_ready__(self) -> bool:
        return self.engine.ready

    def __is_alive__(self) -> bool:
        return self.engine.alive

    @bentoml.on_startup
    async def serve_grpc(self) -> None:
        if settings.grpc_port:
            # here, not above: it loads TensorFlow, which the supervisor never needs
            from .grpc.server import GrpcServer

            self.grpc = GrpcServer(self.engine, settings, KINDS.values())
            await self.grpc.start()

    @bentoml.on_shutdown
    async def close(self) -> None:
        """gRPC calls in flight finish first (up to `timeout_s`); then the batchers stop."""
        if self.grpc is not None:
            await self.grpc.stop(settings.timeout_s)
        self.engine.close()


def bentoml_workers() -> object:
    """This service's `workers` as BentoML's configuration says (BENTOML_CONFIG_OVERRIDES, where
    deploy/image puts DIPTYCH_WORKERS): a number, "cpu_count", or None where it is not said."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.config.get().get("services", {}).get(Diptych.name, {}).get("workers")


ROUTES = http.routes_for(KINDS.values())
Diptych.add_asgi_middleware(http.Guard, routes=ROUTES, max_body_bytes=settings.max_body_bytes)
Diptych.mount_asgi_app(ROUTES.app, path="/")
