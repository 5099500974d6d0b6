"""What the load/unload API changed, shared by the worker processes of one service.

BentoML runs each worker in a process of its own, each with its own engine and models, and
an API call reaches one of them. So the change is not kept in that worker alone: it is
written to a small JSON file that every worker of the same `bentoml serve` reads at the
start of its next pass over the repository (within `poll_s`). The file is named by the
supervisor's pid and start time, in the temp folder they share (an emptyDir in a pod).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class Control:
    explicit: dict[str, set[int]] = dataclasses.field(default_factory=dict)  # versions loaded on request
    unloaded: set[str] = dataclasses.field(default_factory=set)  # models unloaded on request
    configs: dict[str, dict[str, Any]] | None = None  # a reloaded config's tables; None: the settings'

    def to_json(self) -> str:
        return json.dumps({"explicit": {name: sorted(numbers) for name, numbers in self.explicit.items()},
                           "unloaded": sorted(self.unloaded), "configs": self.configs})

    @classmethod
    def from_json(cls, text: str) -> Control:
        data = json.loads(text)
        return cls({name: set(numbers) for name, numbers in data["explicit"].items()}, set(data["unloaded"]),
                   data["configs"])


class SharedControl:
    """The file the workers share; `changed()` answers only what another worker wrote."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: int | None = None

    @classmethod
    def of_supervisor(cls) -> SharedControl:
        parent = os.getppid()
        try:
            started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            started = "0"
        return cls(Path(tempfile.gettempdir()) / f"diptych-control-{parent}-{started}.json")

    def save(self, control: Control) -> None:
        staging = self.path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(control.to_json())
        staging.replace(self.path)  # atomic: a reader sees the old file or the new one
        self._seen = self.path.stat().st_mtime_ns

    def changed(self) -> Control | None:
        try:
            mtime = self.path.stat().st_mtime_ns
            if mtime == self._seen:
                return None
            control = Control.from_json(self.path.read_text())
        except (OSError, ValueError, KeyError):
            return None
        self._seen = mtime
        return control
