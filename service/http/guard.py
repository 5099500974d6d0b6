"""The ASGI middleware in front of every HTTP route, BentoML's included: API keys on all but
the route table's open endpoints, an admin key on its control endpoints (loading and
unloading models), and a feedback or admin key on its `labels` endpoint (where keys are on). For those and for other POSTs the body is read whole first, bounded: at
most max_body_bytes, or the route's own tighter `max_body_bytes` (413: before any parsing),
arriving within body_timeout_s (408, so a client trickling its body is cut off in seconds),
and at most `BODIES_PER_SLOT` × max_concurrency bodies arriving at once (503), which bounds
their memory. Then an inference request takes a request slot: a
body that arrives slowly holds none (max_concurrency of them would refuse everyone else).
Every guarded request is counted by its route's template. Each request gets its id here (the
client's `X-Request-Id`, or a new one), returned in `X-Request-Id`, and its caller
(`X-Caller`, else its API key), which a model's traffic split sticks to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from opentelemetry import trace

from ..core import BodyTimeout, LimitExceeded, Overloaded, ServiceError, Settings, context
from ..core.metrics import metrics
from ..core.validation import decimal
from .api import engine
from .endpoints import Routes
from .errors import error_response

CLIENT_CLOSED = 499  # the metrics' code for a client that left mid-body (nginx's convention)
BODIES_PER_SLOT = 4  # bodies arriving at once, per request slot: what bounds their memory, slow clients far past the slots


class ClientGone(Exception):
    """The client disconnected before its whole request body arrived."""


class Guard:
    def __init__(self, app: Callable, routes: Routes, max_body_bytes: int) -> None:
        self.app = app
        self.routes = routes
        self.max_body_bytes = max_body_bytes
        self._receiving = 0  # bodies arriving now (one event loop: no lock)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = self.routes.find(scope["path"])
        if endpoint is not None and endpoint.ahead_of_bentoml:
            return await self.routes.app(scope, receive, send)
        if endpoint is not None and endpoint.open:
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500
        authorization = _header(scope, b"authorization")
        request = context.begin(_header(scope, b"x-request-id"), _header(scope, b"x-caller") or authorization)

        async def answer(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request.returned_id.encode()),
                                      *_request_id()]
            await send(message)

        try:
            core = engine()
            core.keys.check(authorization)
            if endpoint is not None and endpoint.labels:
                core.feedback_keys.check(authorization)
            if endpoint is not None and endpoint.control and scope["method"] == endpoint.method:
                # the load/unload API: an admin key, its body bounded as any, no request slot
                # (another method: the app's 405)
                core.check_admin(authorization)
                body = await self._read_body(scope, receive, core.settings, self.max_body_bytes)
                return await self.app(scope, _replay(body, receive), answer)
            if scope["method"] != "POST":
                return await self.app(scope, receive, answer)
            limit = min(self.max_body_bytes, getattr(endpoint, "max_body_bytes", None) or self.max_body_bytes)
            body = await self._read_body(scope, receive, core.settings, limit)
            with core.admit():
                await self.app(scope, _replay(body, receive), answer)
        except ServiceError as error:
            await error_response(error)(scope, receive, answer)
        except ClientGone:  # a request cut off mid-body is never run: nobody waits for its answer
            status = CLIENT_CLOSED
        except asyncio.CancelledError:  # BentoML's traffic timeout (timeout_s + 10 s) answers 504 itself
            status = 504
            raise
        finally:
            method = f"{scope['method']} {endpoint.path if endpoint else 'other'}"
            metrics().requests.labels(protocol="http", method=method, code=str(status)).inc()
            metrics().request_seconds.labels(protocol="http", method=method).observe(time.perf_counter() - start)

    async def _read_body(self, scope: dict, receive: Callable, settings: Settings, limit: int) -> bytes:
        """The whole body: at most `limit` bytes (413), arriving within body_timeout_s (408), and
        at most BODIES_PER_SLOT × max_concurrency bodies arriving at once (503)."""
        too_large = LimitExceeded("body", f"larger than {limit} bytes")
        declared = decimal(_header(scope, b"content-length") or "")
        if declared is not None and declared > limit:
            raise too_large
        most = BODIES_PER_SLOT * settings.max_concurrency
        if self._receiving >= most:
            raise Overloaded(f"more than {most} request bodies arriving at once; retry shortly")
        self._receiving += 1
        metrics().receiving.inc()
        try:
            async with asyncio.timeout(settings.body_timeout_s or None):
                return await self._receive(receive, limit, too_large)
        except TimeoutError:
            raise BodyTimeout("body", f"not received whole within {settings.body_timeout_s:g} s (body_timeout_s): "
                                      "send the request at once") from None
        finally:
            self._receiving -= 1
            metrics().receiving.dec()

    async def _receive(self, receive: Callable, limit: int, too_large: LimitExceeded) -> bytes:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                raise too_large
            more = message.get("more_body", False)
        return b"".join(chunks)


def _header(scope: dict, name: bytes) -> str | None:
    return next((value.decode("latin-1") for key, value in scope["headers"] if key == name), None)


def _request_id() -> list[tuple[bytes, bytes]]:
    """With tracing on, the request's span id as `X-BentoML-Request-ID`, as BentoML's API
    routes answered it; with tracing off there is no span, and no header."""
    context = trace.get_current_span().get_span_context()
    return [(b"x-bentoml-request-id", format(context.span_id, "016x").encode())] if context.is_valid else []


def _replay(body: bytes, receive: Callable) -> Callable:
    """Hand the already-read body to the app once, then pass through (disconnects)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
