"""diptych's serving core: protocol-free. Adapters (HTTP, gRPC) call `Engine`."""

from .config import Settings
from .engine import Classification, Engine, Generation, Scores
from .errors import (
    DeadlineExceeded,
    LimitExceeded,
    NotFound,
    NotReady,
    Overloaded,
    ServiceError,
    Unauthenticated,
    Unavailable,
    UnknownSignature,
    ValidationError,
)

__all__ = [
    "Classification",
    "DeadlineExceeded",
    "Engine",
    "Generation",
    "LimitExceeded",
    "NotFound",
    "NotReady",
    "Overloaded",
    "Scores",
    "ServiceError",
    "Settings",
    "Unauthenticated",
    "Unavailable",
    "UnknownSignature",
    "ValidationError",
]
