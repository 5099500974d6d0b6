"""Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks").

A softmax classifier's top score is not the probability that it is right: trained to
minimise cross-entropy on few images, it is usually overconfident. One number fixes most of
it: divide the logits by a temperature T fitted on held-out images (the NLL of
softmax(logits / T) at its minimum). T > 1 softens the scores, T < 1 sharpens them; the
arg-max, so the accuracy, never changes. The export bakes T into its graph (training/export.py),
so every signature and every runtime serves calibrated scores.

The models here end in a softmax, so the logits are recovered as log(scores): the same up
to a constant per row, which the softmax ignores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

TINY = 1e-30  # log's floor: a float32 score can underflow to exactly 0
BINS = 10  # the expected calibration error's confidence bins, as in Guo et al.
LOG_T_RANGE = (-3.0, 3.0)  # T from 0.05 to 20: far past any real model's


def logits_of(scores: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(scores, TINY))


def with_temperature(scores: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(scores) / T): what the export's signatures return."""
    logits = logits_of(scores) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def negative_log_likelihood(scores: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    calibrated = with_temperature(scores, temperature)
    return float(-np.log(np.maximum(calibrated[np.arange(len(labels)), labels], TINY)).mean())


def fit_temperature(scores: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the NLL of `labels` under softmax(log(scores) / T). The NLL is
    convex in 1/T, so a bounded one-dimensional search over log T finds its minimum. Rounded
    to 4 decimals: the card and the export's graph hold the same number."""
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(lambda log_t: negative_log_likelihood(scores, labels, float(np.exp(log_t))),
                            bounds=LOG_T_RANGE, method="bounded", options={"xatol": 1e-4})
    return round(float(np.exp(found.x)), 4)


def expected_calibration_error(scores: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Σ over equal-width confidence bins of (share of images) × |accuracy − mean confidence|."""
    confidence, correct = scores.max(axis=1), scores.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    error = 0.0
    for index in range(bins):
        members = which == index
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def reliability(scores: np.ndarray, labels: np.ndarray, bins: int = BINS) -> list[tuple[float, float, int]]:
    """Per confidence bin: (mean confidence, accuracy, images); empty bins left out."""
    confidence, correct = scores.max(axis=1), scores.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return [(float(confidence[which == index].mean()), float(correct[which == index].mean()),
             int((which == index).sum())) for index in range(bins) if (which == index).any()]


def out_of_fold_scores(fit_and_score: Callable[[np.ndarray, np.ndarray], np.ndarray], labels: np.ndarray,
                       folds: int, seed: int) -> np.ndarray:
    """Scores of every training image by a model that did not see it: `fit_and_score(train,
    held)` (index arrays) trains on `train` and scores `held`. For a recipe that holds nothing
    out (the head on precomputed features): T is fitted on these, and the head that is
    exported, trained on every image, gets it."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=int)
    for label in np.unique(labels):  # stratified: every fold sees every class
        members = rng.permutation(np.flatnonzero(labels == label))
        fold_of[members] = np.arange(len(members)) % folds
    scores = None
    for fold in range(folds):
        held = np.flatnonzero(fold_of == fold)
        fold_scores = fit_and_score(np.flatnonzero(fold_of != fold), held)
        scores = np.zeros((len(labels), fold_scores.shape[1]), np.float32) if scores is None else scores
        scores[held] = fold_scores
    return scores


@dataclass
class HeldOut:
    scores: np.ndarray  # [N, classes] by a model that did not train on these images
    truth: np.ndarray  # [N] their true classes


def fitted_temperature(held_out: HeldOut, log: Callable[[str], None]) -> float:
    """T for `held_out` (a `HeldOut`, or an `Evaluation` of held-out images), said in the log."""
    temperature = fit_temperature(held_out.scores, held_out.truth)
    before = negative_log_likelihood(held_out.scores, held_out.truth, 1.0)
    after = negative_log_likelihood(held_out.scores, held_out.truth, temperature)
    log(f"calibration: temperature {temperature:g} fitted on {len(held_out.truth)} held-out images "
        f"(their NLL {before:.3f} -> {after:.3f})")
    return temperature


def test_calibration_errors(evaluation, temperature: float, log: Callable[[str], None]) -> dict[str, float]:
    """The card's ECEs on the test split, from the export's (calibrated) scores: without T the
    scores were softmax(log(calibrated) · T)."""
    calibrated = evaluation.scores
    errors = {"ece_uncalibrated": expected_calibration_error(with_temperature(calibrated, 1 / temperature),
                                                             evaluation.truth),
              "ece_calibrated": expected_calibration_error(calibrated, evaluation.truth)}
    log(f"calibration: expected calibration error on the test split {errors['ece_uncalibrated']:.4f} "
        f"-> {errors['ece_calibrated']:.4f} (temperature {temperature:g})")
    return {name: round(value, 4) for name, value in errors.items()}
