"""Loading one model version: the budget check, its runtime, warm-up, at a lower CPU priority.

The manager (manager.py) decides which versions to load and when; this says how one loads.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from .config import Settings
from .models import ModelInfo, ServedModel, locate
from .sources import Version

LOAD_NICENESS = 5  # CFS weights: a nice-5 thread gets ~1/4 of a core that a nice-0 request thread also wants


class BudgetExceeded(Exception):
    """Loading a version would pass `memory_budget_mb`."""


def load_version(version: Version, folder: Path, kinds: Mapping[str, type[ServedModel]],
                 settings: Settings) -> ServedModel:
    """The version, loaded from `folder` (its local copy: sources' `fetch`), converted and proven
    for LiteRT, and warmed up; raises what went wrong."""
    with _lower_priority():
        info: ModelInfo = locate(str(folder))
        kind = kinds.get(info.kind)
        if kind is None:
            raise ValueError(f"{version.ref} holds a model of kind {info.kind!r}; this service serves {sorted(kinds)}")
        info = dataclasses.replace(info, name=version.name, version=str(version.number), source=version.ref)
        model = kind.load(info, settings)
        model.warm_up()
    return model


def check_budget(footprint: int, loaded: int, settings: Settings) -> None:
    budget = settings.memory_budget_mb * 2**20
    if budget and loaded + footprint > budget:
        raise BudgetExceeded(f"loading it ({footprint / 2**20:.1f} MiB of weights) beside what is loaded "
                             f"({loaded / 2**20:.1f} MiB) would exceed memory_budget_mb = {settings.memory_budget_mb:g}")


def footprint(folder: Path) -> int:
    """Bytes of weights on disk (variables, the LiteRT flatbuffer) in a version folder: an
    estimate of the memory a loaded version holds, known before loading it."""
    files = [*Path(folder, "variables").glob("*"), Path(folder, "litert", "model.tflite")]
    return sum(path.stat().st_size for path in files if path.is_file())


class _lower_priority:
    """This thread at LOAD_NICENESS while it loads (Linux schedules threads one by one); each
    pass of the manager runs on a thread of its own, so no request thread inherits it."""

    def __enter__(self) -> None:
        self._thread = threading.get_native_id()
        try:
            self._before = os.getpriority(os.PRIO_PROCESS, self._thread)
            os.setpriority(os.PRIO_PROCESS, self._thread, self._before + LOAD_NICENESS)
        except (AttributeError, OSError):
            self._before = None

    def __exit__(self, *exc: object) -> None:
        if self._before is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, self._thread, self._before)  # raising it back needs root
            except OSError:
                pass
