"""The core's errors. Each protocol adapter maps them to its own status codes, in one place.

`reason` is a short, fixed string: the `type` of an error body and the label of the
rejected-requests counter (so it stays low-cardinality).
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses; never a bug (those stay plain exceptions)."""

    reason = "error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.problem = message


class ValidationError(ServiceError):
    """The request is malformed: `field` names where, `problem` says what is wrong."""

    reason = "invalid_input"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem, field)

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


class LimitExceeded(ValidationError):
    """The request's content is larger than a configured limit (body, images, pixels)."""

    reason = "limit_exceeded"


class UnsupportedMediaType(ValidationError):
    """A control route's body is not `application/json`: form and text bodies are what a web
    page can send cross-origin without a CORS preflight (HTTP only: 415)."""

    reason = "unsupported_media_type"


class BodyTimeout(ValidationError):
    """The request's body did not arrive whole within `body_timeout_s` (HTTP only: 408): a
    client sending it a trickle at a time would hold its connection and memory for long."""

    reason = "body_timeout"


class Conflict(ValidationError):
    """The change is well-formed but the repository's state refuses it: it would leave a
    default model without a version to serve, or its policy chooses no version there (409,
    gRPC FAILED_PRECONDITION). Nothing was changed."""

    reason = "conflict"


class UnknownSignature(ValidationError):
    """The model has no signature of that name: TF Serving's FAILED_PRECONDITION, which its
    clients may test for; any other protocol treats it as the malformed request it is."""


class NotFound(ServiceError):
    reason = "not_found"


class Unauthenticated(ServiceError):
    reason = "unauthenticated"


class Forbidden(ServiceError):
    """Allowed to ask, not for that: a path from a request outside the model roots (403, gRPC
    PERMISSION_DENIED). Nothing was changed."""

    reason = "forbidden"


class Unavailable(ServiceError):
    """Try again later; `retry_after_s` says when."""

    retry_after_s = 1

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class Overloaded(Unavailable):
    reason = "overloaded"


class NotReady(Unavailable):
    reason = "not_ready"
    retry_after_s = 5


class DeadlineExceeded(ServiceError):
    reason = "timeout"
