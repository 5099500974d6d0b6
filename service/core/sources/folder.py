"""A folder source: TF Serving's layout on a local (or mounted) file system,
`<root>/<name>/<version>/`. Its versions are read in place: fetching is naming the folder."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from contract.layout import SAVED_MODEL, version_number

from .base import Release, Sources, Version, nothing_to_release


class FolderSource:
    def __init__(self, folder: Path, sources: Sources, inside: Path | None = None) -> None:
        self.folder = folder
        self.sources = sources
        self.inside = inside  # no version folder may lead out of it (the repository root)

    def models(self) -> dict[str, list[Version]]:
        """Each model folder is a source of its own, so one that cannot be read keeps its
        versions and holds up no other."""
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: no such folder (gone, or not mounted)")
        inside, found = self.folder.resolve(), {}
        for folder in sorted(self.folder.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir() or self.leaves(folder, inside):
                continue
            model = FolderSource(folder, self.sources, inside)
            if versions := self.sources.read(str(folder), partial(model.versions), []):
                found[folder.name] = versions
        return found

    def versions(self) -> list[Version]:
        """A version folder (one version, named by its card), or a folder of numbered versions
        (each with a SavedModel, named as the folder); raises when the folder cannot be read."""
        from contract.card import CardError, ModelCard

        folder = self.folder
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
        one = (folder / SAVED_MODEL).is_file()
        name = None if one else folder.name
        numbered = [(folder, None)] if one else self._numbered()
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

    @staticmethod
    def fetch(version: Version) -> tuple[Path, Release]:
        return Path(version.ref), nothing_to_release

    def _numbered(self) -> list[tuple[Path, int]]:
        numbered = []
        for path in sorted(self.folder.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue  # a version being copied in (`.4.partial`), an export's staging folder, a file
            try:
                number = version_number(path.name)
            except ValueError as reason:
                self.sources.ignore(path, str(reason))
                continue
            if self.leaves(path, self.inside):
                continue
            numbered.append((path, number))
        return numbered

    def leaves(self, path: Path, inside: Path | None) -> bool:
        """Whether `path` (a symlink, or in a symlinked folder) leads out of `inside`: ignored."""
        if inside is None or path.resolve().is_relative_to(inside):
            return False
        self.sources.ignore(path, f"a symlink to {path.resolve()}, outside the model root {inside}")
        return True
