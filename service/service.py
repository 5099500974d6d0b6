"""The BentoML service: `bentoml serve service.service:Diptych`.

A thin adapter: each API hands the parsed request to the core `Engine` and the result to
`http` to become a response; `http.errors` maps the core's errors to statuses, and the
`http.Guard` middleware checks API keys, admission and body size before any parsing.
Models load and warm up in the background: /livez answers at once, /readyz once both are warm.
The gRPC APIs (diptych.v1, TF Serving, Open Inference Protocol) are served from this worker
too, on `grpc_port`, by `service.grpc`: they call the same engine, models and batches.
"""

from __future__ import annotations

import logging
import os

import bentoml

from . import http, openapi
from .core import Engine, Settings
from .core.control import SharedControl
from .kinds import KINDS, Classifier, Generator

settings = Settings.load()
# BentoML's handlers sit on the root logger at WARNING: without this, what the core logs at
# INFO (each model loaded, and the runtime chosen for it and why; the gRPC port) is dropped.
logging.getLogger("diptych").setLevel(logging.INFO)
logging.getLogger("bentoml._internal.server.http_app").addFilter(http.quiet_invalid_bodies)


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
        self.engine = Engine(settings, KINDS, SharedControl.of_supervisor(), os.environ.get("DIPTYCH_CONFIG"))
        self.engine.start()
        self.grpc = None  # a service.grpc.GrpcServer once started

    def __is_ready__(self) -> bool:
        return self.engine.ready

    def __is_alive__(self) -> bool:
        return self.engine.alive

    @bentoml.on_startup
    async def serve_grpc(self) -> None:
        if settings.grpc_port:
            from .grpc import GrpcServer  # here, not above: it loads TensorFlow, which the supervisor never needs

            self.grpc = GrpcServer(self.engine, settings)
            await self.grpc.start()

    @bentoml.on_shutdown
    async def close(self) -> None:
        """gRPC calls in flight finish first (up to `timeout_s`); then the batchers stop."""
        if self.grpc is not None:
            await self.grpc.stop(settings.timeout_s)
        self.engine.close()

    @bentoml.api(route="/classify")
    @http.errors
    async def classify(self, request: http.ClassifyRequest, /) -> http.ClassifyResponse:
        """Top-k labels for each image (JSON with base64 images, or multipart files in `images`)."""
        return http.classified(await self.engine.get(Classifier).classify(request.images, request.top_k))

    @bentoml.api(route="/generate")
    @http.errors
    async def generate(self, request: http.GenerateRequest, /) -> http.GenerateResponse:
        """Images from a seed or explicit latents: one PNG, a PNG grid, or JSON (base64 PNGs and latents)."""
        request.check_format()
        generator = self.engine.get(Generator)
        result = await generator.generate(request.count, request.seed, request.class_, request.latents)
        return http.generated(result, request.format)

    @bentoml.api(route="/interpolate")
    @http.errors
    async def interpolate(self, request: http.InterpolateRequest, /) -> http.PNG:
        """A PNG strip walking from one latent (or seed) to another in `steps` images."""
        generator = self.engine.get(Generator)
        result = await generator.interpolate(request.seeds, request.latents, request.steps, request.class_)
        return http.generated(result, "strip")


Diptych.add_asgi_middleware(http.Guard, max_body_bytes=settings.max_body_bytes)
Diptych.mount_asgi_app(http.models_app, path="/")
Diptych.mount_asgi_app(openapi.app(Diptych), path="/")  # /docs.json: the OpenAPI, as the service answers
