"""The feedback store: what each version answered, by request id, until its label comes (#27).

Labels arrive late (a review, a return, a click), keyed by the `x-request-id` the answer
carried. For every request of a model with feedback on, the version that answered
("predictor") and its shadow, which saw the same request, each leave one small `Answer` per
item: the predicted class and its score, nothing of the input. `label()` joins a true label
to them and counts each version's labelled answers (`Tally`, which promotion by evidence reads), the
confusion matrix, the calibration bins, and, for a request both a stable version and its
shadow answered, the pair (`Paired`).

Bounded by `max_entries` and `max_age_s`: the oldest entries fall out first, counted in
`diptych_feedback_evicted_total`; a label for one that fell out is not found. What was
counted stays counted (promotion needs evidence to add up past the store's window); a second
label for the same id takes the first one's counts back before adding its own.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .errors import LimitExceeded, NotFound, ValidationError
from .evidence import Paired, Tally

PREDICTOR, SHADOW = "predictor", "shadow"
BINS = 10  # calibration bins of the top score, for the expected calibration error
MAX_ID = 128  # characters of a request id (context.py keeps client ids up to this long)
MAX_ITEMS = 1000  # labels per feedback call
DENSE_LABELS = 100  # up to this many labels, /models shows the confusion as a matrix; past it, its non-zero cells
CONFUSION_SERIES_LABELS = 32  # up to this many labels, /metrics has a confusion series per (true, predicted)


@dataclasses.dataclass(frozen=True)
class Answer:
    """One item's answer by one version: its class labels, the class it chose and that class's score."""

    version: str
    labels: tuple[str, ...]
    predicted: int
    score: float

    def right(self, truth: str) -> bool:
        return self.labels[self.predicted] == truth


@dataclasses.dataclass
class Entry:
    model: str
    born: float
    answers: dict[str, Answer] = dataclasses.field(default_factory=dict)  # by role
    truth: str | None = None


@dataclasses.dataclass(frozen=True)
class Labelled:
    """One feedback item's outcome: ok (`replaced` when it corrected an earlier label), or the error."""

    request_id: str
    index: int
    error: NotFound | ValidationError | None = None
    replaced: bool = False


class Counts:
    """One version's labelled answers in one role: accuracy, confusion, calibration bins. The
    confusion is sparse, (true, predicted) → count: a model may have 100,000 labels."""

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.tally = Tally()
        self.confusion: dict[tuple[int, int], int] = {}  # (true, predicted) → answers; no zero cells
        self.bins = [[0, 0.0, 0] for _ in range(BINS)]  # per score bin: answers, sum of scores, right ones

    def add(self, answer: Answer, truth: str, sign: int) -> int | None:
        """Count (+1) or take back (-1) one labelled answer; its confusion cell's count after,
        None when the version has no such label (its labels differ from the answer's)."""
        right = answer.right(truth)
        self.tally = Tally(self.tally.labelled + sign, self.tally.correct + sign * right)
        bin_ = self.bins[min(int(max(answer.score, 0.0) * BINS), BINS - 1)]
        bin_[0], bin_[1], bin_[2] = bin_[0] + sign, bin_[1] + sign * answer.score, bin_[2] + sign * right
        if (true := self.index.get(truth)) is None:
            return None
        cell = (true, answer.predicted)
        count = self.confusion[cell] = self.confusion.get(cell, 0) + sign
        if not count:
            del self.confusion[cell]
        return count

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Each label's class index, made on the first label counted (not for a report's empty Counts)."""
        return {label: position for position, label in enumerate(self.labels)}

    @property
    def ece(self) -> float | None:
        """Expected calibration error: how far each bin's accuracy is from its mean score, weighted by its share."""
        if not self.tally.labelled:
            return None
        return sum(abs(right - scores) for _, scores, right in self.bins) / self.tally.labelled

    def report(self) -> dict[str, Any]:
        """Up to DENSE_LABELS labels: the confusion as a matrix, [true][predicted], and the
        labels; past it, the non-zero cells only, {label, predicted, count}, no label list."""
        if len(self.labels) > DENSE_LABELS:
            labels, confusion = None, [{"label": self.labels[true], "predicted": self.labels[predicted],
                                        "count": count} for (true, predicted), count in sorted(self.confusion.items())]
        else:
            labels, confusion = list(self.labels), [[0] * len(self.labels) for _ in self.labels]
            for (true, predicted), count in self.confusion.items():
                confusion[true][predicted] = count
        return {"labelled": self.tally.labelled, "accuracy": self.tally.accuracy, "ece": self.ece,
                "labels": labels, "confusion": confusion}


class FeedbackMetrics:
    """Per version and role: gauges, since a second label can take a count back; deploy/prometheus reads them."""

    def __init__(self) -> None:
        import prometheus_client as prom

        role = ["model", "version", "role"]
        self.labelled = prom.Gauge("diptych_feedback_labelled", "Labelled answers of a model version, as the "
                                   "predictor or as a shadow", role, multiprocess_mode="livemax")
        self.accuracy = prom.Gauge("diptych_feedback_accuracy", "Share of a version's labelled answers that were "
                                   "right", role, multiprocess_mode="livemax")
        self.ece = prom.Gauge("diptych_feedback_ece", f"Expected calibration error of a version's labelled answers "
                              f"({BINS} bins of the top score)", role, multiprocess_mode="livemax")
        self.confusion = prom.Gauge("diptych_feedback_confusion", "Labelled answers by true and predicted label",
                                    [*role, "label", "predicted"], multiprocess_mode="livemax")
        self.labels = prom.Counter("diptych_feedback_labels", "Feedback items, by outcome (ok, replaced, "
                                   "not_found, invalid_input)", ["outcome"])
        self.evicted = prom.Counter("diptych_feedback_evicted", "Answers that fell out of the feedback store "
                                    "unlabelled or labelled, by reason (size, age)", ["reason"])
        self.entries = prom.Gauge("diptych_feedback_entries", "Answers kept for labels", multiprocess_mode="livesum")


@functools.cache
def metrics() -> FeedbackMetrics:
    """Made once, on first use (as the core's are: Prometheus refuses duplicate names)."""
    return FeedbackMetrics()


class FeedbackStore:
    """Thread-safe: answers are recorded from batch workers and event loops, labels from requests."""

    def __init__(self, max_entries: int = 100_000, max_age_s: float = 86_400.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries, self.max_age_s, self._clock = max_entries, max_age_s, clock
        self._entries: collections.OrderedDict[tuple[str, int], Entry] = collections.OrderedDict()  # oldest first
        self._counts: dict[tuple[str, str, str], Counts] = {}  # (model, version, role)
        self._pairs: dict[tuple[str, str, str], Paired] = {}  # (model, stable, candidate)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, request_id: str, model: str, version: str | int, role: str, labels: tuple[str, ...],
               answers: Sequence[tuple[int, float]], kept: dict[int, Entry]) -> None:
        """Keep a request's answers (item i: (predicted class, its score)) by `version` in `role`.
        `kept` is the request's own (its context's `feedback_entries`): its first answer makes
        the entries, under `request_id`, and its other role's answer (the shadow's, whenever it
        comes) joins those, never whatever entry holds the id by then: clients choose ids, and
        may send one twice. `labels` is the version's own tuple, kept by reference (a copy per
        answer: 8 bytes × labels each)."""
        now = self._clock()
        with self._lock:
            for index, (predicted, score) in enumerate(answers):
                entry = kept.get(index)
                if entry is None or entry.model != model or role in entry.answers:  # else: an answer to join
                    key = (request_id, index)
                    entry = kept[index] = self._entries[key] = Entry(model, now)
                    self._entries.move_to_end(key)
                self._count(entry, -1)
                entry.answers[role] = Answer(str(version), labels, int(predicted), float(score))
                self._count(entry, +1)
            self._evict(now)

    def label(self, request_id: str, truth: str | int, index: int = 0) -> bool:
        """Join the true label (a name, or a class index) to request `request_id`'s item `index`;
        True when it replaced an earlier label. NotFound: no such id, or it fell out;
        ValidationError: a label the answering version does not have."""
        with self._lock:
            self._evict(self._clock())
            entry = self._entries.get((request_id, index))
            if entry is None:
                raise NotFound(f"no answer to label for request {request_id!r}" + (f" item {index}" if index else "")
                               + ": unknown, older than the feedback store keeps, or answered by a model "
                               "without feedback on (feedback = true in its table, or DIPTYCH_FEEDBACK=true)",
                               "request_id")
            name = _truth(truth, next(iter(entry.answers.values())).labels)
            replaced = entry.truth is not None
            self._count(entry, -1)
            entry.truth = name
            self._count(entry, +1)
            return replaced

    def label_items(self, items: Sequence[tuple[str, str | int, int]]) -> list[Labelled]:
        """Each (request id, label, item index) labelled, or its error: one item's error never stops the others."""
        if not items:
            raise ValidationError("items", "no feedback items: send at least one {request_id, label}")
        if len(items) > MAX_ITEMS:
            raise LimitExceeded("items", f"{len(items)} feedback items: at most {MAX_ITEMS} per call")
        results = []
        for request_id, truth, index in items:
            try:
                if not request_id or len(request_id) > MAX_ID or not request_id.isprintable():
                    raise ValidationError("request_id", f"a request's x-request-id, 1 to {MAX_ID} printable characters")
                if index < 0:
                    raise ValidationError("index", "an item's position in its request, from 0")
                results.append(Labelled(request_id, index, replaced=self.label(request_id, truth, index)))
            except (NotFound, ValidationError) as error:
                results.append(Labelled(request_id, index, error))
            outcome = results[-1].error.reason if results[-1].error else "replaced" if results[-1].replaced else "ok"
            metrics().labels.labels(outcome=outcome).inc()
        return results

    # -- what promotion and /models read ------------------------------------------------
    def tally(self, model: str, version: int | str, role: str = PREDICTOR) -> Tally:
        with self._lock:
            counts = self._counts.get((model, str(version), role))
            return counts.tally if counts else Tally()

    def paired(self, model: str, stable: int | str, candidate: int | str) -> Paired:
        """Labelled requests `stable` answered and `candidate`, as its shadow, answered too."""
        with self._lock:
            return self._pairs.get((model, str(stable), str(candidate)), Paired())

    def report(self, model: str, version: int | str) -> dict[str, Any] | None:
        """`/models`' view of a version: its labelled answers as the predictor, and as a shadow
        under `shadow` when it was one; None while it has none."""
        with self._lock:
            predictor, shadow = (self._counts.get((model, str(version), role)) for role in (PREDICTOR, SHADOW))
            if predictor is None and shadow is None:
                return None
            return {**(predictor or Counts(shadow.labels)).report(), **({"shadow": shadow.report()} if shadow else {})}

    # -- under the lock -------------------------------------------------------------------
    def _count(self, entry: Entry, sign: int) -> None:
        """Add (+1) or take back (-1) what a labelled entry counts for: each answer, and the pair."""
        if entry.truth is None:
            return
        for role, answer in entry.answers.items():
            key = (entry.model, answer.version, role)
            counts = self._counts.get(key) or self._counts.setdefault(key, Counts(answer.labels))
            _publish(key, counts, answer, entry.truth, counts.add(answer, entry.truth, sign))
        if (stable := entry.answers.get(PREDICTOR)) and (candidate := entry.answers.get(SHADOW)):
            key = (entry.model, stable.version, candidate.version)
            self._pairs[key] = _paired(self._pairs.get(key, Paired()), stable.right(entry.truth),
                                       candidate.right(entry.truth), sign)

    def _evict(self, now: float) -> None:
        while self._entries:
            key, oldest = next(iter(self._entries.items()))
            reason = "size" if len(self._entries) > self.max_entries else \
                "age" if now - oldest.born > self.max_age_s else None
            if reason is None:
                break
            del self._entries[key]
            metrics().evicted.labels(reason=reason).inc()
        metrics().entries.set(len(self._entries))


def _truth(truth: str | int, labels: tuple[str, ...]) -> str:
    """A label name, from a name or a class index, checked against the answering version's labels."""
    if isinstance(truth, bool) or not isinstance(truth, (str, int)):
        raise ValidationError("label", "a label name or a class index")
    if isinstance(truth, int):
        if not 0 <= truth < len(labels):
            raise ValidationError("label", f"class index {truth} is not between 0 and {len(labels) - 1}")
        return labels[truth]
    if truth not in labels:
        shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
        raise ValidationError("label", f"{truth[:80]!r} is not one of the model's labels ({shown})")
    return truth


def _paired(paired: Paired, stable: bool, candidate: bool, sign: int) -> Paired:
    field = {(True, True): "both_right", (True, False): "stable_only", (False, True): "candidate_only",
             (False, False): "both_wrong"}[stable, candidate]
    return dataclasses.replace(paired, **{field: getattr(paired, field) + sign})


def _publish(key: tuple[str, str, str], counts: Counts, answer: Answer, truth: str, cell: int | None) -> None:
    """The version's gauges; its confusion cell's only for a model of at most
    CONFUSION_SERIES_LABELS labels (a series per cell: up to labels² of them)."""
    labels = dict(zip(("model", "version", "role"), key))
    metrics().labelled.labels(**labels).set(counts.tally.labelled)
    metrics().accuracy.labels(**labels).set(counts.tally.accuracy or 0.0)
    metrics().ece.labels(**labels).set(counts.ece or 0.0)
    if cell is not None and len(counts.labels) <= CONFUSION_SERIES_LABELS:
        metrics().confusion.labels(**labels, label=truth, predicted=counts.labels[answer.predicted]).set(cell)
