"""What the core knows of the request it serves, whatever the protocol: its id (one id
across HTTP and gRPC, returned to the caller), the caller (for a sticky traffic split), and
the shadow version chosen for it. The protocol adapters set it when a request starts
(`begin`); the engine, the models and the payload log read it (`current`)."""

from __future__ import annotations

import contextvars
import dataclasses
import uuid
from typing import Any


@dataclasses.dataclass
class RequestContext:
    id: str
    caller: str | None = None  # an API key or a caller header: what a traffic split sticks to
    shadow: Any = None  # the ServedModel that gets a copy of this request's work, if any


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("diptych_request", default=None)


def begin(request_id: str | None = None, caller: str | None = None) -> RequestContext:
    """A new request (the caller's id when it sent a usable one), current until the task ends."""
    usable = request_id if request_id and len(request_id) <= 128 and request_id.isprintable() else None
    context = RequestContext(usable or uuid.uuid4().hex, caller)
    _current.set(context)
    return context


def current() -> RequestContext:
    """This request's context; in-process callers (tests, the batch jobs) get a fresh one."""
    return _current.get() or begin()
