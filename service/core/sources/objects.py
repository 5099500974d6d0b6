"""Object storage through fsspec: `s3://bucket/prefix` (s3fs) and `gs://bucket/prefix`
(gcsfs), laid out as a folder is (`<root>/<name>/<version>/`), as TF Serving reads it.

Credentials and endpoint come from the client libraries' standard settings: for S3,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL or
AWS_ENDPOINT_URL_S3 (another endpoint than AWS's), or a profile; for GCS, Application
Default Credentials (GOOGLE_APPLICATION_CREDENTIALS).

**Complete**: an object store has no rename, so a version is listed only once its
`model_card.json` is there, beside its `saved_model.pb`: upload the card last (export and
`training.publish` write it last too). A version without one is an upload in progress, or
one cut short: it is ignored (and reported) and never loads. The card's ETag is the
version's stamp. Versions are immutable (as TF Serving treats them): a fetch is of one
upload, checked after the download, and a served version uploaded again keeps serving what
it loaded (the manager reports the change); upload a new version number instead.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from contract.layout import SAVED_MODEL, version_number

from .base import Release, Sources, Version
from .cache import Cache

CARD = "model_card.json"
PACKAGES = {"s3": "s3fs", "gs": "gcsfs"}  # scheme → the fsspec file system that serves it
BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")  # S3's and GCS's bucket names, lowercase
# Fail fast when the endpoint is down: the scan keeps what was found, and the next poll tries again.
OPTIONS: dict[str, dict[str, Any]] = {
    "s3": {"config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2}}},
    "gs": {},
}


def check_url(url: str) -> None:
    """A ValueError saying what is wrong with a model URL: its scheme, its bucket, its path,
    or the file system package it needs and that is not installed."""
    scheme, _, rest = url.partition("://")
    if scheme not in PACKAGES:
        raise ValueError(f"{url[:80]!r}: {scheme}:// is not a model source: use a folder, s3://bucket/path or "
                         "gs://bucket/path")
    bucket, _, path = rest.partition("/")
    if not BUCKET.fullmatch(bucket):
        raise ValueError(f"{url[:80]!r}: {bucket[:64]!r} is not a bucket name (3 to 222 lowercase letters, digits, "
                         "'.', '-' or '_')")
    parts = path.rstrip("/").split("/") if path.rstrip("/") else []
    if any(mark in rest for mark in "?#") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{url[:80]!r}: a model URL is {scheme}://bucket/path, with no empty, '.' or '..' part, "
                         "query or fragment")
    if importlib.util.find_spec(PACKAGES[scheme]) is None:
        raise ValueError(f"{url[:80]!r}: {scheme}:// needs the {PACKAGES[scheme]} package, which is not installed: "
                         f"pip install {PACKAGES[scheme]}")


def within(url: str, root: str) -> bool:
    """Whether `url` is `root` or under it (both checked URLs: no `..` can lead out)."""
    url, root = url.rstrip("/"), root.rstrip("/")
    return url == root or url.startswith(root + "/")


class ObjectSource:
    def __init__(self, url: str, sources: Sources, cache: Cache) -> None:
        check_url(url)
        self.url = url.rstrip("/")
        self.scheme, _, self.path = self.url.partition("://")
        self.sources = sources
        self.cache = cache

    def models(self) -> dict[str, list[Version]]:
        found: dict[str, list[Version]] = {}
        for version in self._complete(self._listing(self.path), depth=2):
            found.setdefault(version.name, []).append(version)
        return {name: sorted(versions, key=lambda version: version.number) for name, versions in found.items()}

    def versions(self) -> list[Version]:
        listing = self._listing(self.path)
        one = {SAVED_MODEL, CARD} & set(listing.get((), {}))
        return sorted(self._complete(listing, depth=0 if one else 1), key=lambda version: version.number)

    def fetch(self, version: Version) -> tuple[Path, Release]:
        """The version's objects, listed again now (complete, or the fetch fails), into the cache,
        under the stamp the scan read. Versions are immutable: never a mix of two uploads, so the
        listing is taken again after the download and any object that changed fails the fetch
        (the staging folder is discarded; the next scan sees the new upload)."""
        path = version.ref.partition("://")[2]
        files = self._listing(path).get((), {})
        if CARD not in files or SAVED_MODEL not in files:
            raise FileNotFoundError(f"{version.ref}: no longer complete (no {CARD} or {SAVED_MODEL} there)")
        before = _stamps(files)
        if version.stamp and before[CARD] != version.stamp:
            raise Reuploaded(f"{version.ref}: uploaded again since it was listed (its {CARD} changed): "
                             "the next scan sees the new upload")
        digest = hashlib.sha256(f"{version.ref}\n{before[CARD]}".encode()).hexdigest()[:16]
        fs = _filesystem(self.scheme)

        def download(staging: Path) -> None:
            for relative, info in files.items():
                if any(part in ("", ".", "..") for part in relative.split("/")):  # a key may say anything
                    raise ValueError(f"{version.ref}: object {relative[:80]!r} would be written outside the version")
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(info["name"], str(staging / relative))
            if _stamps(self._listing(path).get((), {})) != before:
                raise Reuploaded(f"{version.ref}: its objects changed while it was fetched (an upload over it): "
                                 "nothing is kept, the next scan tries again")

        size = sum(int(info.get("size") or 0) for info in files.values())
        return self.cache.fetch(f"{version.name}-{version.number}-{digest}", size, download)

    def _listing(self, path: str) -> dict[tuple[str, ...], dict[str, dict[str, Any]]]:
        """Every object under `path`, grouped by the folder it is in at depths 0, 1 and 2 below
        `path`: {folder's parts: {the object's path below it: its info}} (`_complete` reads the
        depth it needs: a version's own files nest, `variables/...`). Raises when unreadable."""
        fs = _filesystem(self.scheme)
        fs.invalidate_cache()
        objects = fs.find(path, detail=True)
        grouped: dict[tuple[str, ...], dict[str, dict[str, Any]]] = {}
        for key, info in objects.items():
            parts = PurePosixPath(key).relative_to(path).parts if key != path else ()
            for depth in (0, 1, 2):
                if len(parts) > depth:
                    grouped.setdefault(parts[:depth], {})["/".join(parts[depth:])] = info
        return grouped

    def _complete(self, listing: dict[tuple[str, ...], dict[str, dict[str, Any]]], depth: int) -> list[Version]:
        """The complete versions at `depth` below the listed path (2: root/name/version/, 1:
        model/version/, 0: the version itself, named by its card); the others reported."""
        found = []
        for folder, files in listing.items():
            if len(folder) != depth or any(part.startswith(".") for part in folder):
                continue  # a hidden folder: staging, as for folders
            url = "/".join([self.url, *folder])
            number = self._number(url, folder[-1]) if depth else None
            if depth and number is None:
                continue  # not a version number: ignored, with the reason
            if CARD not in files or SAVED_MODEL not in files:
                missing = " and ".join(name for name in (SAVED_MODEL, CARD) if name not in files)
                self.sources.ignore(url, f"incomplete: no {missing} yet (a version is complete once its {CARD} is "
                                         "uploaded, last)")
                continue
            etag = files[CARD].get("ETag", "")
            card = _card(self.scheme, files[CARD]["name"], etag)
            name = folder[0] if depth == 2 else self.url.rsplit("/", 1)[-1] if depth == 1 else card.get("name")
            number = number if depth else card.get("version")
            if not isinstance(name, str) or isinstance(number, bool) or not isinstance(number, int):
                self.sources.ignore(url, f"its {CARD} does not say the model's name and version: export it again")
                continue
            found.append(Version(name, number, url, card.get("kind"), etag))
        return found

    def _number(self, url: str, name: str) -> int | None:
        try:
            return version_number(name)
        except ValueError as reason:
            self.sources.ignore(url, str(reason))
            return None


class Reuploaded(Exception):
    """A version's objects changed between its listing and its download: two uploads, never mixed."""


def _stamps(files: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each object's ETag (its size too, where a store gives no ETag), by its path in the version."""
    return {relative: str(info.get("ETag") or info.get("size")) for relative, info in files.items()}


def _filesystem(scheme: str):
    import fsspec

    return fsspec.filesystem(scheme, use_listings_cache=False, **OPTIONS[scheme])


@functools.lru_cache(maxsize=4096)
def _card(scheme: str, path: str, etag: str) -> dict[str, Any]:
    """A card's fields that a scan needs (name, version, kind), read once per upload (ETag):
    a card that is not JSON is left to the load to report, as for folders."""
    try:
        card = json.loads(_filesystem(scheme).cat_file(path))
    except ValueError:
        return {}
    return card if isinstance(card, dict) else {}
