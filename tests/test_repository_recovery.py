"""What keeps a model served, or a change applied, after something went wrong, in-process: a
broken newest version at start-up, a policy's version removed from disk, a config file
refused for a while, a store tag configured for a model of another name. On the tiny real
models of `tiny_models` (docs/repository.md, docs/reliability.md)."""

from __future__ import annotations

import logging
import shutil

from service import tfserving
from service.core.sources import StoreSource, Version
from tests.conftest import eventually
from tests.test_config_changes import snapshot
from tests.test_repository import add_version, classify, engine_for, repository, versions  # noqa: F401


def test_a_broken_newest_version_at_start_up_falls_back_to_the_newest_that_loads(repository, tiny_models, caplog):
    """`latest:1` and a broken version 3 at start: version 2 serves (it was never tried, and
    the default was neither ready nor alive: a restart loop), with the reason in its state."""
    broken = add_version(repository, "shoes", 3, tiny_models["classifier"])
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    caplog.set_level(logging.WARNING, "diptych")
    engine = engine_for(repository, tiny_models)
    try:
        assert versions(engine) == {2: "available", 3: "failed"}
        assert engine.ready and engine.alive and classify(engine) == "2"
        assert "version 3" in engine.status()["shoes"].versions[2].reason
        assert "shoes:2 serves in place of" in caplog.text
        assert [(number, state, bool(error)) for number, state, error in tfserving.version_status(engine, "shoes")] \
            == [(2, "AVAILABLE", False), (3, "END", True)]  # to TF Serving's clients, no error on the one serving
        engine.manager.reconcile()  # nothing tried again, nothing changes
        assert versions(engine) == {2: "available", 3: "failed"}
        shutil.rmtree(broken)
        add_version(repository, "shoes", 4, tiny_models["other_classifier"])
        engine.manager.reconcile()
        assert eventually(lambda: versions(engine) == {4: "available"}, 60), versions(engine)
    finally:
        engine.close()


def test_a_default_whose_chosen_version_is_removed_keeps_an_older_one(repository, tiny_models):
    engine = engine_for(repository, tiny_models, repository={"shoes": {"versions": "specific:2"}})
    try:
        assert versions(engine) == {2: "available"}
        shutil.rmtree(repository / "shoes" / "2")
        engine.manager.reconcile()
        assert eventually(lambda: versions(engine) == {1: "available"}, 60), versions(engine)
        assert engine.ready and classify(engine) == "1"
        shutil.rmtree(repository / "shoes" / "1")  # every version removed: the operator's choice
        engine.manager.reconcile()
        assert eventually(lambda: "shoes" not in engine.status(), 60) and not engine.ready
    finally:
        engine.close()


def test_a_refused_config_file_is_tried_again_on_later_passes(repository, tiny_models, tmp_path, caplog):
    """Refused because version 3 is not there yet: once it is, the file applies, untouched
    (it was never read again until edited). Logged once per distinct refusal, and its retries
    (trial scans) log nothing of their own: the odd folder's line is the served scan's, once."""
    config = tmp_path / "diptych.toml"
    config.write_text('[repository.shoes]\nversions = "all"\n')
    shutil.copytree(tiny_models["classifier"], repository / "shoes" / "01")
    caplog.set_level(logging.WARNING, "diptych")
    engine = engine_for(repository, tiny_models, config_file=config)
    try:
        before = snapshot(engine)
        config.write_text('[repository.shoes]\nversions = "specific:3"\n')
        engine.manager.reconcile(), engine.manager.reconcile()
        assert snapshot(engine) == before
        assert caplog.text.count("was not applied") == 1, caplog.text
        assert caplog.text.count(f"ignored {repository / 'shoes' / '01'}:") == 1, caplog.text
        add_version(repository, "shoes", 3, tiny_models["other_classifier"])
        engine.manager.reconcile()
        assert engine.status()["shoes"].policy == "specific:3"
        assert eventually(lambda: versions(engine) == {3: "available"}, 60), versions(engine)
    finally:
        engine.close()


def test_a_store_tag_as_the_path_of_another_name_serves_under_that_name(repository, tiny_models, monkeypatch):
    """`boots` configured with the store's `classifier:1`: its versions are renamed to boots
    (they loaded into classifier's slots and never became available), and only version 1
    is served (the tag's version was ignored)."""
    store = {"classifier": [Version("classifier", 1, str(tiny_models["classifier"]), "classifier"),
                            Version("classifier", 2, str(tiny_models["other_classifier"]), "classifier")]}
    monkeypatch.setattr(StoreSource, "models", lambda self: store)
    engine = engine_for(repository, tiny_models, store=True, repository={"boots": {"path": "classifier:1"}})
    try:
        assert versions(engine, "boots") == {1: "available"} and classify(engine, "boots") == "1"
        assert engine.status()["boots"].policy == "specific:1"
        assert versions(engine, "classifier") == {2: "available"}  # the store's own model, its newest
    finally:
        engine.close()
