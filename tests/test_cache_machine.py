"""A model-based test of the object-storage cache (service/core/sources/cache.py): a hypothesis
state machine has two workers (two `Cache`s over one folder, as the service's worker processes
each hold their own) fetch versions of known sizes, some of whose downloads fail halfway, and
release them, in random order; after every step the folder must be exactly what a model of a
least-recently-used cache, bounded, that never evicts a held version, predicts:
- the versions on disk are the model's, and together within the bound;
- every held version is on disk; a fetch that cannot fit fails and evicts nothing;
- a failed download leaves nothing behind (no staging folder, no version).
Derandomized: CI runs the same sequences every time."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from service.core.sources import Cache, CacheFull

SIZES = {"shoes-1-a": 300, "shoes-2-b": 500, "shoes-3-c": 200, "boots-1-d": 700, "boots-2-e": 400}
BOUND = 1200


class Broken(Exception):
    """The endpoint went away halfway through a download."""


def downloader(size: int, fails: bool):
    def download(staging: Path) -> None:
        (staging / "variables").mkdir()
        (staging / "variables" / "data").write_bytes(b"x" * size)
        if fails:
            raise Broken("connection reset halfway")
    return download


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="cache-machine-")) / "cache"
        self.workers = [Cache(self.folder, BOUND), Cache(self.folder, BOUND)]
        self.holds: list[tuple[str, object]] = []  # (key, its release), in the order taken
        self.present: dict[str, int] = {}  # the model: key → its last use (a counter)
        self.uses = 0

    def _evictions(self, key: str) -> list[str] | None:
        """What the model evicts to fit `key` (least recently used first, held ones never), or None: it cannot fit."""
        held = {taken for taken, _ in self.holds}
        used, chosen = sum(SIZES[other] for other in self.present), []
        for other in sorted((other for other in self.present if other not in held), key=self.present.get):
            if used + SIZES[key] <= BOUND:
                break
            chosen.append(other)
            used -= SIZES[other]
        return chosen if used + SIZES[key] <= BOUND else None

    @rule(worker=st.sampled_from([0, 1]), key=st.sampled_from(sorted(SIZES)), fails=st.booleans())
    def fetch(self, worker: int, key: str, fails: bool) -> None:
        cached = key in self.present
        evicted = [] if cached else self._evictions(key)
        if evicted is None:
            with pytest.raises(CacheFull, match="cache_max_mb"):
                self.workers[worker].fetch(key, SIZES[key], downloader(SIZES[key], fails))
            return
        for other in evicted:
            del self.present[other]
        if fails and not cached:
            with pytest.raises(Broken):
                self.workers[worker].fetch(key, SIZES[key], downloader(SIZES[key], fails))
            return
        folder, release = self.workers[worker].fetch(key, SIZES[key], downloader(SIZES[key], fails))
        assert folder == self.folder / key and (folder / "variables" / "data").stat().st_size == SIZES[key]
        self.uses += 1
        self.present[key] = self.uses
        self.holds.append((key, release))

    @precondition(lambda self: self.holds)
    @rule(index=st.integers(0, 10), twice=st.booleans())
    def release(self, index: int, twice: bool) -> None:
        _, release = self.holds.pop(index % len(self.holds))
        release()
        if twice:
            release()  # a second call gives nothing back twice

    @invariant()
    def the_folder_is_the_models(self) -> None:
        if not self.folder.exists():
            return
        on_disk = {path.name for path in self.folder.iterdir() if path.is_dir() and not path.name.startswith(".")}
        assert on_disk == set(self.present)
        assert sum(SIZES[key] for key in on_disk) <= BOUND
        assert {key for key, _ in self.holds} <= on_disk
        assert not list(self.folder.glob(".fetch-*")), "a staging folder was left behind"

    def teardown(self) -> None:
        for _, release in self.holds:
            release()
        shutil.rmtree(self.folder.parent, ignore_errors=True)


def test_the_cache_keeps_its_bound_and_never_evicts_a_held_version():
    run_state_machine_as_test(CacheMachine, settings=settings(
        max_examples=60, stateful_step_count=40, deadline=None, derandomize=True, print_blob=True,
        suppress_health_check=list(HealthCheck)))
