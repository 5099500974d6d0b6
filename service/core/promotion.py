"""Promotion and rollback by evidence (#27): is the candidate better than the stable version,
on the labels fed back?

A model whose table says `promote = {after = 500, max_p = 0.05}` has a *candidate*: its
`shadow` (which answers the same requests as the version it shadows: paired answers, McNemar's
test), else the one version other than `stable` that the traffic split gives requests to (a
canary: other requests, the two-proportion test). `evaluate(model)` looks at the evidence
(the feedback path calls it after each batch of labels): once stable and candidate each have
`after` labelled answers, and again each time `after` more have arrived, it tests.

**Repeated looks.** Look k (k = labelled answers // `after`) rejects "equally good" at
p ≤ max_p / 2**k. Whatever happens at the looks before, the chance that *any* look wrongly
rejects is at most the sum of these, max_p·(1/2 + 1/4 + ...) < max_p (Bonferroni over every
look there could ever be); a look skipped (labels arriving in a large batch) only spends less.
Looks are counted per (model, stable, candidate, test) and never reset, so undoing a decision
and looking again on the same labels spends a new, smaller share.

**From when the pairing is live.** Both versions' evidence counts from when promotion first saw
the model's settings as they are (`observe`, which the feedback path calls before it labels
anything, and `evaluate` again): a snapshot of both tallies and the pairs then, subtracted from
what the store counts later. The stable version's labels from before its canary existed are not
compared with the canary's. A change of the model's settings, or a decision, starts a new count
(the look index goes on from the pairing's last: a count started again never reuses a level).

Significantly better: the `stable` label moves to the candidate (a shadow stops shadowing: it
serves now). Significantly worse: its traffic weights go to 0 (a shadow stops shadowing).
Neither while stable or candidate is unavailable. The change goes through the manager's control
path (`Manager.amend`: checked whole, applied at once, and only if the settings are still those
the evidence was weighed under). Each decision is logged, counted
(`diptych_promotion_decisions_total{model,decision}`), and kept as the model's last decision for
`GET /models`, with the table before it: a load with that table (`parameters.config`) undoes it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from .errors import Conflict, ServiceError, ValidationError
from .evidence import Paired, Tally, mcnemar, two_proportions
from .metrics import metrics
from .model_settings import ModelConfig

log = logging.getLogger("diptych")

PROMOTED, ROLLED_BACK, REFUSED = "promoted", "rolled_back", "refused"  # REFUSED: the control path said no
SHADOW, SPLIT = "shadow", "split"


class Evidence(Protocol):
    """The labelled answers per version (the feedback store, feedback.py)."""

    def tally(self, model: str, version: int, role: str = "predictor") -> Tally: ...

    def paired(self, model: str, stable: int, candidate: int) -> Paired: ...


class Controlled(Protocol):
    """What promotion needs of the manager (manager/): settings, availability, the control path."""

    def config(self, name: str) -> ModelConfig | None: ...

    def available_versions(self, name: str) -> set[int]: ...

    def amend(self, name: str, decided_on: ModelConfig, table: dict[str, Any]) -> None: ...


class Detached:
    """Models' settings outside a manager, every version available unless said otherwise: what
    the replay benchmark and the tests decide on. `amend` parses the table whole, as the
    manager's does, and refuses a decision taken on settings that changed since."""

    def __init__(self, tables: dict[str, dict[str, Any]], available: set[int] | None = None) -> None:
        self.configs = {name: ModelConfig.parse(name, table) for name, table in tables.items()}
        self.available = available  # None: every version

    def config(self, name: str) -> ModelConfig | None:
        return self.configs.get(name)

    def available_versions(self, name: str) -> set[int]:
        config = self.configs[name]
        return set(config.labels.values()) if self.available is None else set(self.available)

    def amend(self, name: str, decided_on: ModelConfig, table: dict[str, Any]) -> None:
        if self.configs.get(name) != decided_on:
            raise Conflict("config", f"{name}: its settings changed since the decision; nothing was changed")
        try:
            self.configs[name] = ModelConfig.parse(name, table)
        except ValueError as error:
            raise ValidationError("config", str(error)) from None


@dataclasses.dataclass(frozen=True)
class Candidate:
    stable: int
    version: int
    test: str  # SHADOW (paired: McNemar) or SPLIT (independent: two proportions)


@dataclasses.dataclass(frozen=True)
class Decision:
    """One decision, as `GET /models` shows it; `undo` is the table it replaced."""

    model: str
    decision: str
    test: str
    stable: int
    candidate: int
    p: float
    alpha: float  # the level look `look` tested at: max_p / 2**look
    look: int
    stable_tally: Tally
    candidate_tally: Tally
    at: float  # Unix time
    undo: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """As shown to any caller: the undo table without `path` (a folder is an admin's to see).
        A load without it finds the model by name, as the repository does; one configured with
        `path` needs it added back (docs/promotion.md)."""
        return {**dataclasses.asdict(self), "stable_tally": dataclasses.asdict(self.stable_tally),
                "candidate_tally": dataclasses.asdict(self.candidate_tally),
                "undo": {key: value for key, value in self.undo.items() if key != "path"}}


def candidate_of(config: ModelConfig) -> Candidate | None:
    """The shadow, else the one non-stable version the split weighs; None when there is neither
    or the split weighs several (no single candidate to decide on)."""
    stable = config.labels["stable"]
    if config.shadow and (shadow := config.version_of(config.shadow)) not in (None, stable):
        return Candidate(stable, shadow, SHADOW)
    weighed = {config.version_of(target) for target, weight in config.traffic.items() if weight} - {stable, None}
    return Candidate(stable, weighed.pop(), SPLIT) if len(weighed) == 1 else None


def alpha(max_p: float, look: int) -> float:
    """The level of look `look` (1, 2, ...): the levels of all looks add up to less than max_p."""
    return max_p / 2**look


def verdict(stable: Tally, candidate: Tally, p: float, level: float) -> str | None:
    """PROMOTED or ROLLED_BACK when p is at most `level`, by which version is ahead; else None."""
    if p > level or candidate.correct * stable.labelled == stable.correct * candidate.labelled:
        return None
    return PROMOTED if candidate.correct * stable.labelled > stable.correct * candidate.labelled else ROLLED_BACK


def weigh(evidence: Evidence, model: str, candidate: Candidate, baseline: Baseline) -> tuple[Tally, Tally, float, int]:
    """(stable's tally, the candidate's, the p-value, how many labelled answers each has at
    least), counted since `baseline`."""
    if candidate.test == SHADOW:
        paired = since(evidence.paired(model, candidate.stable, candidate.version), baseline.paired)
        stable = Tally(paired.labelled, paired.both_right + paired.stable_only)
        return stable, Tally(paired.labelled, paired.both_right + paired.candidate_only), mcnemar(paired), \
            paired.labelled
    stable = since(evidence.tally(model, candidate.stable), baseline.stable)
    other = since(evidence.tally(model, candidate.version), baseline.candidate)
    return stable, other, two_proportions(stable, other), min(stable.labelled, other.labelled)


def decided_table(config: ModelConfig, candidate: Candidate, decision: str) -> dict[str, Any]:
    """The model's table after `decision`: `stable` on the candidate, or the candidate's weights at 0;
    a shadow stops shadowing either way (promoted, it serves)."""
    table = config.table()
    if candidate.test == SHADOW:
        table.pop("shadow")
    if decision == PROMOTED:
        table["labels"] = {**table["labels"], "stable": candidate.version}
    elif candidate.test == SPLIT:
        table["traffic"] = {target: 0 if config.version_of(target) == candidate.version else weight
                            for target, weight in table["traffic"].items()}
    return table


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A pairing's counts when promotion first saw the model's settings `config`."""

    config: ModelConfig
    stable: Tally
    candidate: Tally
    paired: Paired


def since(now: Any, then: Any) -> Any:
    """A Tally's or Paired's counts added since `then`."""
    return type(now)(*(getattr(now, field.name) - getattr(then, field.name) for field in dataclasses.fields(now)))


def reverted(decision: Decision, config: ModelConfig) -> bool:
    """Whether settings `config` undo `decision`: the old pairing is live again, or (a promotion)
    `stable` names another version than the one promoted."""
    again = candidate_of(config) == Candidate(decision.stable, decision.candidate, decision.test)
    return again or (decision.decision == PROMOTED and config.labels.get("stable") != decision.candidate)


def warn_if_several_workers(configs: Mapping[str, ModelConfig], workers: object) -> None:
    """Each BentoML worker keeps its own feedback store and decides on its own share of the labels:
    promotion assumes one worker per model server (the default). `workers`: BentoML's setting."""
    promoting = sorted(name for name, config in configs.items() if config.promote is not None)
    if promoting and workers not in (None, 1):
        log.warning("promotion by evidence (%s) assumes one worker per model server; this service runs %s: each "
                    "worker decides on its own share of the labels (set DIPTYCH_WORKERS=1)", ", ".join(promoting),
                    workers)


class Promotion:
    """Decides for each model with `promote`, on `evidence`, and changes it through `manager`."""

    def __init__(self, manager: Controlled, evidence: Evidence) -> None:
        self.manager = manager
        self.evidence = evidence
        self._looks: dict[tuple[str, int, int, str], int] = {}  # the last look taken, per pairing
        self._last: dict[str, Decision] = {}
        self._lock = threading.Lock()  # one evaluation at a time: a look is spent once
        self._baselines: dict[str, Baseline] = {}
        self._books = threading.Lock()  # baselines and decisions; never held across a manager pass (`_lock` is)

    def observe(self, model: str) -> None:
        """Take `model`'s pairing's counts as its baseline if its settings changed since last seen
        (the feedback path calls this before labelling: the counts of the moment they changed)."""
        config = self.manager.config(model)
        candidate = candidate_of(config) if config is not None and config.promote is not None else None
        with self._books:
            if candidate is None:
                self._baselines.pop(model, None)
            elif (seen := self._baselines.get(model)) is None or seen.config != config:
                paired = self.evidence.paired(model, candidate.stable, candidate.version)
                self._baselines[model] = Baseline(config, self.evidence.tally(model, candidate.stable),
                                                  self.evidence.tally(model, candidate.version), paired)

    def evaluate(self, model: str) -> Decision | None:
        """Look at `model`'s evidence, and decide if it is enough (the feedback path calls this
        after each batch of labels; it may run a manager pass: call it off the event loop)."""
        with self._lock:
            self.observe(model)
            with self._books:
                baseline = self._baselines.get(model)
            config = baseline.config if baseline is not None else None
            candidate = candidate_of(config) if config is not None else None
            if candidate is None or not {candidate.stable, candidate.version} <= self.manager.available_versions(model):
                return None
            stable, other, p, labelled = weigh(self.evidence, model, candidate, baseline)
            key = (model, candidate.stable, candidate.version, candidate.test)
            look = labelled // config.promote.after
            if look <= self._looks.get(key, 0):
                return None  # too few labels, or no `after` more since the last look
            self._looks[key] = look
            level = alpha(config.promote.max_p, look)
            if (decision := verdict(stable, other, p, level)) is None:
                return None
            record = Decision(model, decision, candidate.test, candidate.stable, candidate.version, p, level, look,
                              stable, other, time.time(), config.table())
            return self._apply(config, candidate, record)

    def _apply(self, config: ModelConfig, candidate: Candidate, record: Decision) -> Decision | None:
        try:
            self.manager.amend(record.model, config, decided_table(config, candidate, record.decision))
        except ServiceError as error:
            metrics().promotion_decisions.labels(record.model, REFUSED).inc()
            log.warning("promotion of %s version %d not applied (%s): %s", record.model, record.candidate,
                        record.decision, error.problem)
            return None
        metrics().promotion_decisions.labels(record.model, record.decision).inc()
        log.info("promotion: %s version %d %s against stable version %d (%s test, look %d, p=%.3g <= %.3g; "
                 "accuracy %d/%d vs %d/%d); undo: load it with the table %s", record.model, record.candidate,
                 record.decision, record.stable, record.test, record.look, record.p, record.alpha,
                 record.candidate_tally.correct, record.candidate_tally.labelled, record.stable_tally.correct,
                 record.stable_tally.labelled, record.undo)
        with self._books:
            self._last[record.model] = record
            self._baselines.pop(record.model, None)  # the pairing ended: a later one counts afresh
        return record

    def decisions(self) -> dict[str, dict[str, Any]]:
        """Each model's last decision (`GET /models`)."""
        with self._books:
            return {model: decision.to_dict() for model, decision in self._last.items()}

    def warn_reverted(self, before: Mapping[str, ModelConfig], after: Mapping[str, ModelConfig]) -> None:
        """Warn of each decision a reloaded config file undoes (the manager calls this): the file
        is the operator's truth, and a decision to keep must be written into it."""
        with self._books:
            undone = [decision for model, decision in self._last.items() if (config := after.get(model)) is not None
                      and config != before.get(model) and reverted(decision, config)]
        for decision in undone:
            log.warning("the reloaded config file undoes the promotion decision on %s: version %d %s against stable "
                        "version %d; write the decision into the file to keep it", decision.model, decision.candidate,
                        decision.decision, decision.stable)
