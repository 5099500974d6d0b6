"""What the load/unload API changed, shared by the worker processes of one service.

BentoML runs each worker in a process of its own, each with its own engine and models, and
an API call reaches one of them. So the change is not kept in that worker alone: it is
written to a small JSON file that every worker of the same `bentoml serve` reads at the
start of its next pass over the repository (within `poll_s`), and that a worker's own change
starts from (manager/control.py). The file is named by the supervisor's pid and start time, in the
temp folder they share (an emptyDir in a pod), beside the lock file that orders the changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class Control:
    explicit: dict[str, set[int]] = dataclasses.field(default_factory=dict)  # versions loaded on request
    unloaded: set[str] = dataclasses.field(default_factory=set)  # models unloaded on request
    configs: dict[str, dict[str, Any]] | None = None  # a reloaded config's tables; None: the settings'

    def to_json(self, generation: int = 0) -> str:
        return json.dumps({"generation": generation,
                           "explicit": {name: sorted(numbers) for name, numbers in self.explicit.items()},
                           "unloaded": sorted(self.unloaded), "configs": self.configs})

    @classmethod
    def from_json(cls, text: str) -> Control:
        data = json.loads(text)
        return cls({name: set(numbers) for name, numbers in data["explicit"].items()}, set(data["unloaded"]),
                   data["configs"])


class SharedControl:
    """The file the workers share. A change is a read-modify-write under an exclusive lock
    (`locked()`, then `save`), started from the freshest state, so that no worker overwrites
    another's change with its stale copy; a generation counter in the file, not its mtime
    (coarse: two writes in one tick look like one), says what is new."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = 0  # the generation this worker last read or wrote

    @classmethod
    def of_supervisor(cls) -> SharedControl:
        parent = os.getppid()
        try:
            started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            started = "0"
        return cls(Path(tempfile.gettempdir()) / f"diptych-control-{parent}-{started}.json")

    @contextlib.contextmanager
    def locked(self) -> Iterator[Control | None]:
        """Hold the workers' lock; yields what another worker wrote since this one's last read
        (None: nothing), for a change to start from before `save`."""
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self.changed()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def save(self, control: Control) -> None:
        """Write `control` as the next generation (inside `locked()`)."""
        generation = max(self._read()[0], self._seen) + 1
        staging = self.path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(control.to_json(generation))
        staging.replace(self.path)  # atomic: a reader sees the old file or the new one
        self._seen = generation

    def changed(self) -> Control | None:
        generation, control = self._read()
        if control is None or generation == self._seen:
            return None
        self._seen = generation
        return control

    def _read(self) -> tuple[int, Control | None]:
        try:
            text = self.path.read_text()
            return int(json.loads(text)["generation"]), Control.from_json(text)
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or not ours: nothing new
            return 0, None
