"""What the route table is made of: one `Endpoint` per path the service answers, saying who
answers it and how it is guarded, counted and documented; `Routes` looks paths up in it
and builds the ASGI app of the endpoints diptych answers itself."""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route, compile_path

from .errors import Handler, server_error

# A schema in the OpenAPI document: a pydantic model (its JSON Schema), or JSON Schema as is.
Schema = type | dict[str, Any]
INFERENCE_ERRORS = (400, 401, 404, 413, 500, 503, 504)  # 404: an unknown model, version or label
BINARY = {"type": "string", "format": "binary"}


@dataclasses.dataclass(frozen=True)
class Operation:
    """What the OpenAPI document says of an endpoint."""

    description: str
    ok: dict[str, Schema] = dataclasses.field(default_factory=dict)  # the 200 answer: media type -> schema
    ok_description: str = "Successful Response"
    body: dict[str, Schema] | None = None  # the request body: media type -> schema
    errors: tuple[int, ...] = ()  # statuses of the README's error table
    answers: dict[int, str] = dataclasses.field(default_factory=dict)  # other statuses, answered without a body
    client_name: str | None = None  # a method of BentoML's Python client (`client.classify(...)`)
    infrastructure: bool = False  # health and metrics, apart from the APIs


@dataclasses.dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # a Starlette path template: also the metrics label and the OpenAPI path
    handler: Handler | None = None  # None: BentoML answers it
    open: bool = False  # no API key, no request slot, not counted: health, metrics, the docs
    control: bool = False  # the load/unload API: an admin key, and no request slot (a load outlasts requests)
    labels: bool = False  # labels fed back: a feedback or an admin key, where keys are on (auth.FeedbackKeys)
    doc: Operation | None = None  # None: not in the OpenAPI document
    ahead_of_bentoml: bool = False  # BentoML has a route of this path too, which would answer first
    max_body_bytes: int | None = None  # a tighter bound on its body than the service's max_body_bytes

    @functools.cached_property
    def pattern(self) -> re.Pattern[str]:
        return compile_path(self.path)[0]


class Routes:
    def __init__(self, *endpoints: Endpoint) -> None:
        self.endpoints = endpoints

    def find(self, path: str) -> Endpoint | None:
        """The endpoint whose path template `path` fills, whatever the method."""
        return next((endpoint for endpoint in self.endpoints if endpoint.pattern.match(path)), None)

    @functools.cached_property
    def app(self) -> Starlette:
        """The endpoints diptych answers, as one app (mounted into BentoML's, or called by the guard)."""
        routes = [Route(endpoint.path, endpoint.handler, methods=[endpoint.method])
                  for endpoint in self.endpoints if endpoint.handler is not None]
        return Starlette(routes=routes, exception_handlers={Exception: server_error})
