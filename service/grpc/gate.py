"""The one interceptor every gRPC call goes through, whichever of the three APIs it uses:
the gRPC twin of the HTTP side's `Guard` and `errors`.

It checks the API key (metadata `authorization: Bearer <key>`; an admin key for the load
API, a feedback or admin key for labels), refuses a message that is
not valid protobuf (INVALID_ARGUMENT, not gRPC's UNKNOWN), takes one of the engine's
request slots, bounds the call by its deadline (the work is cancelled, and queued items
leave their batch, when it passes), maps every `ServiceError` to a status code (the only
place that happens), and counts the call in the protocol-labelled metrics.
Every method takes a slot unless it is listed here: a method added later is admitted like
inference (an allow-list of inference methods let a new one skip `max_concurrency`).
Health checks, reflection and the V2 liveness/readiness calls stay open, as on HTTP; the
metadata calls, like HTTP's GETs, need the key but no slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ..core import (
    Conflict,
    DeadlineExceeded,
    Engine,
    Forbidden,
    NotFound,
    Overloaded,
    ServiceError,
    Unauthenticated,
    Unavailable,
    UnknownSignature,
    ValidationError,
)
from ..core import context as request_context
from ..core.metrics import metrics

OPEN = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)
METADATA = frozenset({  # they read what is loaded: no slot, as HTTP's GET /models
    "/diptych.v1.Diptych/ListModels",
    "/tensorflow.serving.PredictionService/GetModelMetadata",
    "/inference.GRPCInferenceService/ServerMetadata",
    "/inference.GRPCInferenceService/ModelMetadata",
    "/inference.GRPCInferenceService/ModelReady",
    "/inference.GRPCInferenceService/RepositoryIndex",
    "/tensorflow.serving.ModelService/GetModelStatus",
})
PRIVILEGED = frozenset({  # the load/unload API: an admin key, and no request slot (a load outlasts requests)
    "/diptych.v1.Diptych/LoadModel",
    "/diptych.v1.Diptych/UnloadModel",
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
})
LABELS = frozenset({"/diptych.v1.Diptych/Feedback"})  # labels drive promotion: a feedback or admin key (core/auth.py)
STATUS = {  # most specific first; LimitExceeded, UnknownSignature and Conflict are ValidationErrors
    UnknownSignature: grpc.StatusCode.FAILED_PRECONDITION,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    ValidationError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class Gate(grpc.aio.ServerInterceptor):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._guarded_handlers: dict[str, grpc.RpcMethodHandler] = {}  # by method: wrapped once

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        if (guarded := self._guarded_handlers.get(details.method)) is not None:
            return guarded
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrap = _parsed if details.method.startswith(OPEN) else self._guarded
        guarded = handler._replace(request_deserializer=_tolerant(handler.request_deserializer),
                                   unary_unary=wrap(handler.unary_unary, details.method))
        self._guarded_handlers[details.method] = guarded
        return guarded

    def _guarded(self, behavior: Behavior, method: str) -> Behavior:
        slot = contextlib.nullcontext if method in METADATA | PRIVILEGED else self.engine.admit
        requests = metrics().requests
        seconds = metrics().request_seconds.labels(protocol="grpc", method=method)

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start, code = time.perf_counter(), grpc.StatusCode.OK
            metadata = dict(context.invocation_metadata() or ())
            authorization = metadata.get("authorization")
            request_id = request_context.begin(metadata.get("x-request-id"), metadata.get("x-caller") or authorization).returned_id
            context.set_trailing_metadata((("x-request-id", request_id),))
            try:
                self.engine.keys.check(authorization)
                if method in PRIVILEGED:
                    self.engine.check_admin(authorization)
                if method in LABELS:
                    self.engine.feedback_keys.check(authorization)
                if isinstance(request, _Unparsed):
                    raise request.invalid
                with slot():
                    return await _within_deadline(behavior(request, context), context.time_remaining())
            except ServiceError as error:
                code = next(status for kind, status in STATUS.items() if isinstance(error, kind))
                metrics().rejected.labels(reason=error.reason, protocol="grpc").inc()
                retry = [("retry-after", str(error.retry_after_s))] if isinstance(error, Unavailable) else []
                await context.abort(code, str(error), trailing_metadata=(("x-request-id", request_id), *retry))
            except grpc.aio.AbortError:  # the servicer answered with a status of its own
                code = context.code()
                raise
            except asyncio.CancelledError:  # the client cancelled, or went away
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:  # a bug: grpc logs it and answers UNKNOWN
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                requests.labels(protocol="grpc", method=method, code=code.name).inc()
                seconds.observe(time.perf_counter() - start)

        return call


class _Unparsed:
    """What `_tolerant` hands the method instead of a message it could not parse."""

    def __init__(self, error: DecodeError) -> None:
        self.invalid = ValidationError("request", f"not a valid protobuf message: {error}")


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The method's request parser, returning `_Unparsed` instead of raising: grpc would
    answer UNKNOWN ("Unexpected DecodeError") to a corrupt message, which is bad input."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as error:
            return _Unparsed(error)

    return parse


def _parsed(behavior: Behavior, method: str) -> Behavior:
    """The open methods (health, V2 liveness and readiness) get the parse check only."""

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Unparsed):
            await context.abort(STATUS[ValidationError], str(request.invalid))
        return await behavior(request, context)

    return call


async def _within_deadline(work: Awaitable[Any], seconds_left: float | None) -> Any:
    try:
        async with asyncio.timeout(seconds_left):  # None: no deadline
            return await work
    except TimeoutError:
        raise DeadlineExceeded("the call's deadline passed before its result was ready") from None
