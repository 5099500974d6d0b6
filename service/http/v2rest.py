"""The Open Inference Protocol (KServe V2) over REST: `/v2/...`. Only the wire format lives
here (JSON tensors, and Triton's binary tensor data extension); the data plane, shared with
the gRPC adapter, is `service.v2`."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import v2
from ..core import UnsupportedMediaType, ValidationError
from ..core.validation import decimal, json_document
from .api import engine
from .errors import errors
from .schemas import V2InferRequest


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
async def infer(request: Request) -> Response:
    parsed, binary = v2_request(await request.body(), request.headers.get("inference-header-content-length"),
                                **request.path_params)
    return v2_response(await v2.infer(engine(), parsed), binary)


@errors
async def model(request: Request) -> Response:
    return JSONResponse(v2.model_metadata(engine(), **request.path_params))


def health(key: str, value: bool, **more: str) -> Response:
    """The protocol's health answers: 200 for true, a 4xx for false."""
    return JSONResponse({**more, key: value}, status_code=200 if value else 400)


async def live(request: Request) -> Response:
    return health("live", engine().alive)


async def ready(request: Request) -> Response:
    return health("ready", engine().ready)


async def model_ready(request: Request) -> Response:
    return health("ready", v2.model_ready(engine(), **request.path_params), name=request.path_params["name"])


async def server(request: Request) -> Response:
    return JSONResponse(v2.server_metadata())


# -- the model repository extension (Triton's extension_model_repository) --------------------


@errors
async def repository_index(request: Request) -> Response:
    body = await _json_object(request, changes=False)
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise ValidationError("ready", "true or false")
    return JSONResponse(v2.repository_index(engine(), ready))


@errors
async def repository_load(request: Request) -> Response:
    await v2.repository_load(engine(), request.path_params["name"], _parameters(await _json_object(request)))
    return JSONResponse({})


@errors
async def repository_unload(request: Request) -> Response:
    parameters = _parameters(await _json_object(request))
    await engine().unload_model(request.path_params["name"], v2.repository_version(parameters))
    return JSONResponse({})


async def _json_object(request: Request, changes: bool = True) -> dict[str, Any]:
    """A repository route's body: a JSON object, declared `application/json`. A form or text
    body, or one of no declared type without an Authorization header on a route that changes
    what is served, is what a web page of another site can send without a CORS preflight: 415.
    (tritonclient declares no type, and sends the admin key.)"""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json" and (media or changes and "authorization" not in request.headers):
        raise UnsupportedMediaType("content-type", f"{media or 'none given'}: send the body as application/json "
                                                   "(this route takes no form or text bodies)")
    return _object(await request.body())


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ValidationError("parameters", "an object of load parameters")
    return parameters


def _object(body: bytes) -> dict[str, Any]:
    """A JSON object body; an empty body is an empty object, as Triton takes it."""
    parsed = json_document(body or b"{}")
    if not isinstance(parsed, dict):
        raise ValidationError("body", "send a JSON object")
    return parsed
