"""The job log that makes a bulk job resumable: whole parts, written once, never half.

The work (a list of items in a fixed order) is cut into parts of `part_size` items by
position. A finished part's rows go to `<log>/parts/<part>.jsonl`, written to a
temporary name, flushed to disk and renamed: a part is logged whole or not at all, so a
job killed at any instant (SIGKILL included) restarts at the first part not logged, with
no row lost and none twice. `job.json` records what the job is (its arguments, the
model's name and version, a digest of the item list); resuming with anything different
is refused, since the log would then mix two jobs. When the output is complete the log
is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SPEC = "job.json"
PARTS = "parts"


class JobLogError(RuntimeError):
    """The log belongs to another job; the message says how to start over."""


class JobLog:
    def __init__(self, folder: Path, spec: dict[str, Any], items: list[dict[str, Any]], part_size: int,
                 line: Callable[[dict[str, Any]], str] = json.dumps) -> None:
        self.folder = folder
        self.part_size = part_size
        self.line = line  # a row as one line of JSON (the job's own, where it knows a faster way)
        self.parts = -(-len(items) // part_size)
        self.spec = {**spec, "part_size": part_size, "items": len(items), "items_sha256": digest(items)}

    def open(self) -> int:
        """Start the log, or take up the one a killed run left; returns the parts already done."""
        path = self.folder / SPEC
        if path.is_file():
            found = json.loads(path.read_text())
            if found != self.spec:
                changed = sorted(key for key in {*found, *self.spec} if found.get(key) != self.spec.get(key))
                raise JobLogError(f"{self.folder} holds an unfinished job with other settings ({', '.join(changed)}): "
                                  f"run it again as it was to resume it, or pass --overwrite to start over")
        else:
            (self.folder / PARTS).mkdir(parents=True, exist_ok=True)
            _write_atomically(path, json.dumps(self.spec, indent=2).encode())
        return len(self.done())

    def done(self) -> set[int]:
        return {int(path.stem) for path in (self.folder / PARTS).glob("*.jsonl")}

    def pending(self, shard: tuple[int, int] = (0, 1)) -> list[int]:
        """The parts still to run (of this shard: every n-th part from the i-th)."""
        index, count = shard
        done = self.done()
        return [part for part in range(index, self.parts, count) if part not in done]

    def bounds(self, part: int) -> slice:
        return slice(part * self.part_size, (part + 1) * self.part_size)

    def size(self, part: int) -> int:
        return len(range(self.spec["items"])[self.bounds(part)])

    def write(self, part: int, rows: list[dict[str, Any]]) -> None:
        _write_atomically(self._part_path(part), "".join(self.line(row) + "\n" for row in rows).encode())

    def rows(self, parts: list[int]) -> Iterator[list[dict[str, Any]]]:
        """The logged rows, part by part in order: the output is written from these, streaming."""
        for part in parts:
            yield [json.loads(line) for line in self._part_path(part).read_text().splitlines()]

    def lines(self, parts: list[int]) -> Iterator[bytes]:
        """The logged parts as they are on disk, JSON Lines, for an output in that very format."""
        for part in parts:
            yield self._part_path(part).read_bytes()

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _part_path(self, part: int) -> Path:
        return self.folder / PARTS / f"{part:06d}.jsonl"


def digest(items: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
