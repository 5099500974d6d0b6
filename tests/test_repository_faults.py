"""What the repository's operators (and their file systems) do wrong, in-process: folder names
that are not version numbers, symlinks out of the root, a root that vanishes for a while, an
error in one model's scan, a poll loop that dies, a card that lies, and a version unloaded
and loaded again while its old copy drains. On the tiny real models of `tiny_models`."""

from __future__ import annotations

import json
import logging
import shutil
import threading

import pytest

from contract.card import ModelCard
from service.core import Engine, Settings
from service.core.repository import Repository
from service.core.sources import FolderSource
from service.kinds import KINDS
from tests.conftest import eventually
from tests.test_repository import FAST, _sample, add_version, classify, engine_for, repository, versions  # noqa: F401

NOT_VERSIONS = {"²": "ASCII digits only", "١": "ASCII digits only", "01": "leading zero",
                "9" * 19: "at most 9223372036854775807", "12345678901234567890123": "at most"}


def scan(root, **settings):
    return Repository(Settings(model_root=str(root), store=False, **settings)).scan()


def test_folder_names_that_are_not_version_numbers_are_ignored_and_logged_once(repository, tiny_models, caplog):
    """`²` passes str.isdigit() and fails int(): it stopped hot reload for good; `01` beside
    `1` would have been merged with it. Each is ignored, with its reason, logged once."""
    for name in NOT_VERSIONS:
        shutil.copytree(tiny_models["classifier"], repository / "shoes" / name)
    caplog.set_level(logging.WARNING, "diptych")
    engine = engine_for(repository, tiny_models)
    try:
        assert engine.ready and versions(engine) == {2: "available"}
        engine.manager.reconcile()
        ignored = engine.sources()["ignored"]
        for name, reason in NOT_VERSIONS.items():
            assert reason in ignored[str(repository / "shoes" / name)], ignored
            assert sum(f"ignored {repository / 'shoes' / name}:" in record.message
                       for record in caplog.records) == 1, "logged once, not on every pass"
        add_version(repository, "shoes", 3, tiny_models["classifier"])
        engine.manager.reconcile()
        assert eventually(lambda: versions(engine) == {3: "available"}, 60), versions(engine)  # hot reload goes on
        assert classify(engine) == "3"
    finally:
        engine.close()


def test_a_symlink_leaving_the_root_is_ignored(repository, tiny_models, tmp_path):
    outside = tmp_path / "outside"
    add_version(outside, "boots", 1, tiny_models["classifier"])
    (repository / "boots").symlink_to(outside / "boots")
    (repository / "shoes" / "3").symlink_to(tiny_models["classifier"])
    (repository / "shoes" / "4").symlink_to(repository / "shoes" / "2")  # inside the root: a version
    found = scan(repository)
    assert set(found.versions) == {"shoes"}
    assert [version.number for version in found.versions["shoes"]] == [1, 2, 4]
    assert "outside the model root" in found.ignored[str(repository / "boots")]
    assert "outside the model root" in found.ignored[str(repository / "shoes" / "3")]


def test_a_vanished_root_keeps_serving_and_is_reported_unavailable(repository, tiny_models, tmp_path):
    """A remount: the root gone for a while. Every model keeps serving (the default, given as a
    folder in it, too) and the sources say why; once back, nothing was reloaded."""
    add_version(repository, "boots", 1, tiny_models["classifier"])
    engine = engine_for(repository, tiny_models)
    try:
        assert versions(engine) == {2: "available"} and versions(engine, "boots") == {1: "available"}
        loads = _sample("diptych_model_loads_total", {"model": "shoes", "outcome": "loaded"})
        repository.rename(tmp_path / "elsewhere")
        engine.manager.reconcile()
        assert versions(engine) == {2: "available"} and versions(engine, "boots") == {1: "available"}
        assert engine.ready and classify(engine) == "2" and classify(engine, "boots") == "1"
        unavailable = engine.sources()["unavailable"]
        assert set(unavailable) == {str(repository), str(repository / "shoes")}, unavailable
        assert "no such folder" in unavailable[str(repository)]
        assert _sample("diptych_model_source_available", {"source": str(repository)}) == 0
        (tmp_path / "elsewhere").rename(repository)
        engine.manager.reconcile()
        assert engine.sources()["unavailable"] == {}
        assert _sample("diptych_model_source_available", {"source": str(repository)}) == 1
        assert versions(engine) == {2: "available"} and versions(engine, "boots") == {1: "available"}
        assert _sample("diptych_model_loads_total", {"model": "shoes", "outcome": "loaded"}) == loads
    finally:
        engine.close()


def test_an_error_in_one_models_scan_or_load_stops_no_other(repository, tiny_models, monkeypatch):
    add_version(repository, "boots", 1, tiny_models["classifier"])
    add_version(repository, "hats", 1, tiny_models["classifier"])
    engine = engine_for(repository, tiny_models)
    try:
        read = FolderSource.versions

        def broken_boots(self):
            if self.folder.name == "boots":
                raise PermissionError(13, "Permission denied", str(self.folder))
            return read(self)

        ensure = engine.manager._ensure_loaded

        def broken_hats(version) -> None:
            if version.name == "hats":
                raise ZeroDivisionError("a bug in one model's load")
            ensure(version)

        monkeypatch.setattr(FolderSource, "versions", broken_boots)
        monkeypatch.setattr(engine.manager, "_ensure_loaded", broken_hats)
        for name, number in (("boots", 2), ("hats", 2), ("shoes", 3)):
            add_version(repository, name, number, tiny_models["classifier"])
        engine.manager.reconcile()
        assert versions(engine, "boots") == {1: "available"}  # its last scan stands
        assert "Permission denied" in engine.sources()["unavailable"][str(repository / "boots")]
        assert versions(engine, "hats") == {1: "available"}  # its load failed: the old one serves
        assert eventually(lambda: versions(engine, "shoes") == {3: "available"}, 60)  # the default's latest, loaded
    finally:
        engine.close()


class Killed(BaseException):
    """What no pass can catch (as SystemExit): the poll loop ends."""


def test_a_poll_loop_that_dies_is_not_alive(repository, tiny_models, monkeypatch):
    engine = engine_for(repository, tiny_models, poll_s=0.01)
    try:
        assert engine.alive
        monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the thread's traceback is expected

        def killed() -> None:
            raise Killed

        monkeypatch.setattr(engine.manager, "reconcile", killed)
        threading.Thread(target=engine.manager.poll, daemon=True).start()
        assert eventually(lambda: not engine.alive, 30)
    finally:
        engine.close()


def test_a_lying_card_fails_that_version_and_the_old_one_keeps_serving(repository, tiny_models):
    """A card saying 20000×20000 made warm-up allocate tens of GB: the worker was OOM-killed."""
    engine = engine_for(repository, tiny_models)
    try:
        lying = add_version(repository, "shoes", 3, tiny_models["classifier"])
        card = ModelCard.read(lying).to_dict()
        (lying / "model_card.json").write_text(json.dumps({**card, "image_size": [20000, 20000]}))
        engine.manager.reconcile()
        assert versions(engine) == {2: "available", 3: "failed"}
        reason = engine.status()["shoes"].versions[3].reason
        assert "'image_size' is (20000, 20000)" in reason and "within 1 to 2048" in reason, reason
        assert classify(engine) == "2"
    finally:
        engine.close()


def test_a_version_unloaded_and_loaded_again_while_its_old_copy_drains_keeps_the_new_copy(repository, tiny_models):
    """Slots are released by identity: the old copy's cleanup, matched by version number,
    removed the new copy's slot: the version vanished from /models, could not be unloaded, and
    was loaded a second time while the first new copy was never closed."""
    add_version(repository, "boots", 1, tiny_models["classifier"])
    engine = engine_for(repository, tiny_models, timeout_s=600)  # the drain's bound: longer than this test
    try:
        old, closes = engine.find("boots"), []
        old.close = spy(old, closes)
        loads = _sample("diptych_model_loads_total", {"model": "boots", "outcome": "loaded"})
        with engine.admit():  # a request in flight on the old copy
            engine.manager.unload("boots")
            assert versions(engine, "boots") == {1: "unloading"}
            engine.manager.load("boots")
            assert versions(engine, "boots") == {1: "available"}
            new = engine.find("boots")
            new.close = spy(new, closes)
            assert new is not old and not closes
        assert eventually(lambda: closes == [old], 60)  # drained, then closed
        engine.manager.reconcile()
        assert versions(engine, "boots") == {1: "available"} and engine.find("boots") is new
        assert classify(engine, "boots:1") == "1"
        assert _sample("diptych_model_loads_total", {"model": "boots", "outcome": "loaded"}) == loads + 1
        assert _sample("diptych_model_versions", {"model": "boots", "version": "1", "state": "available"}) == 1
        engine.manager.unload("boots")
        assert eventually(lambda: closes == [old, new] and "boots" not in engine.status(), 60)
    finally:
        engine.close()


def spy(model, closes: list):
    """`model.close`, recording the model each time it is called."""
    close = model.close

    def recorded() -> None:
        close()
        closes.append(model)

    return recorded


@pytest.mark.parametrize("name", ["0", "1", "42", str(2**63 - 1)])
def test_plain_version_numbers_are_versions(name):
    from contract.layout import version_number

    assert version_number(name) == int(name)


def test_an_engine_started_on_a_repository_of_odd_names_loads(repository, tiny_models):
    """At start-up the poll thread died on `²`: the first pass loads, and polling goes on."""
    shutil.copytree(tiny_models["classifier"], repository / "shoes" / "²")
    engine = Engine(Settings(classifier=str(repository / "shoes"), generator=str(tiny_models["generator"]),
                             model_root=str(repository), **{**FAST, "poll_s": 0.05}), KINDS)
    engine.start()
    try:
        assert eventually(lambda: engine.ready, 240)
        add_version(repository, "shoes", 3, tiny_models["classifier"])
        assert eventually(lambda: versions(engine) == {3: "available"}, 120), versions(engine)
        assert engine.alive
    finally:
        engine.close()


def test_a_default_store_tag_that_names_no_version_stops_no_scan(repository):
    """`classifier:²` made every pass raise, so no model at all was served."""
    found = Repository(Settings(classifier="shoes:²", generator="", model_root=str(repository), store=False)).scan()
    assert found.defaults == {} and set(found.versions) == {"shoes"}
    assert "use latest or a version number" in found.ignored["shoes:²"]
