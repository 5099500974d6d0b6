"""diptych's own HTTP API: /classify, /generate, /interpolate and GET /models. Each route
parses its body (`schemas`), calls the engine, and renders the result; `errors` answers
whatever the parsing or the engine refused."""

from __future__ import annotations

import base64
from typing import Any

import bentoml
import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core import Engine, ModelInfo
from ..core.images import encode_png, tile
from ..kinds import Classification, Classifier, Generation, Generator
from . import schemas
from .errors import errors


def engine() -> Engine:
    """The engine of this worker's service instance (created after the routes are)."""
    return bentoml.get_current_service().engine


@errors
async def classify(request: Request) -> Response:
    body = await schemas.ClassifyRequest.parse(request)
    return classified(await engine().get(Classifier).classify(body.images, body.top_k))


@errors
async def generate(request: Request) -> Response:
    body = await schemas.GenerateRequest.parse(request)
    body.check_format()
    result = await engine().get(Generator).generate(body.count, body.seed, body.class_, body.latents)
    return generated(result, body.format)


@errors
async def interpolate(request: Request) -> Response:
    body = await schemas.InterpolateRequest.parse(request)
    result = await engine().get(Generator).interpolate(body.seeds, body.latents, body.steps, body.class_)
    return generated(result, "strip")


@errors
async def list_models(request: Request) -> Response:
    return JSONResponse({"models": [card(info) for info in engine().models()]})


@errors
async def get_model(request: Request) -> Response:
    return JSONResponse(card(engine().find(request.path_params["name"]).info))


# -- responses ----------------------------------------------------------------------------


def classified(result: Classification) -> Response:
    predictions = [[schemas.Label(label=label, score=score) for label, score in row] for row in result.predictions]
    return json_response(schemas.ClassifyResponse(model=model_ref(result.model), predictions=predictions), result.model)


def generated(result: Generation, form: str) -> Response:
    """`form`: json (base64 PNGs and latents), grid (one PNG), strip (one PNG row); png is a grid of one."""
    if form == "json":
        images = [
            schemas.GeneratedImage(png=base64.b64encode(encode_png(image)).decode(), class_id=int(class_id),
                                   class_=name, latent=latent.tolist())
            for image, class_id, name, latent in zip(result.images, result.class_ids, result.class_names,
                                                     result.latents)
        ]
        body = schemas.GenerateResponse(model=model_ref(result.model), seed=result.seed, images=images)
        return json_response(body, result.model)
    grid = tile(result.images, columns=len(result.images) if form == "strip" else None)
    seed = {} if result.seed is None else {"X-Seed": str(result.seed)}
    return Response(encode_png(grid), media_type="image/png", headers={**model_headers(result.model), **seed})


def model_ref(info: ModelInfo) -> schemas.ModelRef:
    return schemas.ModelRef(name=info.name, version=info.version, runtime=info.runtime)


def model_headers(info: ModelInfo) -> dict[str, str]:
    return {"X-Model-Name": info.name, "X-Model-Version": info.version, "X-Model-Runtime": info.runtime}


def json_response(body: pydantic.BaseModel, info: ModelInfo) -> Response:
    return Response(body.model_dump_json(by_alias=True), media_type="application/json", headers=model_headers(info))


def card(info: ModelInfo) -> dict[str, Any]:
    return {"name": info.name, "version": info.version, "kind": info.kind, "source": info.source,
            "runtime": info.runtime, "litert": info.litert, "card": info.card.to_dict()}
