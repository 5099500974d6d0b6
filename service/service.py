"""The BentoML service: `bentoml serve service.service:Diptych`.

A thin adapter: each API converts the parsed request into an `Engine` call and the
result into a response; `http.errors` maps the core's errors to statuses. Models load
and warm up in the background: /livez answers at once, /readyz once both are warm.
"""

from __future__ import annotations

import bentoml

from . import http
from .core import Classification, Engine, Generation, Settings, ValidationError
from .core.images import encode_png, tile

settings = Settings.load()


@bentoml.service(name="diptych", traffic={"timeout": settings.timeout_s + 10})
class Diptych:
    """Classify images and generate them, with one model each."""

    def __init__(self) -> None:
        self.engine = Engine(settings)
        self.engine.start()

    def __is_ready__(self) -> bool:
        return self.engine.ready

    def __is_alive__(self) -> bool:
        return self.engine.alive

    @bentoml.on_shutdown
    def close(self) -> None:
        self.engine.close()

    @bentoml.api(route="/classify")
    @http.errors
    async def classify(self, request: http.ClassifyRequest, /) -> http.ClassifyResponse:
        """Top-k labels for each image (JSON with base64 images, or multipart files in `images`)."""
        result = await self.engine.classify(request.images, request.top_k)
        predictions = [[http.Label(label=label, score=score) for label, score in row] for row in result.predictions]
        return http.json_response(http.ClassifyResponse(model=model_ref(result), predictions=predictions), result.model)

    @bentoml.api(route="/generate")
    @http.errors
    async def generate(self, request: http.GenerateRequest, /) -> http.GenerateResponse:
        """Images from a seed or explicit latents, as one PNG, a PNG grid, or JSON."""
        wanted = len(request.latents) if request.latents is not None else request.count or 1
        if request.format == "png" and wanted > 1:
            raise ValidationError("format", "png returns one image: use grid or json for more")
        result = await self.engine.generate(request.count, request.seed, request.class_, request.latents)
        if request.format == "json":
            images = [
                http.GeneratedImage(png=encode_png(image), class_id=int(class_id), class_=name, latent=latent.tolist())
                for image, class_id, name, latent in zip(result.images, result.class_ids, result.class_names, result.latents)
            ]
            return http.json_response(http.GenerateResponse(model=model_ref(result), seed=result.seed, images=images), result.model)
        seed = {} if result.seed is None else {"X-Seed": str(result.seed)}
        return http.png_response(encode_png(tile(result.images)), result.model, **seed)

    @bentoml.api(route="/interpolate")
    @http.errors
    async def interpolate(self, request: http.InterpolateRequest, /) -> http.PNG:
        """A PNG strip walking from one latent (or seed) to another in `steps` images."""
        result = await self.engine.interpolate(request.seeds, request.latents, request.steps, request.class_)
        return http.png_response(encode_png(tile(result.images, columns=len(result.images))), result.model)


def model_ref(result: Classification | Generation) -> http.ModelRef:
    return http.ModelRef(name=result.model.name, version=result.model.version)


Diptych.add_asgi_middleware(http.Guard, max_body_bytes=settings.max_body_bytes)
Diptych.mount_asgi_app(http.models_app, path="/")
