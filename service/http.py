"""HTTP side of the BentoML service: request/response schemas, the one error mapping,
and the guard middleware (API keys, body size, admission) in front of the routes.

Bodies are parsed by pydantic into the schemas below (which are also the OpenAPI),
then handed to the core `Engine`; every `ServiceError` becomes a JSON error body here.
Parse errors keep BentoML's shape, `{"error": ..., "detail": [{"loc", "msg", "type"}]}`,
and the core's errors use the same one. The Open Inference Protocol's REST routes
(`/v2/...`) live here too, beside `GET /models`; their data plane is `service.v2`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
import numpy as np
import pydantic
from _bentoml_sdk import IODescriptor
from bentoml.validators import ContentType
from pydantic import ConfigDict, Field, WithJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import v2
from .core import (
    DeadlineExceeded,
    Engine,
    LimitExceeded,
    ModelInfo,
    NotFound,
    ServiceError,
    Unauthenticated,
    Unavailable,
    ValidationError,
)
from .core.images import encode_png, tile
from .core.metrics import metrics
from .core.validation import decimal
from .kinds import Classification, Generation

# -- schemas -----------------------------------------------------------------------------


class Body(IODescriptor):
    """A strict JSON body: exact types, no unknown fields, never empty."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, val_json_bytes="base64")

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> Body:
        try:
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                return await cls.from_form(request)
            body = await request.body()
            if not body.strip():
                raise _parse_error(cls, "body", "empty_body", "the request body is empty: send a JSON object")
            return cls.model_validate_json(body)
        except pydantic.ValidationError:
            metrics().rejected.labels(reason="invalid_input", protocol="http").inc()
            raise

    @classmethod
    async def from_form(cls, request: Request) -> Body:
        raise _parse_error(cls, "body", "unsupported_media_type", "send application/json")


def quiet_invalid_bodies(record: logging.LogRecord) -> bool:
    """A log filter: BentoML logs every body that fails to parse at ERROR with a traceback;
    it is the client's mistake, answered 400 with the reason and counted in
    `diptych_requests_rejected_total`, so it becomes one INFO line (below BentoML's level)."""
    if record.exc_info and isinstance(record.exc_info[1], pydantic.ValidationError):
        record.levelno, record.levelname = logging.INFO, "INFO"
        path = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg, record.args = "400 on %s: %s", (path, record.exc_info[1].title)
        record.exc_info = record.exc_text = None
    return True


# BentoML's OpenAPI keeps the first member of a union only: spell these schemas out.
Base64 = Annotated[bytes, WithJsonSchema({"type": "string", "format": "byte"})]
Seed = Annotated[int, Field(description="0 to 2**32-1; the same seed gives the same images")]
ClassName = Annotated[int | str, WithJsonSchema({"oneOf": [{"type": "integer"}, {"type": "string"}]})]
Class = Annotated[ClassName | None, Field(alias="class", description="a class name, or its id (int or digit string)")]
LatentRows = Annotated[list[list[float]], Field(description="one row of latent_dim finite numbers per image")]


class ClassifyRequest(Body):
    """JSON form; the same fields also come as multipart/form-data (files in `images`)."""

    images: list[Base64] = Field(description="base64-encoded image files (JPEG, PNG, GIF, BMP, WebP, TIFF, ...)")
    top_k: int = Field(5, description="labels per image, best first")

    @classmethod
    async def from_form(cls, request: Request) -> ClassifyRequest:
        try:
            form = await request.form(max_files=1024, max_fields=16)
        except Exception as error:  # python-multipart's and Starlette's parse errors
            raise _parse_error(cls, "body", "multipart_invalid", f"malformed multipart body: {error}") from None
        images: list[bytes] = []
        fields: dict[str, Any] = {}
        for name, value in form.multi_items():
            if name == "images" and isinstance(value, UploadFile):
                images.append(await value.read())
            elif name == "images":
                raise _parse_error(cls, "images", "file_expected", "each `images` part must be a file upload")
            elif name == "top_k" and isinstance(value, str) and (number := decimal(value)) is not None:
                fields["top_k"] = number
            else:
                fields[name] = value  # pydantic names the problem: unknown field or wrong type
        return cls.model_validate({"images": images, **fields})


class GenerateRequest(Body):
    count: int | None = Field(None, description="number of images (default 1, or the number of latents)")
    seed: Seed | None = Field(None, description="draw the latents from this seed (random when neither is given)")
    class_: Class = None
    latents: LatentRows | None = Field(None, description="explicit latents instead of a seed")
    format: Literal["png", "grid", "json"] = Field(
        "png", description="png: one image/png (count 1); grid: one PNG of all images; json: base64 PNGs + latents"
    )

    def check_format(self) -> None:
        """Refuse before generating what the format cannot return."""
        wanted = len(self.latents) if self.latents is not None else self.count or 1
        if self.format == "png" and wanted > 1:
            raise ValidationError("format", "png returns one image: use grid or json for more")


class InterpolateRequest(Body):
    seeds: list[Seed] | None = Field(None, description="two seeds: the end points")
    latents: LatentRows | None = Field(None, description="two latents: the end points (instead of seeds)")
    steps: int = Field(8, description="images in the strip, end points included")
    class_: Class = None


PNG = Annotated[Path, ContentType("image/png")]  # OpenAPI type of the PNG responses


class ModelRef(pydantic.BaseModel):
    name: str
    version: str
    runtime: str = Field(description="what runs the model: litert or tensorflow")


class Label(pydantic.BaseModel):
    label: str
    score: float


class ClassifyResponse(pydantic.BaseModel):
    model: ModelRef
    predictions: list[list[Label]] = Field(description="per image, in request order: top_k labels, best first")


class GeneratedImage(pydantic.BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    png: str = Field(description="base64 PNG (standard alphabet, padded)")
    class_id: int
    class_: str | None = Field(alias="class", serialization_alias="class")
    latent: list[float]


class GenerateResponse(pydantic.BaseModel):
    model: ModelRef
    seed: int | None = Field(description="the seed the latents were drawn from (null when latents were given)")
    images: list[GeneratedImage]


# -- responses, and the one error mapping ---------------------------------------------------

def classified(result: Classification) -> Response:
    predictions = [[Label(label=label, score=score) for label, score in row] for row in result.predictions]
    return json_response(ClassifyResponse(model=model_ref(result.model), predictions=predictions), result.model)


def generated(result: Generation, form: str) -> Response:
    """`form`: json (base64 PNGs and latents), grid (one PNG), strip (one PNG row); png is a grid of one."""
    if form == "json":
        images = [
            GeneratedImage(png=base64.b64encode(encode_png(image)).decode(), class_id=int(class_id), class_=name, latent=latent.tolist())
            for image, class_id, name, latent in zip(result.images, result.class_ids, result.class_names, result.latents)
        ]
        body = GenerateResponse(model=model_ref(result.model), seed=result.seed, images=images)
        return json_response(body, result.model)
    grid = tile(result.images, columns=len(result.images) if form == "strip" else None)
    seed = {} if result.seed is None else {"X-Seed": str(result.seed)}
    return Response(encode_png(grid), media_type="image/png", headers={**model_headers(result.model), **seed})


def model_ref(info: ModelInfo) -> ModelRef:
    return ModelRef(name=info.name, version=info.version, runtime=info.runtime)


def model_headers(info: ModelInfo) -> dict[str, str]:
    return {"X-Model-Name": info.name, "X-Model-Version": info.version, "X-Model-Runtime": info.runtime}


def json_response(body: pydantic.BaseModel, info: ModelInfo) -> Response:
    return Response(body.model_dump_json(by_alias=True), media_type="application/json", headers=model_headers(info))


STATUS = {  # most specific first
    LimitExceeded: 413,
    ValidationError: 400,
    NotFound: 404,
    Unauthenticated: 401,
    Unavailable: 503,
    DeadlineExceeded: 504,
}


def error_response(error: ServiceError) -> JSONResponse:
    """Count the rejection and render it: the only place a core error becomes HTTP."""
    metrics().rejected.labels(reason=error.reason, protocol="http").inc()
    status = next(code for kind, code in STATUS.items() if isinstance(error, kind))
    headers = {}
    if isinstance(error, Unavailable):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    loc = [part if (index := decimal(part)) is None else index for part in re.findall(r"[^.\[\]]+", error.field or "")]
    detail = {"loc": loc, "msg": error.problem, "type": error.reason}
    return JSONResponse({"error": str(error), "detail": [detail]}, status_code=status, headers=headers)


def errors(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """API method decorator: core errors → HTTP error responses."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(*args, **kwargs)
        except ServiceError as error:
            return error_response(error)

    return wrapper


def _parse_error(model: type, field: str, kind: str, message: str) -> pydantic.ValidationError:
    return pydantic.ValidationError.from_exception_data(
        model.__name__, [InitErrorDetails(type=PydanticCustomError(kind, message), loc=(field,), input=None)]
    )


# -- the guard in front of every route -----------------------------------------------------

OPEN_PATHS = ("/livez", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics", "/", "/docs.json",
              "/schema.json")
OPEN_PREFIXES = ("/static_content/", "/assets/")
ROUTE = re.compile(r"/(classify|generate|interpolate|models(/[^/]+)?"
                   r"|v2(/models/[^/]+(/versions/[^/]+)?(/ready|/infer)?)?)")


def engine() -> Engine:
    return bentoml.get_current_service().engine


CLIENT_CLOSED = 499  # the metrics' code for a client that left mid-body (nginx's convention)


class ClientGone(Exception):
    """The client disconnected before its whole request body arrived."""


class Guard:
    """ASGI middleware: API keys on everything but health, metrics and docs; for inference
    (POST) a request slot is taken before the body is read, and the body is size-checked."""

    def __init__(self, app: Callable, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def answer(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            core = engine()
            core.keys.check(_header(scope, b"authorization"))
            if scope["method"] != "POST":
                return await self.app(scope, receive, answer)
            with core.admit():
                body = await self._read_body(scope, receive)
                await self.app(scope, _replay(body, receive), answer)
        except ServiceError as error:
            await error_response(error)(scope, receive, answer)
        except ClientGone:  # a request cut off mid-body is never run: nobody waits for its answer
            status = CLIENT_CLOSED
        except asyncio.CancelledError:  # BentoML's traffic timeout (timeout_s + 10 s) answers 504 itself
            status = 504
            raise
        finally:
            method = f"{scope['method']} {route(path)}"
            metrics().requests.labels(protocol="http", method=method, code=str(status)).inc()
            metrics().request_seconds.labels(protocol="http", method=method).observe(time.perf_counter() - start)

    async def _read_body(self, scope: dict, receive: Callable) -> bytes:
        too_large = LimitExceeded("body", f"larger than {self.max_body_bytes} bytes")
        declared = decimal(_header(scope, b"content-length") or "")
        if declared is not None and declared > self.max_body_bytes:
            raise too_large
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                raise too_large
            more = message.get("more_body", False)
        return b"".join(chunks)


def route(path: str) -> str:
    """A bounded metrics label for a path: names and versions become {name} and {version}."""
    if not ROUTE.fullmatch(path):
        return "other"
    path = re.sub(r"^(/v2)?/models/[^/]+", r"\1/models/{name}", path)
    return re.sub(r"/versions/[^/]+", "/versions/{version}", path)


def _header(scope: dict, name: bytes) -> str | None:
    return next((value.decode("latin-1") for key, value in scope["headers"] if key == name), None)


def _replay(body: bytes, receive: Callable) -> Callable:
    """Hand the already-read body to the app once, then pass through (disconnects)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


# -- GET /models (BentoML API routes are POST-only) -----------------------------------------


def card(info: ModelInfo) -> dict[str, Any]:
    return {"name": info.name, "version": info.version, "kind": info.kind, "source": info.source,
            "runtime": info.runtime, "litert": info.litert, "card": info.card.to_dict()}


@errors
async def list_models(request: Request) -> Response:
    return JSONResponse({"models": [card(info) for info in engine().models()]})


@errors
async def get_model(request: Request) -> Response:
    return JSONResponse(card(engine().find(request.path_params["name"]).info))


# -- the Open Inference Protocol (KServe V2) over REST: service.v2 is its data plane --------


class V2Tensor(pydantic.BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] = {}
    data: Any = None  # row-major values, flat or nested; absent when sent as binary data


class V2Output(pydantic.BaseModel):
    name: str
    parameters: dict[str, Any] = {}


class V2InferRequest(pydantic.BaseModel):
    id: str = ""
    parameters: dict[str, Any] = {}
    inputs: list[V2Tensor]
    outputs: list[V2Output] = []


def v2_request(
    body: bytes, header_length: str | None, name: str, version: str = ""
) -> tuple[v2.Request, Callable[[str], bool]]:
    """A JSON request, or JSON followed by binary tensor data (Triton's extension, which
    tritonclient uses by default); also says which outputs go back as binary data."""
    if (split := decimal(header_length or "")) is None:
        split = len(body)
    try:
        head = V2InferRequest.model_validate_json(body[:split])
    except pydantic.ValidationError as error:
        problem = error.errors()[0]
        field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"])
        raise ValidationError(field.lstrip(".") or "body", problem["msg"]) from None
    binary, inputs = body[split:], {}
    for i, tensor in enumerate(head.inputs):
        if (size := tensor.parameters.get("binary_data_size")) is not None:
            if not isinstance(size, int) or not 0 <= size <= len(binary):
                raise ValidationError(f"inputs[{i}].parameters.binary_data_size", "more than the binary data left")
            data, binary = binary[:size], binary[size:]
        elif tensor.datatype == "BYTES":
            data = _text_bytes(f"inputs[{i}].data", tensor.data, tensor.parameters.get("content_type") == "base64")
        else:
            data = tensor.data
        inputs[tensor.name] = v2.tensor(f"inputs[{i}]", tensor.datatype, tensor.shape, data)
    if binary:
        raise ValidationError("body", f"{len(binary)} bytes of binary data belong to no input")
    everything = bool(head.parameters.get("binary_data_output", False))
    chosen = {out.name: bool(out.parameters.get("binary_data", everything)) for out in head.outputs}
    request = v2.Request(name, version, head.id, inputs, list(chosen))
    return request, lambda output: chosen.get(output, everything)


def _text_bytes(field: str, data: Any, base64_encoded: bool) -> list[bytes]:
    """JSON carries BYTES as strings: text, or base64 (`"parameters": {"content_type": "base64"}`)."""
    flat = np.array([] if data is None else data, dtype=object).ravel().tolist()
    if not all(isinstance(item, str) for item in flat):
        raise ValidationError(field, "BYTES data must be strings (base64 with content_type base64)")
    try:
        return [base64.b64decode(item, validate=True) if base64_encoded else item.encode() for item in flat]
    except ValueError:
        raise ValidationError(field, "not valid base64") from None


def v2_response(result: v2.Response, binary: Callable[[str], bool]) -> Response:
    outputs, chunks = [], []
    for name, array in result.outputs.items():
        tensor = {"name": name, "datatype": v2.datatype(array), "shape": list(array.shape)}
        if binary(name):
            chunks.append(v2.raw(array))
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = v2.values(array)
        outputs.append(tensor)
    head = json.dumps({"model_name": result.model, "model_version": result.version, "id": result.id,
                       "outputs": outputs}).encode()
    headers = {"X-Model-Name": result.model, "X-Model-Version": result.version}
    if not chunks:
        return Response(head, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(len(head))
    return Response(head + b"".join(chunks), media_type="application/octet-stream", headers=headers)


@errors
async def v2_infer(request: Request) -> Response:
    parsed, binary = v2_request(await request.body(), request.headers.get("inference-header-content-length"),
                                **request.path_params)
    return v2_response(await v2.infer(engine(), parsed), binary)


@errors
async def v2_model(request: Request) -> Response:
    return JSONResponse(v2.model_metadata(engine(), **request.path_params))


def v2_health(key: str, value: bool, **more: str) -> Response:
    """The protocol's health answers: 200 for true, a 4xx for false."""
    return JSONResponse({**more, key: value}, status_code=200 if value else 400)


async def v2_live(request: Request) -> Response:
    return v2_health("live", engine().alive)


async def v2_ready(request: Request) -> Response:
    return v2_health("ready", engine().ready)


async def v2_model_ready(request: Request) -> Response:
    return v2_health("ready", v2.model_ready(engine(), **request.path_params), name=request.path_params["name"])


async def v2_server(request: Request) -> Response:
    return JSONResponse(v2.server_metadata())


V2_ROUTES = [
    Route("/v2", v2_server),
    Route("/v2/health/live", v2_live),
    Route("/v2/health/ready", v2_ready),
    *(Route(f"/v2/models/{{name}}{version}{suffix}", endpoint, methods=[method])
      for version in ("", "/versions/{version}")
      for suffix, endpoint, method in (("", v2_model, "GET"), ("/ready", v2_model_ready, "GET"),
                                       ("/infer", v2_infer, "POST"))),
]
models_app = Starlette(routes=[Route("/models", list_models), Route("/models/{name}", get_model), *V2_ROUTES])
