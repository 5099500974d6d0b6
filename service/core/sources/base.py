"""What every source shares: the `Version` it finds, the `Source` interface, and `Sources`,
which reads them so that nothing found there stops a scan.

A source (the repository folder or bucket, one model's folder in it, a configured folder or
URL, the model store) that cannot be read now, because it vanished or is unreadable (a
remount for a few seconds, a permission, an endpoint down), keeps its last good read: what
it served keeps serving, and it is reported unavailable (`diptych_model_source_available`,
`GET /models`, one log line per outage) until it reads again. A folder that exists but holds
no version is read as such: the operator removed them. A folder name that is not a version
number, a symlink that leads out of the repository folder, or an object-store version not
yet complete, is ignored and reported (logged once per folder).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from ..metrics import metrics

log = logging.getLogger("diptych")
T = TypeVar("T")
Release = Callable[[], None]  # what a fetched version's user calls once it no longer needs the folder


@dataclasses.dataclass(frozen=True)
class Version:
    """One version found in a source: where it is (a folder, a URL or a store tag) and its kind."""

    name: str
    number: int
    ref: str  # what its source fetches: a version folder, an object-store URL or a store tag
    kind: str | None  # from its card (None: unreadable, which the load then reports)
    stamp: str = ""  # an object-store version's card ETag: a new upload is a new version, tried again
    found_as: str = ""  # the name its source gives it, where a setting serves it as `name` ([repository.*] path)


class Source(Protocol):
    """Where versions come from: it lists them, complete ones only, and fetches one as a local
    folder. Reading raises when the source cannot be read now (`Sources.read` reports it)."""

    def models(self) -> dict[str, list[Version]]:
        """Every model's versions, lowest first (a folder or a URL: read as a repository root)."""

    def fetch(self, version: Version) -> tuple[Path, Release]:
        """The version as a local folder, kept (not evicted) until `Release` is called."""


class Location(Source, Protocol):
    """A source at a place that a setting names (a folder, a URL), rather than the store."""

    def versions(self) -> list[Version]:
        """Read as one model: a folder of versions (named as the folder), or one version (named by its card)."""


def nothing_to_release() -> None:
    """A folder or the store's copy: the source's own files, nothing to give back."""


class Sources:
    def __init__(self, quiet: bool = False) -> None:
        self._last: dict[str, object] = {}  # each source's last good read
        self.unavailable: dict[str, str] = {}  # source → why it cannot be read now
        self.ignored: dict[str, str] = {}  # folder → why it is not a version (or a model), this scan
        self._logged: set[str] = set()
        self._quiet = quiet  # a change's trial scan (manager/control.py): the served scan logs and counts

    def begin(self) -> None:
        """A new scan: what it ignores is what it finds again."""
        self.ignored = {}

    def read(self, source: str, reader: Callable[[], T], empty: T) -> T:
        """`reader()`, remembered; when it fails, the last good read (or `empty`), reported."""
        try:
            value = reader()
        except Exception as error:  # noqa: BLE001 - whatever a source raises, the others are still read
            reason = f"{type(error).__name__}: {error}"
            if source not in self.unavailable and not self._quiet:
                log.error("model source %s is unavailable (%s): what it served keeps serving", source, reason)
                metrics().model_source_available.labels(source=source).set(0)
            self.unavailable[source] = reason
            return self._last.get(source, empty)  # type: ignore[return-value]
        if self.unavailable.pop(source, None) is not None:
            log.info("model source %s is available again", source)
        if not self._quiet:
            metrics().model_source_available.labels(source=source).set(1)
        self._last[source] = value
        return value

    def ignore(self, what: Path | str, reason: str) -> None:
        """A folder (or a default's store tag) that is not what it should be: reported, logged once."""
        self.ignored[str(what)] = reason
        if str(what) not in self._logged and not self._quiet:
            self._logged.add(str(what))
            log.warning("ignored %s: %s", what, reason)
