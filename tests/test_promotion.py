"""Promotion and rollback by evidence (service/core/promotion.py), on a fake feedback store and
`Detached` settings, whose `amend` parses the table whole as the manager's does (the real
control path: tests/test_promotion_manager.py). Pure Python, no server: a canary or a shadow that is known
better is promoted, known worse is rolled back, nothing happens on too few labels or on an
unavailable version, the looks' levels halve; and, over many simulated runs of two equally
good versions, the share of runs with any decision stays within max_p."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from service.core.evidence import Paired, Tally, two_proportions
from service.core.metrics import metrics
from service.core.model_settings import ModelConfig
from service.core.promotion import (
    PROMOTED,
    REFUSED,
    ROLLED_BACK,
    SHADOW,
    SPLIT,
    Detached,
    Promotion,
    alpha,
    warn_if_several_workers,
)

CANARY = {"versions": "all", "labels": {"stable": 3, "canary": 4}, "traffic": {"stable": 90, "canary": 10},
          "promote": {"after": 500, "max_p": 0.05}}
SHADOWED = {**CANARY, "traffic": {"stable": 100}, "shadow": "canary"}


class FakeStore:
    """The feedback store's two questions, answered from counts a test sets."""

    def __init__(self) -> None:
        self.tallies: dict[int, Tally] = {}
        self.pairs = Paired()

    def tally(self, model: str, version: int, role: str = "predictor") -> Tally:
        return self.tallies.get(version, Tally())

    def paired(self, model: str, stable: int, candidate: int) -> Paired:
        return self.pairs


def watching(manager: Detached, store: FakeStore) -> Promotion:
    """A Promotion that saw the model's settings before its first labels, as the feedback path's does."""
    promotion = Promotion(manager, store)
    promotion.observe("shoes")
    return promotion


def decisions_counted(decision: str) -> float:
    import prometheus_client

    metrics()  # registers the counters
    return prometheus_client.REGISTRY.get_sample_value("diptych_promotion_decisions_total",
                                                       {"model": "shoes", "decision": decision}) or 0.0


def test_a_better_canary_is_promoted_and_the_decision_is_recorded_with_its_undo():
    manager, store = Detached({"shoes": CANARY}), FakeStore()
    promotion = watching(manager, store)
    store.tallies = {3: Tally(500, 400), 4: Tally(500, 460)}
    counted = decisions_counted(PROMOTED)
    decision = promotion.evaluate("shoes")
    assert decision is not None and decision.decision == PROMOTED and decision.test == SPLIT
    assert manager.configs["shoes"].labels == {"stable": 4, "canary": 4}  # every request now goes to 4
    assert manager.configs["shoes"].traffic == {"stable": 90, "canary": 10}
    assert decision.p == two_proportions(Tally(500, 400), Tally(500, 460)) and decision.p <= decision.alpha == 0.025
    assert (decision.stable_tally, decision.candidate_tally, decision.look) == (Tally(500, 400), Tally(500, 460), 1)
    assert ModelConfig.parse("shoes", decision.undo) == ModelConfig.parse("shoes", CANARY)
    assert decisions_counted(PROMOTED) == counted + 1


def test_the_shown_undo_leaves_the_models_path_out():
    """`GET /models` is any caller's: a folder is not shown there (the decision keeps it)."""
    manager, store = Detached({"shoes": {**CANARY, "path": "private/shoes"}}), FakeStore()
    promotion = watching(manager, store)
    store.tallies = {3: Tally(500, 400), 4: Tally(500, 460)}
    assert promotion.evaluate("shoes").undo["path"] == "private/shoes"
    shown = promotion.decisions()["shoes"]["undo"]
    assert "path" not in shown and ModelConfig.parse("shoes", {**shown, "path": "private/shoes"}) == \
        ModelConfig.parse("shoes", {**CANARY, "path": "private/shoes"})


def test_a_worse_canary_gets_no_more_traffic():
    manager, store = Detached({"shoes": CANARY}), FakeStore()
    promotion = watching(manager, store)
    store.tallies = {3: Tally(600, 460), 4: Tally(500, 330)}
    assert promotion.evaluate("shoes").decision == ROLLED_BACK
    assert manager.configs["shoes"].traffic == {"stable": 90, "canary": 0}
    assert manager.configs["shoes"].labels == {"stable": 3, "canary": 4}
    shown = promotion.decisions()["shoes"]
    assert (shown["decision"], shown["stable"], shown["candidate"], shown["candidate_tally"]) == \
        (ROLLED_BACK, 3, 4, {"labelled": 500, "correct": 330})
    assert promotion.evaluate("shoes") is None  # no candidate left to decide on


@pytest.mark.parametrize("pairs, decision", [(Paired(400, 10, 60, 30), PROMOTED), (Paired(400, 60, 10, 30), ROLLED_BACK)])
def test_a_shadow_is_judged_on_its_paired_answers_and_stops_shadowing(pairs, decision):
    manager, store = Detached({"shoes": SHADOWED}), FakeStore()
    promotion = watching(manager, store)
    store.pairs = pairs
    store.tallies = {3: Tally(500, 500), 4: Tally(500, 0)}  # the split's tallies: not what a shadow is judged on
    made = promotion.evaluate("shoes")
    assert (made.decision, made.test) == (decision, SHADOW)
    assert manager.configs["shoes"].shadow is None
    assert manager.configs["shoes"].labels["stable"] == (4 if decision == PROMOTED else 3)


def test_nothing_is_decided_on_too_few_labels():
    manager, store = Detached({"shoes": CANARY}), FakeStore()
    promotion = watching(manager, store)
    store.tallies = {3: Tally(5000, 1000), 4: Tally(499, 499)}  # a glaring difference, one label short
    assert promotion.evaluate("shoes") is None and manager.configs["shoes"] == ModelConfig.parse("shoes", CANARY)
    store.tallies[4] = Tally(500, 500)
    assert promotion.evaluate("shoes").decision == PROMOTED


@pytest.mark.parametrize("available", [{3}, {4}, set()])
def test_nothing_is_decided_while_a_version_is_unavailable(available):
    manager, store = Detached({"shoes": CANARY}, available), FakeStore()
    promotion = watching(manager, store)
    store.tallies = {3: Tally(500, 400), 4: Tally(500, 480)}
    assert promotion.evaluate("shoes") is None and manager.configs["shoes"] == ModelConfig.parse("shoes", CANARY)
    manager.available = {3, 4}
    assert promotion.evaluate("shoes").decision == PROMOTED


def test_a_decision_on_settings_that_changed_since_is_refused_and_counted():
    manager, store = Detached({"shoes": CANARY}), FakeStore()
    promotion = watching(manager, store)
    store.tallies = {3: Tally(500, 400), 4: Tally(500, 460)}
    changed = ModelConfig.parse("shoes", {**CANARY, "traffic": {"stable": 100}})
    manager.amend = lambda name, decided_on, table: (manager.configs.update(shoes=changed),
                                                     Detached.amend(manager, name, decided_on, table))
    refused = decisions_counted(REFUSED)
    assert promotion.evaluate("shoes") is None and promotion.decisions() == {}
    assert manager.configs["shoes"] == changed and decisions_counted(REFUSED) == refused + 1


def test_without_promote_or_a_single_candidate_nothing_is_decided():
    table = {key: value for key, value in CANARY.items() if key != "promote"}
    several = {**CANARY, "labels": {"stable": 3, "canary": 4, "other": 5}, "traffic": {"stable": 8, "canary": 1,
                                                                                       "other": 1}}
    for manager, model in ((Detached({"shoes": table}), "shoes"), (Detached({"shoes": several}, {3, 4, 5}), "shoes"),
                           (Detached({"shoes": CANARY}), "other model")):
        store = FakeStore()
        promotion = watching(manager, store)
        store.tallies = {3: Tally(500, 400), 4: Tally(500, 480), 5: Tally(500, 480)}
        assert promotion.evaluate(model) is None


def test_a_canary_is_compared_with_the_stable_versions_labels_since_the_canary_began():
    """Stable's 5000 labels from before the canary (an easier time: 90% right) are not weighed
    against the canary's: from then on both are 80% right, and nothing is decided; the
    decision that follows is taken on the counts since the canary began."""
    manager, store = Detached({"shoes": {**CANARY, "traffic": {"stable": 100}}}), FakeStore()
    promotion = watching(manager, store)
    store.tallies = {3: Tally(5000, 4500)}
    assert promotion.evaluate("shoes") is None  # no candidate yet
    manager.configs["shoes"] = ModelConfig.parse("shoes", CANARY)  # an operator's load starts the canary
    promotion.observe("shoes")  # the feedback path, before its next labels
    store.tallies = {3: Tally(5500, 4900), 4: Tally(500, 400)}
    assert promotion.evaluate("shoes") is None  # 400/500 each since: equal (overall, stable's 89% would win)
    store.tallies = {3: Tally(6000, 5300), 4: Tally(1000, 880)}
    decision = promotion.evaluate("shoes")
    assert (decision.decision, decision.stable_tally, decision.candidate_tally) == \
        (PROMOTED, Tally(1000, 800), Tally(1000, 880))


def test_a_shadows_pairs_count_from_when_it_began_shadowing():
    manager, store = Detached({"shoes": SHADOWED}), FakeStore()
    store.pairs = Paired(400, 10, 60, 30)  # a shadow of 4 before, judged and undone (or another pairing's)
    promotion = watching(manager, store)
    assert promotion.evaluate("shoes") is None
    store.pairs = Paired(800, 40, 90, 70)  # since: 400 right by both, 30 stable only, 30 the shadow only
    assert promotion.evaluate("shoes") is None


def test_each_look_tests_at_half_the_level_of_the_one_before():
    assert [alpha(0.05, look) for look in (1, 2, 3)] == [0.025, 0.0125, 0.00625]
    assert sum(alpha(0.05, look) for look in range(1, 40)) < 0.05
    store = FakeStore()
    as_first, as_second = (watching(Detached({"shoes": table}), store)
                           for table in ({**CANARY, "promote": {"after": 1000}}, CANARY))
    store.tallies = {3: Tally(1000, 800), 4: Tally(1000, 840)}  # p between the first look's and the second's level
    assert alpha(0.05, 2) < two_proportions(store.tallies[3], store.tallies[4]) < alpha(0.05, 1)
    as_first_look = as_first.evaluate("shoes")
    assert as_first_look.decision == PROMOTED and as_first_look.look == 1
    assert as_second.evaluate("shoes") is None  # after = 500: 1000 labels is look 2


def test_a_look_is_spent_once_and_an_undone_decision_needs_new_labels():
    manager, store = Detached({"shoes": CANARY}), FakeStore()
    promotion = watching(manager, store)
    store.tallies = {3: Tally(500, 400), 4: Tally(500, 400)}
    assert promotion.evaluate("shoes") is None  # look 1: no difference
    store.tallies[4] = Tally(1000, 900)
    assert promotion.evaluate("shoes") is None  # stable still has 500: look 1 again, already spent
    store.tallies[3] = Tally(1000, 800)
    decision = promotion.evaluate("shoes")
    assert decision.look == 2 and decision.alpha == 0.0125
    manager.amend("shoes", manager.configs["shoes"], decision.undo)  # an operator's load with the old table
    assert promotion.evaluate("shoes") is None  # the same labels are not looked at again


@pytest.mark.parametrize("tallies, decision", [({3: Tally(500, 400), 4: Tally(500, 460)}, PROMOTED),
                                               ({3: Tally(500, 460), 4: Tally(500, 400)}, ROLLED_BACK)])
def test_a_reload_that_undoes_the_last_decision_is_warned_of(tallies, decision, caplog):
    manager, store = Detached({"shoes": CANARY}), FakeStore()
    promotion = watching(manager, store)
    store.tallies = tallies
    assert promotion.evaluate("shoes").decision == decision
    decided, before = manager.configs["shoes"], ModelConfig.parse("shoes", CANARY)
    keeps = ModelConfig.parse("shoes", {**decided.table(), "log_sample": 0.5})
    with caplog.at_level("WARNING", logger="diptych"):
        promotion.warn_reverted({"shoes": decided}, {"shoes": keeps})  # another change: the decision stays
        assert not caplog.records
        promotion.warn_reverted({"shoes": decided}, {"shoes": before})  # the file as it was before the decision
    assert [record.getMessage() for record in caplog.records] == \
        [f"the reloaded config file undoes the promotion decision on shoes: version 4 {decision} against stable "
         "version 3; write the decision into the file to keep it"]


def test_promotion_across_several_workers_is_warned_of(caplog):
    configs = {"shoes": ModelConfig.parse("shoes", CANARY), "hats": ModelConfig("hats")}
    with caplog.at_level("WARNING", logger="diptych"):
        for workers in (None, 1):
            warn_if_several_workers(configs, workers)
        warn_if_several_workers({"hats": ModelConfig("hats")}, 4)
        assert not caplog.records
        warn_if_several_workers(configs, 4)
    assert [record.getMessage()[:72] for record in caplog.records] == \
        ["promotion by evidence (shoes) assumes one worker per model server; this service runs 4"[:72]]


def simulated_runs(test: str, accuracy: float, agreement: float, after: int, max_p: float, looks: int,
                   runs: int, seed: int) -> int:
    """How many of `runs` simulated runs of two equally good versions (each right with chance
    `accuracy`; a shadow's answers agreeing beyond chance by `agreement`) end in any decision
    within `looks` looks, evaluated after each batch of `after` labels."""
    rng = np.random.default_rng(seed)
    spread = accuracy * (1 - accuracy)
    cells = [accuracy**2 + agreement * spread, (1 - agreement) * spread, (1 - agreement) * spread,
             (1 - accuracy)**2 + agreement * spread]
    wrong = 0
    for _ in range(runs):
        table = SHADOWED if test == SHADOW else CANARY
        manager, store = Detached({"shoes": {**table, "promote": {"after": after, "max_p": max_p}}}), FakeStore()
        promotion = watching(manager, store)
        counts, tallies = np.zeros(4, int), {3: np.zeros(2, int), 4: np.zeros(2, int)}
        for _ in range(looks):
            counts += rng.multinomial(after, cells)
            for version in tallies:
                tallies[version] += (after, rng.binomial(after, accuracy))
            store.pairs = Paired(*map(int, counts))
            store.tallies = {version: Tally(*map(int, tally)) for version, tally in tallies.items()}
            if promotion.evaluate("shoes") is not None:
                wrong += 1
                break
    return wrong


@settings(max_examples=12, deadline=None, derandomize=True)
@given(test=st.sampled_from([SHADOW, SPLIT]), accuracy=st.floats(0.55, 0.95), agreement=st.floats(0, 0.8),
       after=st.integers(30, 300), max_p=st.sampled_from([0.01, 0.05, 0.2]), seed=st.integers(0, 2**32 - 1))
def test_equally_good_versions_are_wrongly_decided_on_in_at_most_max_p_of_runs(test, accuracy, agreement, after,
                                                                               max_p, seed):
    """Each simulated run looks 12 times, as labels arrive; any decision between two equally
    good versions is wrong. The share of such runs stays within max_p: the count is at most
    what Binomial(runs, max_p) exceeds with chance 1e-4 (a test at max_p on every look, without
    the halving, is wrong in 3 to 4 times max_p of runs here, and fails this)."""
    runs = 300
    wrong = simulated_runs(test, accuracy, agreement, after, max_p, looks=12, runs=runs, seed=seed)
    assert wrong <= binom.isf(1e-4, runs, max_p), f"{wrong} of {runs} runs decided wrongly at max_p={max_p}"
