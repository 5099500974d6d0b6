"""What the manager reports of each model version: typed, frozen snapshots that every
protocol renders (diptych's `/models` and ListModels, TF Serving's model status, the V2
repository index and model metadata), each through its own table of `VersionState`s. The
manager's own mutable `Slot`s never leave it."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from ..models import ModelInfo, ServedModel
from ..sources import Release, Version, nothing_to_release


class VersionState(enum.StrEnum):
    """A version's state, in diptych's own words (what `/models` shows)."""

    LOADING = "loading"
    AVAILABLE = "available"  # in the routes: it answers requests
    UNLOADING = "unloading"  # out of the routes, draining the requests admitted before
    FAILED = "failed"  # its load failed; the reason says why


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    name: str
    version: int
    state: VersionState
    reason: str  # why it failed, or why it serves in place of another
    since: float  # when it entered its state (Unix time)
    kind: str | None  # the card's kind once loaded, else the repository's (None: not known yet)
    source: str  # the tag or folder it is loaded from
    info: ModelInfo | None  # while it is loaded (available, or draining)
    labels: tuple[str, ...]  # the model's labels that name this version
    policy: str  # its model's version policy


@dataclasses.dataclass(frozen=True)
class ModelStatus:
    name: str
    versions: Mapping[int, VersionStatus]  # every version with a state, by number, oldest first
    labels: Mapping[str, int]
    policy: str


@dataclasses.dataclass
class Slot:
    """One version's state inside the manager. `model` is set while it is available or unloading."""

    version: Version
    state: VersionState = VersionState.LOADING
    reason: str = ""
    model: ServedModel | None = None
    footprint: int = 0  # bytes of weights on disk: the memory budget's estimate
    since: float = 0.0  # when it entered its state (Unix time)
    release: Release = nothing_to_release  # gives its fetched folder back (the cache may evict it)

    def status(self, labels: Mapping[str, int], policy: str) -> VersionStatus:
        info = self.model.info if self.model is not None else None
        number = self.version.number
        return VersionStatus(self.version.name, number, self.state, self.reason, self.since,
                             info.kind if info else self.version.kind, self.version.ref, info,
                             tuple(sorted(label for label, version in labels.items() if version == number)), policy)
