"""A model-based test of the model lifecycle (#23): a hypothesis state machine drives a real
engine and repository over a temporary folder with random sequences of what operators and
clients do (copy a version in, remove or rename one, add odd folders, load and unload by API,
valid and invalid config changes, pinned and unpinned requests, the root vanishing and coming
back) and checks after every step what the repository promises (docs/repository.md):

- the default model has an available version unless the operator removed all of its versions
  (or left only broken ones);
- a pinned request is answered by that version, with that version's scores, or refused with a
  4xx that says its state; an unpinned one by an available version, with its own scores;
- `/models`, the V2 repository index, TF Serving's model status and the metrics agree;
- no version is loaded twice, and a closed version's memory is released (nothing holds it).

Versions alternate between two tiny classifiers with different weights, so an answer from the
wrong version shows in its scores. Derandomized: CI runs the same sequences every time."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import prometheus_client
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from PIL import Image

from service import tfserving, v2
from service.core import Engine, NotReady, ServiceError, Settings, VersionState
from service.core.manager import lifecycle as manager_module
from service.http.api import version_entry
from service.http.errors import STATUS
from service.kinds import KINDS, Classifier
from tests.conftest import eventually

NAME = "shoes"
NUMBERS = st.integers(1, 4)
STEPS = 300  # at least this many steps in all (#23)
FAST = dict(classifier_runtime="tensorflow", generator_runtime="tensorflow", warmup_rounds=0, interpreters=1,
            poll_s=0, store=False)
POLICIES = ("all", "latest:1", "latest:2", "specific:1", "specific:2,3", "specific:4")
BAD_TABLES = (  # each refused whole, with a 4xx, changing nothing
    {"traffic": {"nowhere": 100}}, {"shadow": "ghost"}, {"labels": {"7": 1}}, {"versions": "specific:999"},
    {"versions": "latest:0"}, {"labels": {"stable": -1}}, {"log_sample": 2}, {"bogus": 1},
    {"path": "/etc"},
)
ODD_FOLDERS = ("01", "\u0661", "1a", "99999999999999999999999", " 2")


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)).save(buffer, format="PNG")
    return buffer.getvalue()


def client_error(error: ServiceError) -> bool:
    """What HTTP answers for it is a 4xx (the gRPC mapping follows the same classes)."""
    return 400 <= next(code for kind, code in STATUS.items() if isinstance(error, kind)) < 500


def scores_of(result) -> tuple[tuple[str, float], ...]:
    return tuple((label, round(float(score), 5)) for label, score in result.predictions[0])


class Lifecycle(RuleBasedStateMachine):
    sources: dict[int, Path]  # version number parity → an export with those weights (set by the test)
    generator: Path
    recorder: list[list[weakref.ref]]  # where the manager's loads are recorded (set by the test)
    steps = 0

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="lifecycle-"))
        self.root = self.tmp / "models"
        self.hidden = self.tmp / "models.away"
        self.disk: dict[int, bool] = {}  # version number → a good export (False: a broken one)
        self.expected: dict[Path, tuple] = {}  # an export's scores on the test image
        self.created: list[weakref.ref] = []  # every version this engine loaded, weakly
        self.recorder[:] = [self.created]
        self.copy_in(1, True)
        self.engine = Engine(Settings(classifier=NAME, generator=str(self.generator), model_root=str(self.root),
                                      repository={NAME: {"versions": "all"}}, **FAST), KINDS)
        self.engine.load()
        assert self.engine.ready

    def teardown(self) -> None:
        self.engine.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------------
    def source(self, number: int) -> Path:
        return self.sources[number % 2]

    def reconcile(self) -> None:
        type(self).steps += 1
        self.engine.manager.reconcile()
        assert eventually(lambda: "unloading" not in self.states().values(), 60), self.states()

    def states(self) -> dict[int, str]:
        entry = self.engine.status().get(NAME)
        return {number: slot.state for number, slot in entry.versions.items()} if entry else {}

    def copy_in(self, number: int, good: bool) -> None:
        staging = self.root / NAME / f".{number}.partial"
        shutil.copytree(self.source(number), staging)
        if not good:
            (staging / "saved_model.pb").write_bytes(b"not a SavedModel")
        staging.rename(self.root / NAME / str(number))
        self.disk[number] = good

    def load_with_config(self, table: dict) -> None:
        """A V2 repository load whose `config` is the model's whole table, as an admin sends it."""
        asyncio.run(v2.repository_load(self.engine, NAME, {"config": json.dumps(table)}))

    def classify(self, ref: str | None):
        return asyncio.run(self.engine.get(Classifier, ref).classify([png()], 10))

    def answer_is_its_versions(self, result) -> None:
        version = int(result.model.version)
        assert self.states().get(version) in ("available", "unloading"), (version, self.states())
        assert scores_of(result) == self.scores(self.source(version)), f"version {version} answered another's"

    def scores(self, source: Path) -> tuple:
        if source not in self.expected:
            self.expected[source] = self._reference_scores(source)
        return self.expected[source]

    def _reference_scores(self, source: Path) -> tuple:
        """The export's own scores, from its SavedModel outside the engine."""
        import tensorflow as tf

        loaded = tf.saved_model.load(str(source))
        out = loaded.signatures["serving_default"](image_bytes=tf.constant([png()]))
        pairs = sorted(zip(out["classes"][0].numpy(), out["scores"][0].numpy()), key=lambda pair: -pair[1])
        return tuple((label.decode(), round(float(score), 5)) for label, score in pairs)

    def refused_changing_nothing(self, action) -> None:
        before = self.snapshot()
        with pytest.raises(ServiceError) as refused:
            action()
        assert client_error(refused.value), refused.value
        self.reconcile()
        assert self.snapshot() == before, "a refused change changed something"

    def snapshot(self) -> tuple:
        configs = self.engine.manager.repository.configs
        return (self.states(), {name: config.table() for name, config in configs.items()})

    # -- what operators do to the folder -----------------------------------------------------
    @precondition(lambda self: self.root.is_dir())
    @rule(number=NUMBERS, good=st.booleans())
    def copy_a_version_in(self, number: int, good: bool) -> None:
        if number not in self.disk:
            self.copy_in(number, good)
        self.reconcile()

    @precondition(lambda self: self.root.is_dir())
    @rule(number=NUMBERS)
    def remove_a_version(self, number: int) -> None:
        if self.disk.pop(number, None) is not None:
            shutil.rmtree(self.root / NAME / str(number))
        self.reconcile()

    @precondition(lambda self: self.root.is_dir())
    @rule(number=NUMBERS, to=NUMBERS)
    def rename_a_version(self, number: int, to: int) -> None:
        if number in self.disk and to not in self.disk and self.source(number) == self.source(to):
            (self.root / NAME / str(number)).rename(self.root / NAME / str(to))
            self.disk[to] = self.disk.pop(number)
        self.reconcile()

    @precondition(lambda self: self.root.is_dir())
    @rule(name=st.sampled_from(ODD_FOLDERS))
    def add_an_odd_folder(self, name: str) -> None:
        """Not a version: ignored (or refused with a reason), never a stopped scan."""
        folder = self.root / NAME / name
        if not folder.exists():
            shutil.copytree(self.sources[1], folder)
        self.reconcile()

    @precondition(lambda self: self.root.is_dir())
    @rule()
    def the_root_vanishes(self) -> None:
        self.root.rename(self.hidden)
        self.reconcile()

    @precondition(lambda self: self.hidden.is_dir())
    @rule()
    def the_root_comes_back(self) -> None:
        self.hidden.rename(self.root)
        self.reconcile()

    # -- what admins do through the API ------------------------------------------------------
    @rule(number=st.none() | NUMBERS)
    def load_by_api(self, number: int | None) -> None:
        try:
            asyncio.run(self.engine.load_model(NAME, number))
        except ServiceError as error:
            assert client_error(error), error
        self.reconcile()

    @rule(number=st.none() | NUMBERS)
    def unload_by_api(self, number: int | None) -> None:
        try:
            asyncio.run(self.engine.unload_model(NAME, number))
        except ServiceError as error:
            assert client_error(error), error
        self.reconcile()

    @rule(policy=st.sampled_from(POLICIES))
    def configure(self, policy: str) -> None:
        try:
            self.load_with_config({"versions": policy})
        except ServiceError as error:
            assert client_error(error), error
        self.reconcile()

    @rule(table=st.sampled_from(BAD_TABLES))
    def configure_badly(self, table: dict) -> None:
        self.refused_changing_nothing(lambda: self.load_with_config(table))

    # -- what clients do ---------------------------------------------------------------------
    @rule(number=NUMBERS)
    def pinned_request(self, number: int) -> None:
        type(self).steps += 1
        try:
            result = self.classify(f"{NAME}:{number}")
        except NotReady:  # 503: the default model itself has no version left to serve
            assert not self.engine.ready
            return
        except ServiceError as error:
            assert client_error(error), error
            state = self.states().get(number)
            assert state is None or state in str(error), (state, str(error))  # it says the version's state
            return
        assert result.model.version == str(number)
        self.answer_is_its_versions(result)

    @precondition(lambda self: self.engine.manager.available(NAME))
    @rule()
    def unpinned_request(self) -> None:
        type(self).steps += 1
        self.answer_is_its_versions(self.classify(None))

    # -- what must hold after every step -----------------------------------------------------
    @invariant()
    def the_default_model_has_an_available_version(self) -> None:
        # What the folder holds while the root is away too (a remount hides, it does not remove).
        none_loadable = not any(self.disk.values())
        assert none_loadable or self.engine.manager.available(NAME), (self.disk, self.states())

    @invariant()
    def every_view_of_the_versions_agrees(self) -> None:
        status = self.engine.status().get(NAME)
        states = self.states()
        if status is None:
            assert not any(entry["name"] == NAME for entry in v2.repository_index(self.engine))
            return
        listed = {int(e["version"]): e["state"] for e in
                  (version_entry(slot) for slot in status.versions.values())}
        index = {int(e["version"]): e["state"] for e in v2.repository_index(self.engine) if e["name"] == NAME}
        served = {number: state for number, state, _ in tfserving.version_status(self.engine, NAME)}
        gauges = {number: state for number in states for state in VersionState
                  if prometheus_client.REGISTRY.get_sample_value(
                      "diptych_model_versions", {"model": NAME, "version": str(number), "state": state}) == 1}
        assert listed == states
        assert index == {number: v2.REPOSITORY_STATES[state] for number, state in states.items()}
        assert served == {number: tfserving.STATES[state] for number, state in states.items()}
        assert gauges == states

    @invariant()
    def no_version_is_loaded_twice_and_closed_ones_are_freed(self) -> None:
        open_keys, open_ids = self.open_models()
        assert len(open_keys) == len(set(open_keys)), f"loaded twice: {sorted(open_keys)}"
        slots = {id(slot.model) for versions in self.engine.manager._slots.values()  # the manager's own records
                 for slot in versions.values() if slot.model is not None}
        assert open_ids <= slots, "an open version the manager lost track of"
        gc.collect()
        held = [ref for ref in self.created if ref() is not None and ref().batcher._closed]
        assert not held, f"{len(held)} closed versions still held in memory"

    def open_models(self) -> tuple[list[tuple[str, str]], set[int]]:
        """(name, version) and identity of every loaded version not closed yet (no reference kept)."""
        models = [ref() for ref in self.created]
        alive = [model for model in models if model is not None and not model.batcher._closed]
        return [(model.info.name, model.info.version) for model in alive], {id(model) for model in alive}


def test_the_lifecycle_keeps_its_promises_over_random_sequences(tiny_models, monkeypatch):
    recorder: list[list[weakref.ref]] = [[]]
    load_version = manager_module.load_version

    def recorded(*args, **kwargs):
        model = load_version(*args, **kwargs)
        recorder[0].append(weakref.ref(model))
        return model

    monkeypatch.setattr(manager_module, "load_version", recorded)
    Lifecycle.sources = {1: tiny_models["classifier"], 0: tiny_models["other_classifier"]}
    Lifecycle.generator = tiny_models["generator"]
    Lifecycle.recorder = recorder
    Lifecycle.steps = 0
    run_state_machine_as_test(Lifecycle, settings=settings(
        max_examples=12, stateful_step_count=40, deadline=None, derandomize=True, print_blob=True,
        suppress_health_check=list(HealthCheck)))
    assert Lifecycle.steps >= STEPS, f"only {Lifecycle.steps} steps ran"
