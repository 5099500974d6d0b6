"""The two documents that describe the HTTP API, both written from the route table: the
OpenAPI document (`/docs.json`, shown by the explorer at `/`) and the route list BentoML's
Python client reads (`/schema.json`, for `bentoml.SyncHTTPClient(url).classify(...)`).

Request and response schemas are pydantic's own (`schemas`), in OpenAPI 3.0 spelling, so a
client generated from the document, or a fuzzer checking answers against it
(tests/test_fuzz.py, schemathesis), finds what the service answers.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from .. import __version__
from .endpoints import Endpoint, Operation, Routes, Schema

TITLE = "diptych"
DESCRIPTION = "Classify images and generate them, with one model each."
REF = "#/components/schemas/{model}"
APIS, INFRASTRUCTURE = "Service APIs", "Infrastructure"
TAGS = [{"name": APIS, "description": "Inference and the models' cards."},
        {"name": INFRASTRUCTURE, "description": "Health and metrics, for orchestrators and Prometheus."}]
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
    400: "malformed body or field",
    401: "missing or wrong API key (when keys are configured)",
    403: "a path outside the model roots (model_root, allowed_roots)",
    404: "unknown model",
    409: "the change would leave a default model without a version, or chooses no version; nothing changed",
    413: "body, image count or image pixels over the configured limits",
    415: "a control route's body is not application/json",
    500: "a bug: never an answer to bad input",
    503: "too many requests in flight, or the models are still loading (Retry-After)",
    504: "no model result within timeout_s",
}
PARAMETERS = {  # path parameters, by name
    "name": {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "a model's name or kind: classifier, generator"},
}
PNG_FILE = {"type": "file", "format": "image", "content_type": "image/png", "media_type": "image/png"}


def document(routes: Routes) -> dict[str, Any]:
    """The OpenAPI document of every endpoint the table documents."""
    schemas: dict[str, Any] = {"Error": ERROR}
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in routes.endpoints:
        if endpoint.doc is not None:
            paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation(endpoint, endpoint.doc, schemas)
    return _openapi30({
        "openapi": "3.0.2",
        "info": {"title": TITLE, "description": DESCRIPTION, "version": __version__},
        "servers": [{"url": "."}],
        "tags": TAGS,
        "paths": paths,
        "components": {"schemas": schemas},
    })


def operation(endpoint: Endpoint, doc: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    """One operation: request bodies inline, JSON answers as components, errors as the `Error` component."""
    result: dict[str, Any] = {"description": doc.description, "tags": [INFRASTRUCTURE if doc.infrastructure else APIS]}
    if doc.client_name:
        result["operationId"] = f"{TITLE}__{doc.client_name}"
    if names := re.findall(r"{(\w+)", endpoint.path):
        result["parameters"] = [PARAMETERS[name] for name in names]
    if doc.body:
        result["requestBody"] = {"required": True, "content": {
            media: {"schema": _schema(schemas, schema)} for media, schema in doc.body.items()}}
    ok = {media: {"schema": _component(schemas, schema)} for media, schema in doc.ok.items()}
    error = {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}
    result["responses"] = {
        "200": {"description": doc.ok_description, **({"content": ok} if ok else {})},
        **{str(code): {"description": ERRORS[code], "content": error} for code in doc.errors},
        **{str(code): {"description": description} for code, description in doc.answers.items()},
    }
    return result


def client_schema(routes: Routes) -> dict[str, Any]:
    """The routes BentoML's Python client makes its methods of: each one's JSON input, and
    its output, JSON or a file (which the client saves and returns as a path)."""
    return {"name": TITLE, "type": "service", "description": DESCRIPTION, "routes": [
        {"name": doc.client_name, "route": endpoint.path,
         "input": {**_schema({}, doc.body["application/json"]), "root_input": True},
         "output": _schema({}, doc.ok["application/json"]) if "application/json" in doc.ok else PNG_FILE}
        for endpoint in routes.endpoints if (doc := endpoint.doc) and doc.client_name
    ]}


def _schema(schemas: dict[str, Any], schema: Schema) -> dict[str, Any]:
    """A pydantic model's JSON Schema (the models it refers to go to `schemas`), or `schema` itself."""
    if isinstance(schema, dict):
        return schema
    result = copy.deepcopy(schema.model_json_schema(ref_template=REF, mode="serialization"))
    schemas.update(result.pop("$defs", {}))
    return result


def _component(schemas: dict[str, Any], schema: Schema) -> dict[str, Any]:
    """A pydantic model's schema as a component, and its $ref; `schema` itself if it is JSON Schema."""
    if isinstance(schema, dict):
        return schema
    schemas[schema.__name__] = _schema(schemas, schema)
    return {"$ref": REF.format(model=schema.__name__)}


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
