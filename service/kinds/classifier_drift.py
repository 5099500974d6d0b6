"""Label drift: how far the labels a classifier serves have moved from those it was trained on.

The statistic is the population stability index, PSI = Σ (a − e) · ln(a / e) over the
classes, with `e` each class's share of the training set (the card's `per_class_counts`)
and `a` its share of the last `window` top-1 predictions. Shares are smoothed (half a count
each) so an empty class costs a large finite number, not infinity. The usual reading:
below 0.1 stable, 0.1–0.25 moderate, above 0.25 a shift worth a look (the shipped alert).
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Iterable, Sequence

MIN_SAMPLES = 100  # fewer predictions say too little: no value is reported before


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """PSI of two count vectors over the same classes."""
    e_total, a_total, classes = sum(expected), sum(actual), len(expected)
    value = 0.0
    for e_count, a_count in zip(expected, actual):
        e = (e_count + 0.5) / (e_total + 0.5 * classes)
        a = (a_count + 0.5) / (a_total + 0.5 * classes)
        value += (a - e) * math.log(a / e)
    return value


class LabelDrift:
    """The PSI of a sliding window of top-1 class indices, reported to `report` as it moves."""

    def __init__(self, training_counts: Sequence[int], report, window: int = 1000) -> None:
        self._expected = list(training_counts)
        self._window: collections.deque[int] = collections.deque(maxlen=window)
        self._counts = [0] * len(self._expected)
        self._report = report
        self._lock = threading.Lock()  # batch workers observe concurrently

    def observe(self, classes: Iterable[int]) -> None:
        with self._lock:
            for index in classes:
                if len(self._window) == self._window.maxlen:
                    self._counts[self._window[0]] -= 1
                self._window.append(index)
                self._counts[index] += 1
            if len(self._window) >= MIN_SAMPLES:
                self._report(psi(self._expected, self._counts))
