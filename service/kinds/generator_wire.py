"""The generator on the wire: POST /generate and /interpolate, diptych.v1 Generate,
`python -m service.batch generate`, and its playground panel. Each decodes its request,
calls the `Generator` the engine hands it, and encodes the images (PNGs, a grid or a strip)."""

from __future__ import annotations

import base64
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from proto.diptych.v1 import diptych_pb2 as pb
from service.batch.generate import Generate
from service.core import ValidationError
from service.core.images import encode_pngs_off_loop, tile
from service.grpc.diptych import model_ref as grpc_model_ref
from service.http import api, schemas
from service.http.endpoints import BINARY, INFERENCE_ERRORS, Endpoint, Operation
from service.http.errors import errors

from .generator import Generation, Generator
from .wire import GrpcMethod, Panel, Wire

FORMATS = frozenset(pb.Format.values())


@errors
async def generate(request: Request) -> Response:
    body = await schemas.GenerateRequest.parse(request)
    body.check_format()
    generator = api.engine().get(Generator, api.model_of(request, body.model))
    return await generated(await generator.generate(body.count, body.seed, body.class_, body.latents, body.psi),
                           body.format)


@errors
async def interpolate(request: Request) -> Response:
    body = await schemas.InterpolateRequest.parse(request)
    generator = api.engine().get(Generator, api.model_of(request, body.model))
    return await generated(await generator.interpolate(body.seeds, body.latents, body.steps, body.class_, body.psi),
                           "strip")


async def generated(result: Generation, form: str) -> Response:
    """`form`: json (base64 PNGs and latents), grid (one PNG), strip (one PNG row); png is a grid of one.
    The PNGs are encoded off the event loop, which HTTP and gRPC share."""
    if form == "json":
        images = [
            schemas.GeneratedImage(png=base64.b64encode(png).decode(), class_id=int(class_id), class_=name,
                                   latent=latent.tolist())
            for png, class_id, name, latent in zip(await encode_pngs_off_loop(result.images), result.class_ids,
                                                   result.class_names, result.latents)
        ]
        body = schemas.GenerateResponse(model=api.model_ref(result.model), seed=result.seed, images=images)
        return api.json_response(body, result.model)
    grid = tile(result.images, columns=len(result.images) if form == "strip" else None)
    seed = {} if result.seed is None else {"X-Seed": str(result.seed)}
    (png,) = await encode_pngs_off_loop([grid])
    return Response(png, media_type="image/png", headers={**api.model_headers(result.model), **seed})


async def generate_grpc(engine, request: pb.GenerateRequest) -> pb.GenerateResponse:
    if request.format not in FORMATS:  # proto3 keeps an unknown enum value: refuse it, not PNG
        raise ValidationError("format", f"unknown format {request.format}: use FORMAT_PNG or FORMAT_GRID")
    generator = engine.get(Generator, request.model or None)
    return await generated_pb(await generator.generate(*generation_arguments(request)), request.format)


def generation_arguments(request: pb.GenerateRequest) -> tuple:
    """(count, seed, class, latents, psi) as `Generator.generate` takes them; absent fields are None."""
    present = request.WhichOneof("class")
    return (
        request.count if request.HasField("count") else None,
        request.seed if request.HasField("seed") else None,
        getattr(request, present) if present else None,
        [list(latent.values) for latent in request.latents] or None,
        request.psi if request.HasField("psi") else None,
    )


async def generated_pb(result: Generation, form: pb.Format) -> pb.GenerateResponse:
    """Each image's PNG, or one grid of them; encoded off the event loop, as over HTTP."""
    if form == pb.FORMAT_GRID:
        (grid,) = await encode_pngs_off_loop([tile(result.images)])
        pngs = [b""] * len(result.images)
    else:
        grid, pngs = b"", await encode_pngs_off_loop(result.images)
    images = [
        pb.GeneratedImage(png=png, class_id=int(class_id), class_name=name or "", latent=pb.Latent(values=latent))
        for png, class_id, name, latent in zip(pngs, result.class_ids, result.class_names, result.latents)
    ]
    return pb.GenerateResponse(model=grpc_model_ref(result.model), seed=result.seed, images=images, grid=grid)


PANELS = Path(__file__).with_name("panels")

WIRE = Wire(
    routes=(
        Endpoint("POST", "/generate", generate, doc=Operation(
            "Images from a seed or explicit latents: one PNG, a PNG grid, or JSON (base64 PNGs and latents).",
            ok={"application/json": schemas.GenerateResponse, "image/png": BINARY}, errors=INFERENCE_ERRORS,
            client_name="generate", body={"application/json": schemas.GenerateRequest})),
        Endpoint("POST", "/interpolate", interpolate, doc=Operation(
            "A PNG strip walking from one latent (or seed) to another in `steps` images.",
            ok={"image/png": BINARY}, errors=INFERENCE_ERRORS, client_name="interpolate",
            body={"application/json": schemas.InterpolateRequest})),
    ),
    grpc=(GrpcMethod("Generate", pb.GenerateRequest, pb.GenerateResponse, generate_grpc),),
    jobs=(Generate,),
    panel=Panel.files(PANELS / "generator.html", PANELS / "generator.js"),
)
