"""The OpenAPI document at `/docs.json` (and the explorer at `/`): BentoML's, corrected to
what the service really answers, so that a client generated from it, or a fuzzer checking
responses against it (tests/test_fuzz.py, schemathesis), finds no surprises.

BentoML writes every API as JSON in, one media type out, with errors 400/404/500 whose
`detail` is a string. The service answers more than that: `/generate` returns a PNG by
default, nullable fields are nullable, `/classify` also takes multipart uploads, errors carry
a list of `{loc, msg, type}` and come as 400/401/413/503/504 (README, error table), and
`GET /models` and the Open Inference Protocol's REST routes are there too. The request and
response schemas are pydantic's own (the models in `http`), in OpenAPI 3.0 spelling.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import http

REF = "#/components/schemas/{model}"
PNG = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what was wrong, naming the field"},
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                            "description": "the field: names and list indices"},
                    "msg": {"type": "string"},
                    "type": {"type": "string", "description": "a short fixed reason, e.g. invalid_input"},
                },
            },
        },
    },
}
ERRORS = {  # the README's error table
    "400": "malformed body or field",
    "401": "missing or wrong API key (when keys are configured)",
    "404": "unknown model",
    "413": "body, image count or image pixels over the configured limits",
    "500": "a bug: never an answer to bad input",
    "503": "too many requests in flight, or the models are still loading (Retry-After)",
    "504": "no model result within timeout_s",
}
MULTIPART_CLASSIFY = {
    "type": "object",
    "required": ["images"],
    "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                   "top_k": {"type": "integer", "default": 5}},
}
MODEL_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "a model's name or kind: classifier, generator"}
ANY_OBJECT = {"type": "object", "additionalProperties": True}


def app(service: Any) -> Starlette:
    """The `/docs.json` route, mounted before BentoML's own (mounted apps come first)."""

    @functools.cache
    def spec() -> dict[str, Any]:
        return document(service.openapi_spec.asdict())

    async def docs(request: Request) -> JSONResponse:
        return JSONResponse(spec())

    return Starlette(routes=[Route("/docs.json", docs)])


def document(spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML's document `spec`, corrected (in place) and in OpenAPI 3.0 spelling."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR
    paths = spec["paths"]
    apis = {  # route: (request model, JSON response model or None, PNG response)
        "/classify": (http.ClassifyRequest, http.ClassifyResponse, False),
        "/generate": (http.GenerateRequest, http.GenerateResponse, True),
        "/interpolate": (http.InterpolateRequest, None, True),
    }
    for route, (request, response, png) in apis.items():
        operation = paths[route]["post"]
        content = {"application/json": {"schema": _schema(schemas, request)}}  # inline, as BentoML writes it
        if route == "/classify":
            content["multipart/form-data"] = {"schema": MULTIPART_CLASSIFY}
        operation["requestBody"] = {"required": True, "content": content}
        ok = {"application/json": {"schema": _component(schemas, response)}} if response else {}
        operation["responses"] = {"200": {"description": "Successful Response", "content": {**ok, **(PNG if png else {})}},
                                  **_errors("400", "401", "413", "500", "503", "504")}
    for path in ("/livez", "/readyz", "/healthz"):
        if path in paths:
            paths[path]["get"]["responses"]["503"] = {"description": "not alive, or not ready yet"}
    paths.update(_models(schemas))
    return _openapi30(spec)


def _models(schemas: dict[str, Any]) -> dict[str, Any]:
    """GET /models, GET /models/{name}, and the Open Inference Protocol's metadata and infer."""
    json_object = {"application/json": {"schema": ANY_OBJECT}}
    infer_response = {"application/json": {"schema": ANY_OBJECT},
                      "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return {
        "/models": {"get": {"description": "the loaded models' cards", "tags": ["Service APIs"],
                            "responses": {"200": {"description": "the models", "content": json_object},
                                          **_errors("401", "503")}}},
        "/models/{name}": {"get": {"description": "one model's card, by name or kind", "tags": ["Service APIs"],
                                   "parameters": [MODEL_NAME],
                                   "responses": {"200": {"description": "the model", "content": json_object},
                                                 **_errors("401", "404", "503")}}},
        "/v2/models/{name}": {"get": {"description": "Open Inference Protocol: model metadata", "tags": ["Service APIs"],
                                      "parameters": [MODEL_NAME],
                                      "responses": {"200": {"description": "the model's tensors", "content": json_object},
                                                    **_errors("401", "404", "503")}}},
        "/v2/models/{name}/infer": {"post": {
            "description": "Open Inference Protocol: run the model's serving_default signature (JSON tensors, "
                           "or JSON followed by binary tensor data: Inference-Header-Content-Length)",
            "tags": ["Service APIs"],
            "parameters": [MODEL_NAME],
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _schema(schemas, http.V2InferRequest)}}},
            "responses": {"200": {"description": "the outputs", "content": infer_response},
                          **_errors("400", "401", "404", "413", "500", "503", "504")},
        }},
    }


def _errors(*codes: str) -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}
    return {code: {"description": ERRORS[code], "content": error} for code in codes}


def _schema(schemas: dict[str, Any], model: type) -> dict[str, Any]:
    """A pydantic model's schema; the models it refers to go to the components."""
    schema = copy.deepcopy(model.model_json_schema(ref_template=REF, mode="serialization"))
    schema.pop("root_input", None)  # BentoML's marker, no JSON Schema
    schemas.update(schema.pop("$defs", {}))
    return schema


def _component(schemas: dict[str, Any], model: type) -> dict[str, str]:
    """A pydantic model's schema as a component; its $ref."""
    schemas[model.__name__] = _schema(schemas, model)
    return {"$ref": REF.format(model=model.__name__)}


def _openapi30(node: Any) -> Any:
    """JSON Schema's `anyOf: [X, {type: null}]` (what pydantic writes for `X | None`) as
    OpenAPI 3.0's `X` + `nullable: true`, everywhere in the document."""
    if isinstance(node, list):
        return [_openapi30(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _openapi30(value) for key, value in node.items()}
    options = node.pop("anyOf", None)
    if not isinstance(options, list) or {"type": "null"} not in options:
        return node if options is None else {**node, "anyOf": options}
    rest = [option for option in options if option != {"type": "null"}]
    return {**(rest[0] if len(rest) == 1 else {"anyOf": rest}), **node, "nullable": True}
