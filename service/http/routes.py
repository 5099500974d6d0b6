"""The route table: every path the HTTP port answers, once. The guard reads it (which paths
are open, the bounded `route` label of the metrics), the app diptych mounts into BentoML's is
built from it, and so are the OpenAPI document and the route list of BentoML's client.

Adding a route is one `Endpoint` here and its handler (docs/architecture.md, "Adding an
HTTP route"); a kind's routes are in its wire (`Wire.routes`), and `routes_for` puts the
registered kinds' first. `ROUTES` is the table of the shipped kinds.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.core.feedback import MAX_ITEMS
from service.core.models import ServedModel
from service.kinds import KINDS

from . import api, openapi, schemas, tfserving_rest, v2rest
from .endpoints import BINARY, Endpoint, Operation, Routes
from .errors import Handler
from .ui import Playground

ANY_OBJECT = {"type": "object", "additionalProperties": True}
ANY_LIST = {"type": "array", "items": ANY_OBJECT}
SHARED = "the shared routes"
FEEDBACK_BODY_BYTES = MAX_ITEMS * 2**10  # MAX_ITEMS items of up to ~1 KiB (a 128-character id, a label):
# past it the body is refused before it is parsed (a huge list costs seconds of the event loop)


def _health(description: str) -> Operation:
    return Operation(description, infrastructure=True, answers={503: "not alive, or not ready yet"})


def routes_for(kinds: Iterable[type[ServedModel]]) -> Routes:
    """The route table of a service serving `kinds`: their routes, then everyone's."""
    from service.kinds.wire import wire_of

    kinds = list(kinds)
    wires = [wire_of(kind) for kind in kinds]

    @functools.cache
    def documented() -> tuple[dict, dict]:  # on the first request: the table is complete by then
        return openapi.document(table), openapi.client_schema(table)

    async def docs(request: Request) -> Response:
        return JSONResponse(documented()[0])

    async def client_schema(request: Request) -> Response:
        return JSONResponse(documented()[1])

    playground = Playground([wire.panel for wire in wires if wire.panel]).serve
    owned = [*((f"kind {kind.kind!r}", route) for kind, wire in zip(kinds, wires) for route in wire.routes),
             *((SHARED, route) for route in shared(docs, client_schema, playground))]
    _refuse_clashes(owned)
    table = Routes(*(route for _, route in owned))
    return table


def _refuse_clashes(owned: list[tuple[str, Endpoint]]) -> None:
    """A kind's route may not take a path another route answers: the first route a path fills
    answers it (`Routes.find`), so a kind's `GET /models` would replace the shared one, guard
    and all. The shared routes are ordered on purpose (`:predict` before the status) and not checked."""
    for index, (owner, route) in enumerate(owned):
        for other_owner, other in owned[index + 1:]:
            if owner == other_owner == SHARED:
                continue
            if route.pattern.match(other.path) or other.pattern.match(route.path):
                raise ValueError(f"the route {route.method} {route.path} of {owner} takes the path of "
                                 f"{other.method} {other.path} of {other_owner}: a path has one route")


def shared(docs: Handler, client_schema: Handler, playground: Handler) -> tuple[Endpoint, ...]:
    """The routes of every service, whatever its kinds."""
    return (
        Endpoint("GET", "/models", api.list_models, doc=Operation(
            "every model version: its state (loading, available, unloading, failed, with the reason), labels and card",
            ok={"application/json": ANY_OBJECT}, ok_description="the models",
            errors=(401, 503))),
        Endpoint("GET", "/models/{name}", api.get_model, doc=Operation(
            "one model's card, by name or kind", ok={"application/json": ANY_OBJECT}, ok_description="the model",
            errors=(401, 404, 503))),
        Endpoint("POST", "/feedback", api.feedback, doc=Operation(
            "labels for answers, by the x-request-id each carried (a name or a class index): joined to what the "
            "version and its shadow answered, counted per version (GET /models: feedback); an outcome per item",
            ok={"application/json": schemas.FeedbackResponse}, ok_description="an outcome per item",
            errors=(400, 401, 403, 413, 503), body={"application/json": schemas.FeedbackRequest}),
            labels=True, max_body_bytes=FEEDBACK_BODY_BYTES),
        # the Open Inference Protocol (KServe V2)
        Endpoint("GET", "/v2", v2rest.server),
        Endpoint("GET", "/v2/health/live", v2rest.live, open=True),
        Endpoint("GET", "/v2/health/ready", v2rest.ready, open=True),
        Endpoint("GET", "/v2/models/{name}", v2rest.model, doc=Operation(
            "Open Inference Protocol: model metadata", ok={"application/json": ANY_OBJECT},
            ok_description="the model's tensors", errors=(401, 404, 503))),
        Endpoint("GET", "/v2/models/{name}/ready", v2rest.model_ready),
        Endpoint("POST", "/v2/models/{name}/infer", v2rest.infer, doc=Operation(
            "Open Inference Protocol: run the model's serving_default signature (JSON tensors, or JSON followed by "
            "binary tensor data: Inference-Header-Content-Length)",
            ok={"application/json": ANY_OBJECT, "application/octet-stream": BINARY}, ok_description="the outputs",
            errors=(400, 401, 404, 413, 500, 503, 504), body={"application/json": schemas.V2InferRequest})),
        Endpoint("GET", "/v2/models/{name}/versions/{version}", v2rest.model),
        Endpoint("GET", "/v2/models/{name}/versions/{version}/ready", v2rest.model_ready),
        Endpoint("POST", "/v2/models/{name}/versions/{version}/infer", v2rest.infer),
        # the Open Inference Protocol's model repository extension (Triton's)
        Endpoint("POST", "/v2/repository/index", v2rest.repository_index, doc=Operation(
            "every model version and its state (READY, LOADING, UNLOADING, UNAVAILABLE)",
            ok={"application/json": ANY_LIST}, ok_description="the index", errors=(400, 401, 415))),
        Endpoint("POST", "/v2/repository/models/{name}/load", v2rest.repository_load, control=True, doc=Operation(
            "load a model (again), or one more version (`parameters.version`), or set its config (`parameters.config`:"
            " JSON of its settings table: labels, traffic, shadow, ...), all or nothing; needs an admin key and an "
            "application/json body",
            ok={"application/json": ANY_OBJECT}, ok_description="loaded", errors=(400, 401, 403, 404, 409, 415),
            body={"application/json": ANY_OBJECT})),
        Endpoint("POST", "/v2/repository/models/{name}/unload", v2rest.repository_unload, control=True, doc=Operation(
            "stop serving a model (or `parameters.version`) once its requests have finished; needs an admin key",
            ok={"application/json": ANY_OBJECT}, ok_description="unloaded", errors=(400, 401, 404, 409, 415),
            body={"application/json": ANY_OBJECT})),
        # TF Serving's REST API: the version or label in the path, or the latest
        *(Endpoint("POST", f"/v1/models/{{name}}{where}:{verb}", handler, doc=Operation(
            f"TF Serving REST: {verb}", ok={"application/json": ANY_OBJECT}, errors=(400, 401, 404, 413, 503, 504),
            body={"application/json": ANY_OBJECT}) if not where else None)
          for where in ("", "/versions/{version}", "/labels/{label}")
          for verb, handler in (("predict", tfserving_rest.predict), ("classify", tfserving_rest.classify))),
        *(Endpoint("GET", f"/v1/models/{{name}}{where}{what}", handler, doc=Operation(
            f"TF Serving REST: {doc}", ok={"application/json": ANY_OBJECT}, errors=(401, 404)) if not where else None)
          for where in ("", "/versions/{version}", "/labels/{label}")
          for what, handler, doc in (("/metadata", tfserving_rest.metadata, "the SignatureDefMap"),
                                     ("", tfserving_rest.status, "the versions' status"))),
        # the documents: BentoML's, answered first otherwise, describe none of the routes above
        Endpoint("GET", "/docs.json", docs, open=True, ahead_of_bentoml=True),
        Endpoint("GET", "/schema.json", client_schema, open=True, ahead_of_bentoml=True),
        # BentoML's own
        Endpoint("GET", "/livez", open=True, doc=_health("the process is up (503 once the models failed to load)")),
        Endpoint("GET", "/healthz", open=True, doc=_health("as /livez")),
        Endpoint("GET", "/readyz", open=True, doc=_health("every model is loaded and warm")),
        Endpoint("GET", "/metrics", open=True, doc=Operation(
            "Prometheus metrics: BentoML's and diptych_* (docs/serving.md, Metrics)", infrastructure=True)),
        Endpoint("GET", "/", open=True),  # the API explorer
        # the playground: a page of its own calling the API above (README, "Playground")
        Endpoint("GET", "/ui", playground, open=True),
        Endpoint("GET", "/ui/{file:path}", playground, open=True),
        Endpoint("GET", "/static_content/{file:path}", open=True),
        Endpoint("GET", "/assets/{file:path}", open=True),
    )


@functools.cache
def shipped() -> Routes:
    return routes_for(KINDS.values())


def __getattr__(name: str) -> Routes:
    """`ROUTES`, the shipped kinds' table, made on first use: the kinds' wire modules import
    this package, so the table cannot be made while it is being imported."""
    if name == "ROUTES":
        return shipped()
    raise AttributeError(name)
