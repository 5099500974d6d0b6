"""What a kind puts on the wire, declared in its own module (LitServe's idea: decode the
request, run, encode the response, on the model's own class). The adapters iterate the
registered kinds' wires instead of naming kinds: the route table takes their `routes`, the
diptych.v1 server their `grpc` methods, `python -m service.batch` their `jobs`, and the
playground their `panel`. A kind's `wire` names the module that defines its `WIRE`,
imported when an adapter first asks (so loading a model never imports the HTTP stack).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.core.models import ServedModel

if TYPE_CHECKING:  # the HTTP stack is imported by the wire modules that use it
    from service.http.endpoints import Endpoint


@dataclasses.dataclass(frozen=True)
class GrpcMethod:
    """One method of diptych.v1.Diptych: `handler(engine, request)` decodes, runs, encodes."""

    name: str
    request: type  # protobuf message classes
    response: type
    handler: Callable[[Any, Any], Awaitable[Any]]


@dataclasses.dataclass(frozen=True)
class Panel:
    """A section of the playground (/ui): its HTML, and its script, which runs after
    playground.js (`api`, `guarded`, `element`, `selected`, `onModels` are there)."""

    html: str
    script: str

    @classmethod
    def files(cls, html: Path, script: Path) -> Panel:
        return cls(html.read_text(), script.read_text())


@dataclasses.dataclass(frozen=True)
class Wire:
    routes: tuple[Endpoint, ...] = ()  # HTTP: the route table's lines for this kind
    grpc: tuple[GrpcMethod, ...] = ()  # methods of diptych.v1.Diptych
    jobs: tuple[type, ...] = ()  # bulk jobs: `service.batch.jobs.Job` subclasses with a `command`
    panel: Panel | None = None


def wire_of(kind: type[ServedModel]) -> Wire:
    """The kind's WIRE (a kind without one is served by the tensor protocols only)."""
    return importlib.import_module(kind.wire).WIRE if kind.wire else Wire()
