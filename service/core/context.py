"""What the core knows of the request it serves, whatever the protocol: its id (made by the
server: it decides the payload log's sampling and ties the request's events together, so no
client can choose either), the client's own `X-Request-Id` when it sent a usable one (kept
beside it, and returned in its place), the caller (for a sticky traffic split), and the
shadow version chosen for it. The protocol adapters set it when a request starts (`begin`);
the engine, the models and the payload log read it (`current`)."""

from __future__ import annotations

import contextvars
import dataclasses
import uuid
from typing import Any


@dataclasses.dataclass
class RequestContext:
    id: str  # the server's own
    client_id: str | None = None  # the client's X-Request-Id, if usable
    caller: str | None = None  # an API key or a caller header: what a traffic split sticks to
    shadow: Any = None  # the ServedModel that gets a copy of this request's work, if any
    # the feedback store's entries for this request's answers, by item: the predictor's and its
    # shadow's answers join the same ones, whatever other request reuses the id meanwhile
    feedback_entries: dict[int, Any] = dataclasses.field(default_factory=dict)

    @property
    def returned_id(self) -> str:
        """The id the response carries: the client's own, else the server's."""
        return self.client_id or self.id


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("diptych_request", default=None)


def begin(client_id: str | None = None, caller: str | None = None) -> RequestContext:
    """A new request with a new id of the server's (and the client's, when usable), current until the task ends."""
    usable = client_id if client_id and len(client_id) <= 128 and client_id.isprintable() else None
    context = RequestContext(uuid.uuid4().hex, usable, caller)
    _current.set(context)
    return context


def current() -> RequestContext:
    """This request's context; in-process callers (tests, the batch jobs) get a fresh one."""
    return _current.get() or begin()
