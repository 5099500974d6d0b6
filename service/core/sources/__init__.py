"""Where model versions come from: the seam between the repository and storage.

A `Source` lists the models and their complete versions in one place, and fetches a version
as a local folder; `Sources` reads them so that nothing found there stops a scan (base.py).
Three sources: a folder (folder.py), the BentoML model store (store.py), and object storage
through fsspec (objects.py: `s3://`, `gs://`), fetched into a bounded local cache (cache.py).
A new one is a class with `models()`, `fetch(version)` and, for a place a setting names,
`versions()`, and a line in `location` (or beside the store in the repository).
"""

from __future__ import annotations

import os
from pathlib import Path

from contract.layout import is_folder_ref, is_url

from .base import Location, Release, Source, Sources, Version, nothing_to_release
from .cache import Cache, CacheFull, check_cache_dir
from .folder import FolderSource
from .objects import ObjectSource, check_url, within
from .store import StoreSource

__all__ = ["Cache", "CacheFull", "FolderSource", "Location", "ObjectSource", "Release", "Source", "Sources",
           "StoreSource", "Version", "check_cache_dir", "check_location", "check_url", "fetch", "location", "nothing_to_release", "trusted"]


def location(ref: str, sources: Sources, cache: Cache) -> Location:
    """The source at a folder or a URL (checked: an unknown scheme is a ValueError saying so)."""
    return ObjectSource(ref, sources, cache) if is_url(ref) else FolderSource(Path(ref), sources)


def check_location(setting: str, ref: str) -> None:
    """A ValueError naming `setting` when `ref` is a URL this service cannot read (its scheme,
    bucket or path, or the package its scheme needs)."""
    if is_url(ref):
        try:
            check_url(ref)
        except ValueError as error:
            raise ValueError(f"setting {setting}: {error}") from None


def fetch(version: Version, cache: Cache) -> tuple[Path, Release]:
    """The version as a local folder, from the source its ref names."""
    if is_url(version.ref):
        return ObjectSource(version.ref, Sources(quiet=True), cache).fetch(version)
    if is_folder_ref(version.ref):
        return FolderSource.fetch(version)
    return StoreSource.fetch(version)


def trusted(ref: str, roots: list[str], configured: list[str]) -> bool:
    """Whether the folder or URL `ref` is one of `configured`, or one of `roots` or under one
    (folders with their symlinks followed; a URL is never under a folder, nor the reverse)."""
    place = _place(ref)
    if any(place == _place(other) for other in configured):
        return True
    if is_url(ref):
        return any(is_url(root) and within(place, _place(root)) for root in roots)
    return any(not is_url(root) and os.path.commonpath([place, _place(root)]) == _place(root) for root in roots)


def _place(ref: str) -> str:
    return ref.rstrip("/") if is_url(ref) else os.path.realpath(ref)
