"""Calibration of an exported classifier on its test split: a reliability diagram before and
after its temperature, and accuracy against coverage for `abstain_below`.

    python -m benchmarks.calibration models/classifier/1 --data fashion-mnist \\
        --plot docs/images/reliability.png

The export's scores are calibrated (its card's `temperature`, baked into its graph by
training/export.py); the scores before are softmax(log(calibrated) · T). For each threshold
it prints the share of test images answered (top score at or over it: the others abstain)
and the accuracy on those: the markdown table in docs/classifier.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from contract.card import ModelCard
from training.calibration import expected_calibration_error, reliability, with_temperature

THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def test_scores(model_dir: Path, data: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The export's (calibrated) scores on the test split, and each image's true label index."""
    from training.data import load_dataset
    from training.evaluate import evaluate_saved_model

    card = ModelCard.read(model_dir)
    test = load_dataset(data, split="test", image_size=card.image_size[0])
    images, labels = (test.images[:limit], test.labels[:limit]) if limit else (test.images, test.labels)
    evaluation = evaluate_saved_model(model_dir, card.labels, images, labels, test.class_names)
    return evaluation.scores, evaluation.truth


def coverage_table(scores: np.ndarray, truth: np.ndarray, thresholds=THRESHOLDS) -> list[str]:
    """Markdown rows: abstain_below, share answered, accuracy of those answered."""
    confidence, correct = scores.max(axis=1), scores.argmax(axis=1) == truth
    rows = ["| abstain_below | answered | accuracy of the answered |", "|---|---|---|"]
    for threshold in thresholds:
        answered = confidence >= threshold
        accuracy = f"{correct[answered].mean():.1%}" if answered.any() else "-"
        rows.append(f"| {threshold:g} | {answered.mean():.1%} | {accuracy} |")
    return rows


def plot(before: np.ndarray, after: np.ndarray, truth: np.ndarray, temperature: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, scores, title in ((axes[0], before, "before (T = 1)"), (axes[1], after, f"after (T = {temperature:g})")):
        bins = reliability(scores, truth)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
        ax.bar([b[0] for b in bins], [b[1] for b in bins], width=0.06, alpha=0.7, label="accuracy per confidence bin")
        for confidence, accuracy, count in bins:
            ax.annotate(str(count), (confidence, accuracy), ha="center", va="bottom", fontsize=7)
        ax.set_title(f"{title}: ECE {expected_calibration_error(scores, truth):.3f}")
        ax.set_xlabel("top score (confidence)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.calibration", description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="an exported classifier's version folder")
    parser.add_argument("--data", default="fashion-mnist", help="its data set (the test split is read)")
    parser.add_argument("--limit", type=int, default=None, help="the first N test images only; default: all")
    parser.add_argument("--plot", type=Path, default=None, help="write the reliability diagram (PNG) here")
    args = parser.parse_args(argv)
    temperature = ModelCard.read(args.model).temperature or 1.0
    after, truth = test_scores(args.model, args.data, args.limit)
    before = with_temperature(after, 1 / temperature)
    print(f"{len(truth)} test images, temperature {temperature:g}: accuracy {(after.argmax(1) == truth).mean():.2%}, "
          f"ECE {expected_calibration_error(before, truth):.4f} before, {expected_calibration_error(after, truth):.4f} "
          "after")
    print("\n".join(coverage_table(after, truth)))
    if args.plot:
        plot(before, after, truth, temperature, args.plot)
        print(f"reliability diagram: {args.plot}")


if __name__ == "__main__":
    sys.exit(main())
