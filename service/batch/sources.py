"""What a classify job reads: the list of files a SOURCE names, in a fixed order.

SOURCE is a folder (every file under it, recursively, hidden ones left out), a glob
(`photos/**/*.jpg`), or a list: a text file with one path a line (blank lines and `#`
comments skipped) or a CSV file (its `path` column, else its first). Every file becomes a
row of the output, an unreadable one with its error: nothing is filtered by extension,
so a stray README says "not an image" instead of vanishing. The order is fixed (sorted
for folders and globs, as written for lists) because a resumed job finds its place by
position in this list.
"""

from __future__ import annotations

import csv
import glob
from pathlib import Path

LIST_SUFFIXES = (".txt", ".lst", ".csv")
GLOB_CHARACTERS = "*?["


class SourceError(ValueError):
    """SOURCE names nothing that can be read; the message says what to give instead."""


def list_files(source: str) -> list[str]:
    """The paths SOURCE names, in the job's order."""
    path = Path(source)
    if path.is_dir():
        return sorted(str(file) for file in path.rglob("*") if file.is_file() and not _hidden(file, path))
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return _read_list(path)
    if any(character in source for character in GLOB_CHARACTERS):
        found = sorted(name for name in glob.glob(source, recursive=True) if Path(name).is_file())
        if not found:
            raise SourceError(f"the glob {source!r} matches no file")
        return found
    raise SourceError(f"{source}: not a folder, a glob, or a list of paths ({', '.join(LIST_SUFFIXES)})")


def _hidden(file: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in file.relative_to(root).parts)


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


def read_bytes(path: str) -> bytes:
    """A file's bytes; OSError (missing, unreadable, a folder) is the caller's row error."""
    with open(path, "rb") as file:
        return file.read()
