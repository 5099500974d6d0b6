"""FID against CPU-minutes during training: how fast a recipe converges (`--fid-every N`).

Every N steps the moving-average generator draws one image per test image of a fixed
subset (`CURVE_SAMPLES`, class-matched, ψ = 1) and its domain FID against that subset is
recorded with the CPU-minutes of training so far. A few thousand samples keep a point
cheap (seconds); their FID sits above the full test set's by a sample-size bias, so the
curve compares recipes with each other, and the final numbers come from the export on the
whole test set (training/evaluate_gan.py). The time a point takes is not counted as
training time.
"""

from __future__ import annotations

import numpy as np

from training.data import load_dataset
from training.evaluate_gan import GenerateFn, evaluate_generator, real_side
from training.gan_fid import load_or_train_evaluator

CURVE_SAMPLES = 2000


class FidCurve:
    """Measures the points; `points` is [[steps, cpu_minutes, fid], ...]."""

    def __init__(self, data: str, image_size: int, latent_dim: int, conditional: bool, seed: int = 0):
        train = load_dataset(data, "train", image_size=image_size)
        test = load_dataset(data, "test", image_size=image_size)
        evaluator = load_or_train_evaluator(data, train, test)
        keep = np.random.default_rng(seed).permutation(len(test))[:CURVE_SAMPLES]
        self.real = real_side(evaluator, train, test.subset(keep), seed)
        self.evaluator, self.latent_dim, self.conditional, self.seed = evaluator, latent_dim, conditional, seed
        self.points: list[list[float]] = []

    def measure(self, generate: GenerateFn, steps: int, cpu_seconds: float) -> float:
        evaluation = evaluate_generator(generate, self.latent_dim, self.conditional, self.evaluator,
                                        self.real, self.seed)
        self.points.append([steps, round(cpu_seconds / 60, 3), round(evaluation.fid, 4)])
        return evaluation.fid
