"""Is one version of a model better than another, on the labels fed back? (#27)

The feedback store (feedback.py) counts labelled answers per version (`Tally`) and, for the
requests a stable version and its shadow both answered, the pairs (`Paired`); promotion
(promotion.py) asks the tests here. Both tests are two-sided and return a p-value; which
version is ahead is read from the counts.

- A shadow sees the same requests as the version it shadows: its answers are *paired*, and
  McNemar's test looks only at the requests where exactly one of the two was right (exact
  binomial, no normal approximation: the discordant pairs are few early on).
- A canary gets different requests than the stable version: two independent proportions,
  the pooled two-proportion z-test.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Tally:
    """One version's labelled answers."""

    labelled: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


@dataclasses.dataclass(frozen=True)
class Paired:
    """Requests both the stable version and a candidate answered, with a label."""

    both_right: int = 0
    stable_only: int = 0  # the stable version right, the candidate wrong
    candidate_only: int = 0  # the candidate right, the stable version wrong
    both_wrong: int = 0

    @property
    def labelled(self) -> int:
        return self.both_right + self.stable_only + self.candidate_only + self.both_wrong


def mcnemar(paired: Paired) -> float:
    """Two-sided exact McNemar p-value: under "equally good", each discordant pair is a fair coin."""
    discordant = paired.stable_only + paired.candidate_only
    if discordant == 0:
        return 1.0
    tail = min(paired.stable_only, paired.candidate_only)
    # P(X <= tail) for X ~ Binomial(discordant, 1/2), in log space (discordant may be thousands).
    log_half = discordant * math.log(0.5)
    one_tail = sum(math.exp(_log_choose(discordant, k) + log_half) for k in range(tail + 1))
    return min(1.0, 2.0 * one_tail)


def two_proportions(stable: Tally, candidate: Tally) -> float:
    """Two-sided p-value of the pooled z-test that both versions have the same accuracy."""
    if not stable.labelled or not candidate.labelled:
        return 1.0
    pooled = (stable.correct + candidate.correct) / (stable.labelled + candidate.labelled)
    spread = pooled * (1 - pooled) * (1 / stable.labelled + 1 / candidate.labelled)
    if spread == 0:
        return 1.0  # both always right, or both always wrong: nothing tells them apart
    z = (candidate.accuracy - stable.accuracy) / math.sqrt(spread)
    return math.erfc(abs(z) / math.sqrt(2))


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
