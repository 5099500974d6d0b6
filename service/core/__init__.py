"""diptych's serving core: protocol-free and kind-free. Adapters (HTTP, gRPC) call `Engine`
for a served model; what each kind of model does lives in `service/kinds/`."""

from . import context
from .config import Settings
from .engine import Engine
from .errors import (
    BodyTimeout,
    Conflict,
    DeadlineExceeded,
    Forbidden,
    LimitExceeded,
    NotFound,
    NotReady,
    Overloaded,
    ServiceError,
    Unauthenticated,
    Unavailable,
    UnknownSignature,
    UnsupportedMediaType,
    ValidationError,
)
from .manager import ModelStatus, VersionState, VersionStatus
from .models import ModelInfo, ServedModel

__all__ = [
    "BodyTimeout",
    "context",
    "Conflict",
    "DeadlineExceeded",
    "Engine",
    "Forbidden",
    "LimitExceeded",
    "ModelInfo",
    "ModelStatus",
    "NotFound",
    "NotReady",
    "Overloaded",
    "ServedModel",
    "ServiceError",
    "Settings",
    "Unauthenticated",
    "Unavailable",
    "UnknownSignature",
    "UnsupportedMediaType",
    "ValidationError",
    "VersionState",
    "VersionStatus",
]
