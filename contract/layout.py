"""Where exported models live: numbered version folders, as TF Serving reads them.

    models/classifier/1/saved_model.pb, model_card.json, calibration.npz, variables/ ...
    models/classifier/2/...

A reference to a model is a folder (a version folder, or its parent for the highest
version), an object-store URL laid out the same way (`s3://bucket/models/classifier`: the
service fetches it, service/core/sources), or a BentoML model-store tag
(`classifier:latest`, `classifier:3`), which `training.publish` fills from a version folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

SAVED_MODEL = "saved_model.pb"
MAX_VERSION = 2**63 - 1  # TF Serving's versions are int64
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # a scheme (RFC 3986) and `//`: never a folder, nor a tag


def ascii_number(text: object) -> int | None:
    """ASCII digits within int64 as an int, else None: the one reading of a version number, from
    a folder, a config or a request. `str.isdigit` alone also takes "²" (which `int()` refuses)
    and "١" (which `int()` reads as 1), and `int()` refuses thousands of digits."""
    if not (isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= len(str(MAX_VERSION))):
        return None
    number = int(text)
    return number if number <= MAX_VERSION else None


def version_number(name: str) -> int:
    """A version folder's number: its name is the number as written, in ASCII digits (no sign, no
    leading zero, nothing else), at most `MAX_VERSION`. Else a ValueError saying why: `01` would
    be merged with `1`."""
    if not (name.isascii() and name.isdigit()):
        raise ValueError(f"{name!r} is not a version number (ASCII digits only)")
    if len(name) > 1 and name.startswith("0"):
        raise ValueError(f"{name!r} has a leading zero: a version folder is named by its number as written "
                         f"({int(name)}), so it is never merged with version {int(name)}")
    number = ascii_number(name)
    if number is None:
        raise ValueError(f"{name[:24]!r}: a version number is at most {MAX_VERSION} (int64)")
    return number


def is_version_name(name: str) -> bool:
    try:
        version_number(name)
    except ValueError:
        return False
    return True


def versions(root: str | os.PathLike) -> list[int]:
    """The numbered version folders under `root`, lowest first (other names are not versions)."""
    return sorted(int(path.name) for path in Path(root).glob("*") if is_version_name(path.name) and path.is_dir())


def latest_version_dir(root: str | os.PathLike) -> Path | None:
    """The highest-numbered version folder under `root`, or None when there is none."""
    found = versions(root)
    return Path(root) / str(found[-1]) if found else None


def version_dir(path: str | os.PathLike) -> Path:
    """A version folder as given, or the highest version under a folder of versions."""
    if is_url(str(path)):  # Path() would read `s3://b/m` as the folder `s3:/b/m`
        raise FileNotFoundError(f"{path}: a URL, not a folder: the service fetches object-store models into its "
                                "cache; elsewhere copy the version folder here first")
    path = Path(path)
    if (path / SAVED_MODEL).is_file():
        return path
    latest = latest_version_dir(path) if path.is_dir() else None
    if latest is None:
        raise FileNotFoundError(f"{path}: no saved_model.pb here, nor numbered version folders holding one")
    return latest


def is_url(ref: str) -> bool:
    """`scheme://...`: a model in object storage (whether its scheme is served, sources say)."""
    return URL.match(ref) is not None


def is_folder_ref(ref: str) -> bool:
    """A path names a folder; a URL names an object store; anything else is a model-store tag."""
    return not is_url(ref) and ("/" in ref or Path(ref).is_dir())


def is_location(ref: str) -> bool:
    """A folder or an object-store URL: a place holding versions, as opposed to a store tag."""
    return is_url(ref) or is_folder_ref(ref)


def resolve(ref: str) -> tuple[Path, str | None, str | None]:
    """A folder or a store tag → (version folder, store name, store version); the store's
    name and version are None for a folder, whose card names it."""
    if is_location(ref):
        return version_dir(ref), None, None  # a URL: refused there, with what to do
    import bentoml  # only for tags: folders need no model store

    model = bentoml.models.get(ref)
    return Path(model.path), model.tag.name, model.tag.version


@contextlib.contextmanager
def new_version_folder(root: str | os.PathLike, sign_key: str | None = None) -> Iterator[tuple[Path, int]]:
    """Yield (staging folder, version) for the next export under `root`.

    The export is written into a hidden temporary folder and renamed into place only when
    the block finishes, so a crash never leaves a half-written version that a server
    would pick up as the latest. With `sign_key` (an EC private key, PEM), the finished folder
    is signed whole before it appears (contract/signing.py).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    version = (versions(root) or [0])[-1] + 1
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=root))
    try:
        yield staging, version
        if sign_key:
            from .signing import sign

            sign(staging, sign_key)
        staging.rename(root / str(version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
