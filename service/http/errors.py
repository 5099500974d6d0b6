"""The one place an error becomes an HTTP answer: the core's `ServiceError`s and pydantic's
parse errors alike, as `{"error": ..., "detail": [{"loc", "msg", "type"}]}`, each counted
in `diptych_requests_rejected_total`."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core import (
    BodyTimeout,
    Conflict,
    DeadlineExceeded,
    Forbidden,
    LimitExceeded,
    NotFound,
    ServiceError,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
    ValidationError,
)
from ..core.metrics import metrics
from ..core.validation import decimal

Handler = Callable[[Request], Awaitable[Response]]

STATUS = {  # most specific first
    LimitExceeded: 413,
    BodyTimeout: 408,
    UnsupportedMediaType: 415,
    Conflict: 409,
    ValidationError: 400,
    NotFound: 404,
    Unauthenticated: 401,
    Forbidden: 403,
    Unavailable: 503,
    DeadlineExceeded: 504,
}


def error_status(error: ServiceError) -> int:
    return next(code for kind, code in STATUS.items() if isinstance(error, kind))


def error_response(error: ServiceError) -> JSONResponse:
    """Count the rejection and render it: the only place a core error becomes HTTP."""
    metrics().rejected.labels(reason=error.reason, protocol="http").inc()
    status = error_status(error)
    headers = {}
    if isinstance(error, Unavailable):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    loc = [part if (index := decimal(part)) is None else index for part in re.findall(r"[^.\[\]]+", error.field or "")]
    detail = {"loc": loc, "msg": error.problem, "type": error.reason}
    return JSONResponse({"error": str(error), "detail": [detail]}, status_code=status, headers=headers)


def invalid_body(error: pydantic.ValidationError) -> JSONResponse:
    """A body pydantic could not parse: 400 with its errors, in the shape BentoML gave them."""
    metrics().rejected.labels(reason=ValidationError.reason, protocol="http").inc()
    body = {"error": f"{error.error_count()} validation error for {error.title}",
            "detail": error.errors(include_context=False, include_input=False)}
    return JSONResponse(body, status_code=400)


def errors(handler: Handler) -> Handler:
    """Route decorator: the request's errors become answers, any other exception stays a bug (500)."""

    @functools.wraps(handler)
    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except ServiceError as error:
            return error_response(error)
        except pydantic.ValidationError as error:
            return invalid_body(error)

    return answer


async def server_error(request: Request, error: Exception) -> JSONResponse:
    """A bug: logged by the server (Starlette re-raises it), answered as BentoML's APIs did."""
    return JSONResponse({"error": "An unexpected error has occurred, please check the server log."}, 500)

