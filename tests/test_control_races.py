"""The load/unload API under concurrency and failure, in-process: a failed load undoes only its
own change, workers that share one control file never overwrite each other's changes, and a
version that failed before blocks no unrelated change of its model. On real engines over
repository folders of the tiny models (docs/repository.md, "Changes are checked whole")."""

from __future__ import annotations

import asyncio
import threading

import pytest

import service.core.manager.lifecycle as manager_module
from service.core import Engine, Settings, ValidationError
from service.core.control import Control, SharedControl
from service.kinds import KINDS
from tests.conftest import eventually
from tests.test_repository import FAST, add_version, classify, engine_for, repository, versions  # noqa: F401


def test_a_failed_load_keeps_an_unload_accepted_while_it_loaded(repository, tiny_models, monkeypatch):
    """The load of a broken version 3 fails while an unload of another model is handled: the
    rollback reverts the load alone, and the unload stays (it reverted both)."""
    add_version(repository, "boots", 1, tiny_models["other_classifier"])
    add_version(repository, "shoes", 3, tiny_models["classifier"])
    engine = engine_for(repository, tiny_models, repository={"shoes": {"versions": "specific:1,2"}})
    unload = threading.Thread(target=engine.manager.unload, args=("boots",))
    real = manager_module.load_version

    def broken_three(version, *args):
        if (version.name, version.number) == ("shoes", 3):
            unload.start()  # another admin's call, while this load is under way
            eventually(lambda: "boots" in engine.manager._control.unloaded, 10)  # accepted (or waits its turn)
            raise RuntimeError("broken version 3")
        return real(version, *args)

    monkeypatch.setattr(manager_module, "load_version", broken_three)
    try:
        assert versions(engine, "boots") == {1: "available"}
        with pytest.raises(ValidationError, match="broken version 3.*nothing was changed"):
            engine.manager.load("shoes", 3)
        unload.join(60)
        assert not unload.is_alive()
        engine.manager.reconcile()
        assert "boots" in engine.manager._control.unloaded, "the unload was reverted by another call's rollback"
        assert eventually(lambda: "boots" not in engine.status(), 60), engine.status()
        assert 3 not in engine.manager._control.explicit.get("shoes", set()) and classify(engine) == "2"
    finally:
        engine.close()


def two_workers(repository, tiny_models, shared) -> tuple[Engine, Engine]:
    """Two engines over one control file stand for two BentoML workers of one service."""
    settings = Settings(classifier=str(repository / "shoes"), generator=str(tiny_models["generator"]),
                        model_root=str(repository), **FAST)
    workers = Engine(settings, KINDS, SharedControl(shared)), Engine(settings, KINDS, SharedControl(shared))
    for worker in workers:
        worker.load()
    return workers


def test_a_worker_with_a_stale_state_keeps_a_siblings_unload(repository, tiny_models, tmp_path):
    """Worker A unloads boots; worker B, before its next poll, handles an unrelated load. B's
    change starts from the freshest shared state, so boots stays unloaded in both (B wrote its
    stale state whole, and every worker served boots again)."""
    add_version(repository, "boots", 1, tiny_models["other_classifier"])
    first, second = two_workers(repository, tiny_models, tmp_path / "control.json")
    try:
        first.manager.unload("boots")
        second.manager.load("shoes", 1)  # no poll of B's in between
        first.manager.reconcile(), second.manager.reconcile()
        for worker in (first, second):  # boots drains, then is gone; shoes:1 is loaded in both
            assert eventually(lambda worker=worker: "boots" not in worker.status(), 60), worker.status()
            assert versions(worker) == {1: "available", 2: "available"}
    finally:
        first.close(), second.close()


def test_the_shared_control_counts_changes_not_file_times(tmp_path):
    """Two writes within one tick of the file system's clock are two changes: a generation
    counter in the file says so (the mtime could not)."""
    path = tmp_path / "control.json"
    writer, reader = SharedControl(path), SharedControl(path)
    for number in range(1, 6):
        with writer.locked():
            writer.save(Control(explicit={"shoes": {number}}))
        assert reader.changed().explicit == {"shoes": {number}}
        assert reader.changed() is None  # nothing new since
    with reader.locked() as fresh:  # the writer's own change is no news to it
        assert fresh is None
        reader.save(Control(unloaded={"boots"}))
    with writer.locked() as fresh:
        assert fresh.unloaded == {"boots"}


def test_a_failed_version_blocks_no_change_that_does_not_ask_for_it(repository, tiny_models):
    """Under `all`, version 3 is broken; a new label for version 1 asks for no new version, so
    version 3's failure does not roll it back (it refused every change of the model)."""
    broken = add_version(repository, "shoes", 3, tiny_models["classifier"])
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    engine = engine_for(repository, tiny_models, repository={"shoes": {"versions": "all"}})
    try:
        assert versions(engine) == {1: "available", 2: "available", 3: "failed"}
        asyncio.run(engine.load_model("shoes", None, {"versions": "all", "labels": {"stable": 1}}))
        assert engine.status()["shoes"].labels == {"stable": 1} and classify(engine, "shoes@stable") == "1"
        with pytest.raises(ValidationError, match="shoes could not be loaded: .*nothing was changed"):
            asyncio.run(engine.load_model("shoes", 3))  # asks for the broken one: refused, as before
        assert engine.status()["shoes"].labels == {"stable": 1}
    finally:
        engine.close()
