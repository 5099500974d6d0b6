"""What a classify job reads: the files a SOURCE names, in a fixed order.

SOURCE is a folder (the files under it, recursively), a glob (`photos/**/*.jpg`), or a
list: a text file with one path a line (blank lines and `#` comments skipped) or a CSV
file (its `path` column, else its first). In a folder or a glob, files are chosen as the
trainer chooses them: by image extension (`contract.imagefolder.IMAGE_EXTENSIONS`), hidden
ones left out; the others are counted as skipped (a generated folder's `manifest.jsonl` is
not an image to classify). A list is taken as written: each path it names is a row. Every
chosen file becomes a row of the output, an unreadable one with its error. The walk
follows symlinked folders but lists each real folder once: a symlink loop (or a second
link to a folder already listed) is a row with that error, never a walk without end. The
order is fixed (sorted for folders and globs, as written for lists) because a resumed job
finds its place by position in this list.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import fnmatch
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from contract.imagefolder import IMAGE_EXTENSIONS
from service.core import LimitExceeded, Settings

LIST_SUFFIXES = (".txt", ".lst", ".csv")
GLOB_CHARACTERS = "*?["
# A named pipe, socket or device in a folder: skipped, as reading one could wait for ever.
NOT_REGULAR = "not a regular file"


class SourceError(ValueError):
    """SOURCE names nothing that can be read; the message says what to give instead."""


@dataclasses.dataclass(frozen=True)
class Listing:
    files: list[str]  # the job's files, in its order
    errors: dict[str, str] = dataclasses.field(default_factory=dict)  # a listed path that cannot be read: why
    skipped: int = 0  # files in a folder or a glob that are not images by their extension


def list_files(source: str) -> Listing:
    """The files SOURCE names, in the job's order."""
    path = Path(source)
    if path.is_dir():
        return _walked(path, lambda parts: True, lambda parts: True)
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return Listing(_read_list(path))
    if any(character in source for character in GLOB_CHARACTERS):
        return _globbed(source)
    raise SourceError(f"{source}: not a folder, a glob, or a list of paths ({', '.join(LIST_SUFFIXES)})")


def _globbed(source: str) -> Listing:
    """A glob, matched as `glob.glob(recursive=True)` matches (`**` is any number of folders,
    wildcards never match a leading dot) but by one bounded walk from its fixed part."""
    parts = Path(source).parts
    fixed = next(index for index, part in enumerate(parts) if any(c in part for c in GLOB_CHARACTERS))
    pattern = parts[fixed:]
    base = Path(*parts[:fixed]) if fixed else Path(".")
    found = _walked(base, lambda rel: _matches(pattern, rel, prefix=True), lambda rel: _matches(pattern, rel)) \
        if base.is_dir() else Listing([])
    if not found.files:
        others = f" ({found.skipped} other files: not images by their extension)" if found.skipped else ""
        raise SourceError(f"the glob {source!r} matches no image file{others}")
    return found


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...], prefix: bool = False) -> bool:
    """Whether a path (its parts) matches the pattern's parts; with `prefix`, whether a
    path below this folder still could. Matched part by part, keeping the set of pattern
    positions reached (at most one per pattern part): trying each way a `**` could match
    was exponential in the number of `**`."""
    reached = _past_stars(pattern, {0})
    for part in parts:
        following = {index for index in reached if index < len(pattern) and pattern[index] == "**"}
        following |= {index + 1 for index in reached
                      if index < len(pattern) and pattern[index] != "**" and fnmatch.fnmatchcase(part, pattern[index])}
        reached = _past_stars(pattern, following)
        if not reached:
            return False
    return any(index < len(pattern) for index in reached) if prefix else len(pattern) in reached


def _past_stars(pattern: tuple[str, ...], reached: set[int]) -> set[int]:
    """The positions reached, and those after any `**` there (it may match no folder)."""
    closed = set(reached)
    for index in reached:
        while index < len(pattern) and pattern[index] == "**":
            index += 1
            closed.add(index)
    return closed


def _walked(root: Path, descend: Callable[[tuple[str, ...]], bool], chosen: Callable[[tuple[str, ...]], bool]) \
        -> Listing:
    files, errors, skipped = [], {}, 0
    for path, error in _walk(root, descend, chosen):
        if error is None and Path(path).suffix.lower() in IMAGE_EXTENSIONS:
            files.append(path)
        elif error is None or error is NOT_REGULAR:
            skipped += 1
        else:
            files.append(path)
            errors[path] = error
    return Listing(sorted(files), errors, skipped)


def _walk(root: Path, descend: Callable[[tuple[str, ...]], bool], chosen: Callable[[tuple[str, ...]], bool]) \
        -> Iterator[tuple[str, str | None]]:
    """(path, None for a file, else why it is not one) for each chosen entry under root but
    folders, hidden ones left out, walking the folders `descend` accepts, each real folder
    (device and inode) once: a second way into one is a symlink loop's row."""
    listed = {_identity(os.stat(root)): str(root)}
    folders: list[tuple[Path, tuple[str, ...]]] = [(root, ())]
    while folders:
        folder, above = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as error:
            yield str(folder), f"unreadable folder: {error.strerror or error}"
            continue
        for entry in entries:
            parts, path = (*above, entry.name), str(folder / entry.name)
            if entry.name.startswith("."):
                continue
            try:
                info = entry.stat()
            except OSError as error:  # a symlink loop, or a broken link (a row if it is an image's, saying why)
                if chosen(parts):
                    yield path, "a symlink loop: it never reaches a file" if error.errno == errno.ELOOP else None
                continue
            if not stat.S_ISDIR(info.st_mode):
                if chosen(parts):
                    yield path, None if stat.S_ISREG(info.st_mode) else NOT_REGULAR
            elif descend(parts):
                first = listed.setdefault(_identity(info), path)
                if first != path:
                    yield path, f"a symlink loop: a link to {first}, a folder already listed"
                else:
                    folders.append((folder / entry.name, parts))


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _read_list(path: Path) -> list[str]:
    """Paths from a list file; relative ones are relative to the list's own folder."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as file:
            rows = [row for row in csv.reader(file) if row and row[0].strip()]
        has_header = bool(rows) and "path" in rows[0]
        column = rows[0].index("path") if has_header else 0
        names = [row[column].strip() for row in rows[has_header:] if len(row) > column]
    else:
        lines = (line.strip() for line in path.read_text().splitlines())
        names = [line for line in lines if line and not line.startswith("#")]
    return [name if Path(name).is_absolute() else str(path.parent / name) for name in names]


def read_bytes(path: str, limit: int = Settings.max_body_bytes) -> bytes:
    """A file's bytes, if no more than `limit` (the service's request body limit: a file is
    classified only if a request could carry it); else LimitExceeded, having read at most
    that. OSError (missing, unreadable, a folder, a symlink loop, not a regular file) is the
    caller's row error. Opened without blocking, then checked: a list may name a named pipe,
    whose plain open() waits for a writer for ever."""
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
        info = os.fstat(file.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, NOT_REGULAR, path)
        size = info.st_size
        data = b"" if size > limit else file.read(limit + 1)  # + 1: a file that grows, or a pipe, is caught too
    if size > limit or len(data) > limit:
        shown = f"{size:,} bytes" if size > limit else f"more than {limit:,} bytes"
        raise LimitExceeded("file", f"the file is {shown}, more than the limit of {limit:,} bytes (max_body_bytes)")
    return data
