"""Reading the repository's sources so that nothing found there stops a scan.

A source (the repository folder, one model's folder in it, a configured folder, the model
store) that cannot be read now, because it vanished or is unreadable (a remount for a few
seconds, a permission), keeps its last good read: what it served keeps serving, and it is
reported unavailable (`diptych_model_source_available`, `GET /models`, one log line per
outage) until it reads again. A folder that exists but holds no version is read as such:
the operator removed them. A folder name that is not a version number, or a symlink that
leads out of the repository folder, is ignored and reported (logged once per folder).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from contract.layout import SAVED_MODEL, version_number

from .metrics import metrics

log = logging.getLogger("diptych")
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Version:
    """One version found in a source: where it is (a folder, or a store tag) and its kind."""

    name: str
    number: int
    ref: str  # what `locate` reads: a version folder or a store tag
    kind: str | None  # from its card (None: unreadable, which the load then reports)


class Sources:
    def __init__(self, quiet: bool = False) -> None:
        self._last: dict[str, object] = {}  # each source's last good read
        self.unavailable: dict[str, str] = {}  # source → why it cannot be read now
        self.ignored: dict[str, str] = {}  # folder → why it is not a version (or a model), this scan
        self._logged: set[str] = set()
        self._quiet = quiet  # a change's trial scan (requests.py): the served scan logs and counts

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

    def folder_versions(self, folder: Path, name: str | None = None, inside: Path | None = None) -> list[Version]:
        """A version folder (one version), or a folder of numbered versions (each with a
        SavedModel); raises when `folder` cannot be read. `inside`: no version folder may lead
        out of it."""
        from contract.card import CardError, ModelCard

        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
        numbered = [(folder, None)] if (folder / SAVED_MODEL).is_file() else self._numbered(folder, inside)
        found = []
        for path, number in numbered:
            if not (path / SAVED_MODEL).is_file():
                continue  # still being copied in, or not a model
            try:
                card = ModelCard.read(path)
                found.append(Version(name or card.name, number if number is not None else card.version, str(path),
                                     card.kind))
            except CardError:
                found.append(Version(name or folder.name, number if number is not None else 0, str(path), None))
        return sorted(found, key=lambda version: version.number)

    def _numbered(self, folder: Path, inside: Path | None) -> list[tuple[Path, int]]:
        numbered = []
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue  # a version being copied in (`.4.partial`), an export's staging folder, a file
            try:
                number = version_number(path.name)
            except ValueError as reason:
                self.ignore(path, str(reason))
                continue
            if self.leaves(path, inside):
                continue
            numbered.append((path, number))
        return numbered

    def leaves(self, path: Path, inside: Path | None) -> bool:
        """Whether `path` (a symlink, or in a symlinked folder) leads out of `inside`: ignored."""
        if inside is None or path.resolve().is_relative_to(inside):
            return False
        self.ignore(path, f"a symlink to {path.resolve()}, outside the model root {inside}")
        return True
