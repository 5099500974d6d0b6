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

from ..core import Engine, ModelInfo, NotFound, VersionState, VersionStatus
from . import schemas
from .errors import error_status, errors


def engine() -> Engine:
    """The engine of this worker's service instance (created after the routes are)."""
    return bentoml.get_current_service().engine


def model_of(request: Request, field: str | None) -> str | None:
    """The model a request names: its body's `model`, or the `model` query parameter."""
    return field or request.query_params.get("model") or None


@errors
async def list_models(request: Request) -> Response:
    """Every model version the service knows, with its state (loading, available, unloading,
    failed and why), the labels naming it, its model's policy, and its card once read; the
    model sources that cannot be read now, and the folders ignored, with the reasons; and each
    model's last promotion or rollback by evidence (core/promotion.py)."""
    served = engine()
    return JSONResponse({"models": [version_entry(version, served.feedback.report(version.name, version.version))
                                    for model in served.status().values() for version in model.versions.values()],
                         "sources": served.sources(), "promotions": served.promotions()})


@errors
async def get_model(request: Request) -> Response:
    try:
        model = engine().find(request.path_params["name"])
    except NotFound as error:  # the path's `name` is the field at fault
        raise NotFound(error.problem, "name") from None
    return JSONResponse(card(model.info))


@errors
async def feedback(request: Request) -> Response:
    """Labels for answers, by the x-request-id each answer carried: an outcome per item, never
    one item's error for the whole call."""
    body = await schemas.FeedbackRequest.parse(request)
    labelled = await engine().feed_back([(item.request_id, item.label, item.index) for item in body.items])
    return JSONResponse(schemas.FeedbackResponse(items=[schemas.FeedbackResult(
        request_id=each.request_id, index=each.index, status=each.error.reason if each.error else "ok",
        code=error_status(each.error) if each.error else 200, error=str(each.error) if each.error else None,
        replaced=each.replaced) for each in labelled]).model_dump())


# -- responses ----------------------------------------------------------------------------


def model_ref(info: ModelInfo) -> schemas.ModelRef:
    return schemas.ModelRef(name=info.name, version=info.version, runtime=info.runtime)


def model_headers(info: ModelInfo) -> dict[str, str]:
    return {"X-Model-Name": info.name, "X-Model-Version": info.version, "X-Model-Runtime": info.runtime}


def json_response(body: pydantic.BaseModel, info: ModelInfo) -> Response:
    return Response(body.model_dump_json(by_alias=True), media_type="application/json", headers=model_headers(info))


def card(info: ModelInfo) -> dict[str, Any]:
    return {"name": info.name, "version": info.version, "kind": info.kind, "source": info.source,
            "runtime": info.runtime, "litert": info.conversion, "card": info.card.to_dict(),
            "state": VersionState.AVAILABLE.value,
            "signature": info.provenance.to_dict() if info.provenance else None}


def version_entry(status: VersionStatus, feedback: dict[str, Any] | None = None) -> dict[str, Any]:
    """One version as `/models` lists it; its card while it is loaded, and its labelled answers'
    `feedback` report (core/feedback.py) when given. (`litert`: the key the runtime's conversion
    report has always had here.)"""
    known = card(status.info) if status.info is not None else {
        "name": status.name, "version": str(status.version), "kind": status.kind, "source": status.source}
    return {**known, "state": status.state.value, "since": status.since, "reason": status.reason,
            "labels": list(status.labels), "policy": status.policy,
            "feedback": feedback}
