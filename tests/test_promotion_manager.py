"""Promotion through the real control path (service/core/promotion.py, Manager.amend), on a
real engine over the tiny models: the decision moves what is served, the load API undoes it,
and a decision taken on settings that changed since is refused and changes nothing."""

from __future__ import annotations

import asyncio

import pytest

from service.core import Conflict, context
from service.core.evidence import Tally
from service.core.promotion import PROMOTED, ROLLED_BACK, Promotion
from service.kinds import Classifier
from tests.test_promotion import FakeStore
from tests.test_repository import classify, engine_for, repository  # noqa: F401

SHOES = {"versions": "all", "labels": {"stable": 1, "canary": 2}, "traffic": {"stable": 50, "canary": 50},
         "promote": {"after": 50, "max_p": 0.05}}


def served_by(engine, callers: int = 200) -> set[str]:
    """The versions that answer requests naming no version, over many callers."""
    chosen = set()
    for index in range(callers):
        context.begin(caller=f"caller-{index}")
        chosen.add(engine.get(Classifier).info.version)
    return chosen


def test_a_promotion_and_a_rollback_change_what_serves_and_the_load_api_undoes_them(repository, tiny_models):
    engine = engine_for(repository, tiny_models, repository={"shoes": SHOES})
    store = FakeStore()
    promotion = Promotion(engine.manager, store)
    promotion.observe("shoes")  # as the feedback path does before its first labels
    try:
        assert served_by(engine) == {"1", "2"}
        store.tallies = {1: Tally(50, 30), 2: Tally(50, 48)}
        decision = promotion.evaluate("shoes")
        assert decision.decision == PROMOTED
        assert engine.status()["shoes"].labels == {"stable": 2, "canary": 2}
        assert classify(engine, "shoes@stable") == "2" and served_by(engine) == {"2"}

        asyncio.run(engine.load_model("shoes", None, promotion.decisions()["shoes"]["undo"]))  # as GET /models shows it
        assert engine.status()["shoes"].labels == {"stable": 1, "canary": 2} and served_by(engine) == {"1", "2"}
        assert promotion.evaluate("shoes") is None  # the same labels are not looked at twice

        store.tallies = {1: Tally(150, 120), 2: Tally(150, 88)}  # look 2 since the undo: 90/100 vs 40/100
        assert promotion.evaluate("shoes").decision == ROLLED_BACK
        assert served_by(engine) == {"1"} and engine.manager.config("shoes").traffic == {"stable": 50, "canary": 0}
        assert promotion.decisions()["shoes"]["decision"] == ROLLED_BACK
    finally:
        engine.close()


def test_a_decision_on_settings_that_changed_since_changes_nothing(repository, tiny_models):
    engine = engine_for(repository, tiny_models, repository={"shoes": SHOES})
    try:
        weighed = engine.manager.config("shoes")
        asyncio.run(engine.load_model("shoes", None, {**SHOES, "traffic": {"stable": 100}}))
        changed = engine.manager.config("shoes")
        with pytest.raises(Conflict, match="its settings changed since the decision"):
            engine.manager.amend("shoes", weighed, {**SHOES, "labels": {"stable": 2, "canary": 2}})
        assert engine.manager.config("shoes") == changed and served_by(engine) == {"1"}
    finally:
        engine.close()


def test_feedback_on_a_model_without_promote_weighs_no_evidence(repository, tiny_models, monkeypatch):
    """No thread, no evaluation, where no model promotes; once one does, its labels are weighed."""
    without = {key: value for key, value in SHOES.items() if key != "promote"}
    engine = engine_for(repository, tiny_models, repository={"shoes": {**without, "feedback": True}})
    weighed = []
    monkeypatch.setattr(engine, "_weigh_evidence", weighed.append)
    try:
        engine.feedback.record("request-1", "shoes", 1, "predictor", ("sandal", "boot"), [(0, 0.9)], {})
        assert asyncio.run(engine.feed_back([("request-1", "boot", 0)]))[0].error is None
        assert weighed == []
        asyncio.run(engine.load_model("shoes", None, {**SHOES, "feedback": True}))
        assert asyncio.run(engine.feed_back([("request-1", "sandal", 0)]))[0].error is None
        assert weighed == [["shoes"]]
    finally:
        engine.close()


def test_a_config_file_reload_that_undoes_a_decision_logs_a_warning(repository, tiny_models, tmp_path, caplog):
    config = tmp_path / "diptych.toml"
    written = '[repository.shoes]\nversions = "all"\nlabels = {stable = 1, canary = 2}\n' \
              'traffic = {stable = 50, canary = 50}\npromote = {after = 50}\n'
    config.write_text(written)
    engine = engine_for(repository, tiny_models, config, repository={"shoes": SHOES})
    store = FakeStore()
    engine.promotion = Promotion(engine.manager, store)
    engine.manager.config_reloaded = engine.promotion.warn_reverted
    engine.promotion.observe("shoes")
    try:
        store.tallies = {1: Tally(50, 48), 2: Tally(50, 30)}
        assert engine.promotion.evaluate("shoes").decision == ROLLED_BACK and served_by(engine) == {"1"}
        config.write_text(written + "log_sample = 0.0\n")  # the file as it was: the canary serves again
        with caplog.at_level("WARNING", logger="diptych"):
            engine.manager.reconcile()
        assert served_by(engine) == {"1", "2"}
        assert any("undoes the promotion decision on shoes: version 2 rolled_back" in record.getMessage()
                   for record in caplog.records)
    finally:
        engine.close()
