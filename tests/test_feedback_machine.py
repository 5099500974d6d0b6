"""A model-based test of the feedback store (service/core/feedback.py): a hypothesis state
machine records requests' answers of two models' versions, as predictor or as shadow, under a
few request ids (reused, so ids collide), then, any time later, the same request's answer in
the other role (a late shadow: it joins its own request's entries, never a later request's
that took the id), labels them (names, class indexes, bad labels, again
and again) and lets time pass; after every step the store must agree with a simple model:
- the entries kept are the model's, never more than the bound, none past the age limit;
- evictions are counted in `diptych_feedback_evicted_total`, by reason;
- every version's `Tally` and every `Paired` equal the model's, which counts from scratch,
  over every entry ever labelled, each with its last label (a second label replaces the first).
Derandomized: CI runs the same sequences every time."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from prometheus_client import REGISTRY

from service.core.errors import NotFound, ValidationError
from service.core.evidence import Paired, Tally
from service.core.feedback import PREDICTOR, SHADOW, FeedbackStore

LABELS = ("boot", "sandal", "sneaker")
MODELS, VERSIONS, ROLES = ("shoes", "boots"), ("1", "2", "3"), (PREDICTOR, SHADOW)
IDS = [f"request-{index}" for index in range(6)]
MAX_ENTRIES, MAX_AGE = 5, 100.0


@dataclasses.dataclass
class Kept:
    """The model's entry: one item of one request."""

    model: str
    born: float
    answers: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)  # role → (version, predicted)
    truth: str | None = None


def evicted(reason: str) -> float:
    return REGISTRY.get_sample_value("diptych_feedback_evicted_total", {"reason": reason}) or 0.0


class FeedbackMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.store = FeedbackStore(MAX_ENTRIES, MAX_AGE, clock=lambda: self.now)
        self.live: dict[tuple[str, int], Kept] = {}  # oldest first
        self.ever: list[Kept] = []  # every entry ever made: what was counted stays counted
        self.evictions = {"size": 0, "age": 0}
        self.evicted_before = {reason: evicted(reason) for reason in self.evictions}
        self.unjoined: list[tuple[str, dict, list[Kept], str]] = []  # requests whose other role has not answered

    def _evict(self) -> None:
        while self.live:
            key, oldest = next(iter(self.live.items()))
            reason = "size" if len(self.live) > MAX_ENTRIES else "age" if self.now - oldest.born > MAX_AGE else None
            if reason is None:
                return
            del self.live[key]
            self.evictions[reason] += 1

    @rule(request_id=st.sampled_from(IDS), model=st.sampled_from(MODELS), version=st.sampled_from(VERSIONS),
          role=st.sampled_from(ROLES), predicted=st.lists(st.integers(0, len(LABELS) - 1), min_size=1, max_size=2),
          score=st.sampled_from([0.0, 0.34, 0.5, 0.97, 1.0]))
    def record(self, request_id, model, version, role, predicted, score):
        """A new request's first answer: new entries under its id (an older request's fall out of the id)."""
        request: dict = {}  # its context's feedback_entries
        self.store.record(request_id, model, version, role, LABELS, [(each, score) for each in predicted], request)
        kepts = []
        for index, each in enumerate(predicted):
            self.live.pop((request_id, index), None)
            kepts.append(self.live.setdefault((request_id, index), Kept(model, self.now, {role: (version, each)})))
            self.ever.append(kepts[-1])
        self.unjoined.append((request_id, request, kepts, model))
        self._evict()

    @precondition(lambda self: self.unjoined)
    @rule(which=st.integers(0, 9), version=st.sampled_from(VERSIONS),
          predicted=st.lists(st.integers(0, len(LABELS) - 1), min_size=2, max_size=2),
          score=st.sampled_from([0.0, 0.5, 0.97]))
    def answer_again(self, which, version, predicted, score):
        """An earlier request's answer in the other role, however late: it joins that request's entries."""
        request_id, request, kepts, model = self.unjoined.pop(which % len(self.unjoined))
        role = SHADOW if PREDICTOR in kepts[0].answers else PREDICTOR
        answers = [(each, score) for each in predicted[:len(kepts)]]
        self.store.record(request_id, model, version, role, LABELS, answers, request)
        for kept, (each, _) in zip(kepts, answers):
            kept.answers[role] = (version, each)
        self._evict()

    @rule(request_id=st.sampled_from(IDS), index=st.integers(0, 1),
          truth=st.one_of(st.sampled_from(LABELS), st.integers(-1, len(LABELS)), st.just("Sneaker")))
    def label(self, request_id, index, truth):
        self._evict()
        kept = self.live.get((request_id, index))
        if kept is None:
            with pytest.raises(NotFound):
                self.store.label(request_id, truth, index)
            return
        name = LABELS[truth] if isinstance(truth, int) and 0 <= truth < len(LABELS) else \
            truth if truth in LABELS else None
        if name is None:
            with pytest.raises(ValidationError):
                self.store.label(request_id, truth, index)
            return
        assert self.store.label(request_id, truth, index) == (kept.truth is not None)  # replaced, or first
        kept.truth = name

    @rule(seconds=st.sampled_from([1.0, 30.0, 60.0, 150.0]))
    def wait(self, seconds):
        self.now += seconds

    @invariant()
    def within_bounds(self):
        assert len(self.store) == len(self.live) <= MAX_ENTRIES
        assert {key for key in self.store._entries} == set(self.live)
        assert {reason: evicted(reason) - before for reason, before in self.evicted_before.items()} == self.evictions

    @invariant()
    def counts_are_the_models(self):
        tallies: dict[tuple[str, str, str], Tally] = {}
        pairs: dict[tuple[str, str, str], Paired] = {}
        for kept in self.ever:
            if kept.truth is None:
                continue
            for role, (version, predicted) in kept.answers.items():
                old = tallies.get((kept.model, version, role), Tally())
                tallies[kept.model, version, role] = Tally(old.labelled + 1,
                                                           old.correct + (LABELS[predicted] == kept.truth))
            if PREDICTOR in kept.answers and SHADOW in kept.answers:
                (stable, first), (candidate, second) = kept.answers[PREDICTOR], kept.answers[SHADOW]
                right = (LABELS[first] == kept.truth, LABELS[second] == kept.truth)
                field = {(True, True): "both_right", (True, False): "stable_only", (False, True): "candidate_only",
                         (False, False): "both_wrong"}[right]
                old = pairs.get((kept.model, stable, candidate), Paired())
                pairs[kept.model, stable, candidate] = dataclasses.replace(old, **{field: getattr(old, field) + 1})
        for model in MODELS:
            for version in VERSIONS:
                for role in ROLES:
                    assert self.store.tally(model, int(version), role) == tallies.get((model, version, role), Tally())
                for candidate in VERSIONS:
                    assert self.store.paired(model, int(version), int(candidate)) == \
                        pairs.get((model, version, candidate), Paired())


def test_the_feedback_store_agrees_with_a_simple_model():
    run_state_machine_as_test(FeedbackMachine, settings=settings(
        max_examples=150, stateful_step_count=40, derandomize=True, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))


def test_calibration_error_and_confusion_follow_the_last_label():
    store = FeedbackStore()
    store.record("a", "shoes", 1, PREDICTOR, LABELS, [(2, 0.95), (2, 0.95), (0, 0.35)], {})
    for index, truth in enumerate(["sneaker", "boot", "boot"]):
        store.label("a", truth, index)
    report = store.report("shoes", 1)
    # bin 9: two answers scored 0.95, one right (|1 - 1.9|); bin 3: one scored 0.35, right (|1 - 0.35|)
    assert report["ece"] == pytest.approx((0.9 + 0.65) / 3)
    assert report["confusion"] == [[1, 0, 1], [0, 0, 0], [0, 0, 1]] and report["accuracy"] == pytest.approx(2 / 3)
    assert store.label("a", 2, 1)  # the second answer was right after all: replaced
    report = store.report("shoes", 1)
    assert report["ece"] == pytest.approx((0.1 + 0.65) / 3) and report["accuracy"] == 1.0
    assert report["confusion"] == [[1, 0, 0], [0, 0, 0], [0, 0, 2]]
    assert store.report("shoes", 2) is None and "shadow" not in report
