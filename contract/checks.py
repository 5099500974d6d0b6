"""How a LiteRT conversion's outputs are judged against TensorFlow's, by a check the kind names.

`measure` takes from both runtimes' outputs on the calibration sample what every check reads:
the largest difference of any output, and how often each row of a float matrix keeps its
arg-max (a classifier's top-1). A check, chosen by name from `CHECKS`, judges these against
the card's `tolerance`. What the outputs mean decides which check is right, and only the
kind of model knows that (the service's `ServedModel.conversion_check`): a classifier's
scores must keep their top-1, an embedding's largest entry means nothing (two near-equal
entries swap on a rounding difference, and the vector is still right), a generator's pixels
need only be close. This package knows no kind: where none asks (training.publish, the
benchmarks) the conversion is judged by `STRICTEST`, which accepts only what every check
accepts, and the service judges the stored measurements again by its kind's check
(`Conversion.judged`). A kind kept elsewhere may add a check here under a name of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Check = Callable[[Mapping[str, float], float], list[str]]  # (measurements, tolerance) → problems, none if it passes


def measure(expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The largest difference of any output, and the share of float-matrix rows whose arg-max agrees."""
    difference, agreement = 0.0, 1.0
    for name, want in expected.items():
        have = got[name]
        difference = max(difference, float(np.abs(want.astype(np.float64) - have.astype(np.float64)).max()))
        if want.ndim == 2 and want.dtype.kind == "f":
            agreement = min(agreement, float(np.mean(want.argmax(axis=1) == have.argmax(axis=1))))
    return {"max_difference": difference, "top1_agreement": agreement}


def within_tolerance(measured: Mapping[str, float], tolerance: float) -> list[str]:
    """Every output within the card's tolerance: an embedding, a generator's pixels, any kind's default."""
    difference = measured["max_difference"]
    return [f"largest output difference {difference:.2g} is over {tolerance:g}"] if difference > tolerance else []


def same_top1(measured: Mapping[str, float], tolerance: float) -> list[str]:
    """Within the tolerance, and every row of a float matrix keeps its arg-max: a classifier's scores."""
    problems = within_tolerance(measured, tolerance)
    if (agreement := measured["top1_agreement"]) < 1:
        problems.append(f"top-1 differs on {1 - agreement:.0%} of the inputs")
    return problems


CHECKS: dict[str, Check] = {"tolerance": within_tolerance, "top-1": same_top1}
STRICTEST = "top-1"  # what passes it passes every shipped check


def judge(measured: Mapping[str, float], tolerance: float, check: str, described: str) -> dict[str, Any]:
    """The verdict of `check` on the measurements, as a conversion report records it."""
    problems = checked(check)(measured, tolerance)
    reason = "; ".join(problems) if problems else f"agrees with TensorFlow on {described}"
    return {**measured, "tolerance": tolerance, "check": check, "verified": not problems, "reason": reason}


def checked(name: str) -> Check:
    """The check registered as `name`; a ValueError naming the registered ones otherwise."""
    try:
        return CHECKS[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a conversion check: one of {', '.join(sorted(CHECKS))}") from None
