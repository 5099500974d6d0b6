"""Keeping a classifier honest about its classes: class weights, and noticing a collapse.

A model that answers the same class for every image still reaches the majority class's
share of plain accuracy, and early stopping on a small validation set can settle on it
(docs/classifier.md). So the trainer weighs classes when the data is unbalanced, and
checks the model it is about to export for the two signs of a collapse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from training.evaluate import Evaluation

# `--class-weight` is on by default when the largest training class has more than this
# many times the images of the smallest.
IMBALANCE_RATIO = 1.5
# "Predicts (nearly) one class": one class takes at least this share of the predictions.
NEARLY_ALL = 0.95


def class_weights(labels: np.ndarray, num_classes: int, mode: str | None) -> dict[int, float] | None:
    """Keras' `class_weight` for `mode` "balanced" (n / (K · n_k): every class weighs as much
    in the loss as if the classes were equal), None for "none"; `mode` None picks
    "balanced" when the classes differ by more than IMBALANCE_RATIO."""
    counts = np.bincount(labels, minlength=num_classes)
    if mode is None:
        mode = "balanced" if counts.max() > IMBALANCE_RATIO * max(counts.min(), 1) else "none"
    if mode == "none":
        return None
    present = counts > 0  # a class with no training image cannot be weighed: it keeps weight 1
    weights = np.ones(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return {label: float(weight) for label, weight in enumerate(weights)}


def collapse_reason(evaluation: Evaluation, best_validation_accuracy: float | None = None) -> str | None:
    """Why a model that scored `evaluation` looks collapsed, or None.
    `best_validation_accuracy`: the best of the epochs early stopping watched, when
    something stopped early."""
    predicted, actual = evaluation.confusion.sum(axis=0), evaluation.confusion.sum(axis=1)
    total = int(predicted.sum())
    if total == 0:
        return None
    top = int(np.argmax(predicted))
    if predicted[top] >= NEARLY_ALL * total > actual[top]:
        return (f"it answers {evaluation.labels[top]!r} for {predicted[top] / total:.0%} of {total} images, "
                f"of which {actual[top] / total:.0%} are {evaluation.labels[top]!r}")
    majority = actual.max() / total
    if best_validation_accuracy is not None and best_validation_accuracy <= majority + 1e-6:
        return (f"its validation accuracy never rose above {best_validation_accuracy:.0%}, the share of "
                f"the largest class ({majority:.0%}): answering that class every time does as well")
    return None
