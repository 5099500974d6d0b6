"""Loading one model version: the budget check, its signature, its runtime, warm-up, at a lower CPU priority.

The manager (manager/lifecycle.py) decides which versions to load and when; this says how
one loads, and how an unloaded one gives its memory back.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from contract.card import ModelCard
from contract.signing import Provenance, Unverified, trust

from .config import Settings
from .metrics import metrics
from .models import ModelInfo, ServedModel, locate
from .sources import Version

log = logging.getLogger("diptych")
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
        provenance = verify(version.name, info.path, settings)
        check_signed_identity(version, info.card, settings)
        model = kind.load(dataclasses.replace(info, provenance=provenance), settings)
        model.warm_up()
    return model


def verify(name: str, folder: str, settings: Settings) -> Provenance:
    """The version folder's signature, checked right before it loads: every source (a repository
    folder, the model store, a remote source's local copy) and every hot reload comes through
    here. With `require_signed`, a version it does not prove is refused (raises `Unverified`)."""
    provenance = trust(settings.trusted_keys).check(folder)
    if not provenance.verified and settings.require_signed:
        metrics().model_verification_failures.labels(model=name, reason=provenance.reason).inc()
        raise Unverified(provenance.reason, provenance.detail)
    if settings.trusted_keys and provenance.reason not in ("", "unsigned"):  # a signature that fails: said
        log.warning("%s at %s is loaded though its signature does not verify (require_signed is off): %s: %s",
                    name, folder, provenance.reason, provenance.detail)
    return provenance


def check_signed_identity(version: Version, card: ModelCard, settings: Settings) -> None:
    """With `require_signed`, a version serves only as the name and number its signed card
    gives: a signed `cats/2` copied to `shoes/9` (a swap, or a roll-back under a new number)
    is refused. The name compared is the one its source finds it under (the folder's, the
    store tag's): a `[repository.<name>] path` that serves it under another name is the
    operator's setting, not the bucket's."""
    signed, found = (card.name, card.version), (version.found_as or version.name, version.number)
    if settings.require_signed and signed != found:
        metrics().model_verification_failures.labels(model=version.name, reason="misplaced").inc()
        raise Unverified("misplaced", f"signed as {card.name}:{card.version}, found as {found[0]}:{found[1]}")


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


def release_memory() -> None:
    """Give an unloaded version's memory back to the system: collect its reference cycles, then
    ask glibc to return the freed heap (measured: without `malloc_trim`, the worker's RSS
    stayed ~100 MiB above one version's after an unload, docs/serving.md "Hot reload")."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is reused, not returned
        pass


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
