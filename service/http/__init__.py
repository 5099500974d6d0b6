"""diptych over HTTP: one route table (`routes`) read by everything else. BentoML serves
it: `Guard`, its middleware, checks keys, admission and body size before any route runs,
and `ROUTES.app`, mounted into BentoML's app, answers diptych's routes (`api`, `v2rest`,
the documents of `openapi`); `errors` turns what they refuse into answers; `schemas` are
the bodies."""

from . import routes
from .guard import Guard
from .routes import routes_for
from .schemas import ClassifyRequest, GenerateRequest, InterpolateRequest
from .v2rest import v2_request

__all__ = ["ROUTES", "routes_for", "ClassifyRequest", "GenerateRequest", "Guard", "InterpolateRequest", "v2_request"]


def __getattr__(name: str) -> object:
    return getattr(routes, name)  # ROUTES, made on first use
