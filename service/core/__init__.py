"""diptych's serving core: protocol-free. Adapters (HTTP now, gRPC next) call `Engine`."""

from .config import Settings
from .engine import Classification, Engine, Generation
from .errors import (
    DeadlineExceeded,
    LimitExceeded,
    NotFound,
    NotReady,
    Overloaded,
    ServiceError,
    Unauthenticated,
    Unavailable,
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
    "ServiceError",
    "Settings",
    "Unauthenticated",
    "Unavailable",
    "ValidationError",
]
