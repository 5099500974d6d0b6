"""diptych's own HTTP API: GET /models, and what the kinds' routes share (their engine,
the model a request names, the model's headers). Each kind's routes are in its wire module
(`service/kinds/*_wire.py`): they parse a body (`schemas`), call the engine, and render the
result; `errors` answers whatever the parsing or the engine refused."""

from __future__ import annotations

from typing import Any

import bentoml
import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core import Engine, ModelInfo, NotFound
from . import schemas
from .errors import errors


def engine() -> Engine:
    """The engine of this worker's service instance (created after the routes are)."""
    return bentoml.get_current_service().engine


def model_of(request: Request, field: str | None) -> str | None:
    """The model a request names: its body's `model`, or the `model` query parameter."""
    return field or request.query_params.get("model") or None


@errors
async def list_models(request: Request) -> Response:
    """Every model version the service knows, with its state (loading, available, unloading,
    failed and why), the labels naming it, its model's policy, and its card once read; and the
    model sources that cannot be read now, and the folders ignored, with the reasons."""
    return JSONResponse({"models": [version_entry(name, number, slot, entry)
                                    for name, entry in engine().status().items()
                                    for number, slot in sorted(entry["versions"].items())],
                         "sources": engine().sources()})


@errors
async def get_model(request: Request) -> Response:
    try:
        model = engine().find(request.path_params["name"])
    except NotFound as error:  # the path's `name` is the field at fault
        raise NotFound(error.problem, "name") from None
    return JSONResponse(card(model.info))


# -- responses ----------------------------------------------------------------------------


def model_ref(info: ModelInfo) -> schemas.ModelRef:
    return schemas.ModelRef(name=info.name, version=info.version, runtime=info.runtime)


def model_headers(info: ModelInfo) -> dict[str, str]:
    return {"X-Model-Name": info.name, "X-Model-Version": info.version, "X-Model-Runtime": info.runtime}


def json_response(body: pydantic.BaseModel, info: ModelInfo) -> Response:
    return Response(body.model_dump_json(by_alias=True), media_type="application/json", headers=model_headers(info))


def card(info: ModelInfo) -> dict[str, Any]:
    return {"name": info.name, "version": info.version, "kind": info.kind, "source": info.source,
            "runtime": info.runtime, "litert": info.litert, "card": info.card.to_dict(), "state": "available"}


def version_entry(name: str, number: int, slot: Any, entry: dict[str, Any]) -> dict[str, Any]:
    labels = sorted(label for label, version in entry["labels"].items() if version == number)
    known = card(slot.info) if slot.info is not None and slot.model is not None else {
        "name": name, "version": str(number), "kind": slot.version.kind, "source": slot.version.ref}
    return {**known, "state": slot.state, "since": slot.since, "reason": slot.reason, "labels": labels,
            "policy": entry["policy"]}
