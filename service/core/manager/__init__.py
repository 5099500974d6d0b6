"""The model manager, in one place: `lifecycle.py` (loads, the switch, retiring versions),
`routing.py` (which version answers a request, and the status reports), `control.py` (the
load/unload API and a reloaded config), `status.py` (the typed status every protocol renders)."""

from .lifecycle import Manager
from .status import ModelStatus, VersionState, VersionStatus

__all__ = ["Manager", "ModelStatus", "VersionState", "VersionStatus"]
