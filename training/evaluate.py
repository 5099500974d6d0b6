"""Evaluate an exported classifier on a labelled data set.

    python -m training.evaluate models/classifier/1 --data fashion-mnist

Loads the SavedModel with `tf.saved_model.load` alone (as any client would), so what it
measures is the exported artefact, not the Keras model it came from. Prints accuracy and
per-class precision/recall, and writes a confusion-matrix PNG and a markdown report. Every
report leads with balanced accuracy (the mean of the per-class recalls): on an unbalanced
test set plain accuracy rewards answering the largest class, balanced accuracy does not.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from contract.card import ModelCard
from training.cli import UserError, model_parser, resolve_model_dir, run_cli


@dataclass
class Evaluation:
    labels: list[str]
    confusion: np.ndarray  # [true, predicted] counts
    scores: np.ndarray | None = None  # [N, classes]: what the model answered, for the calibration error
    truth: np.ndarray | None = None  # [N]: each image's true class, as the model's label index

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.confusion.sum(), 1))

    @property
    def balanced_accuracy(self) -> float:
        """The mean recall over the classes the data has: 1 / K for a model that answers one class."""
        present = self.confusion.sum(axis=1) > 0
        return float(self.recall[present].mean()) if present.any() else 0.0

    @property
    def precision(self) -> np.ndarray:
        return np.diag(self.confusion) / np.maximum(self.confusion.sum(axis=0), 1)

    @property
    def recall(self) -> np.ndarray:
        return np.diag(self.confusion) / np.maximum(self.confusion.sum(axis=1), 1)

    def as_dict(self) -> dict:
        return {
            "balanced_accuracy": round(self.balanced_accuracy, 4),
            "accuracy": round(self.accuracy, 4),
            "examples": int(self.confusion.sum()),
            "per_class": {
                label: {"precision": round(float(p), 4), "recall": round(float(r), 4)}
                for label, p, r in zip(self.labels, self.precision, self.recall)
            },
        }


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (true, predicted), 1)
    return matrix


def evaluate_saved_model(model_dir: Path, model_labels: list[str], images: np.ndarray, labels: np.ndarray,
                         class_names: list[str], batch_size: int = 256) -> Evaluation:
    """Classify `images` through the exported `classify_pixels` signature."""
    import tensorflow as tf

    missing = sorted(set(class_names) - set(model_labels))
    if missing:
        raise UserError(f"the data has classes the model does not know: {missing}; "
                        f"the model's labels are {model_labels}")
    to_model_index = np.array([model_labels.index(name) for name in class_names])
    classify = tf.saved_model.load(str(model_dir)).signatures["classify_pixels"]

    scores = np.concatenate([
        classify(images=tf.constant(images[start:start + batch_size]))["scores"].numpy()
        for start in tqdm(range(0, len(images), batch_size), desc="evaluate", unit="batch", leave=False)])
    truth = to_model_index[labels]
    return Evaluation(model_labels, confusion_matrix(truth, scores.argmax(axis=1), len(model_labels)), scores, truth)


def plot_confusion(evaluation: Evaluation, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(5, 0.6 * len(evaluation.labels))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    ax.imshow(evaluation.confusion, cmap="Blues")
    ax.set_xticks(range(len(evaluation.labels)), evaluation.labels, rotation=45, ha="right")
    ax.set_yticks(range(len(evaluation.labels)), evaluation.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = evaluation.confusion.max() / 2
    for (row, col), count in np.ndenumerate(evaluation.confusion):
        ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
                color="white" if count > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_report(evaluation: Evaluation, card: ModelCard, data: str, split: str) -> str:
    lines = [
        f"# {card.name} v{card.version} on {data} ({split})",
        "",
        f"Balanced accuracy **{evaluation.balanced_accuracy:.2%}** (the mean of the per-class recalls).",
        "",
        f"Backbone `{card.backbone}` at {card.image_size[0]} px; "
        f"accuracy **{evaluation.accuracy:.2%}** on {int(evaluation.confusion.sum())} images.",
        "",
        "| class | precision | recall |",
        "|---|---|---|",
    ]
    for label, p, r in zip(evaluation.labels, evaluation.precision, evaluation.recall):
        lines.append(f"| {label} | {p:.3f} | {r:.3f} |")
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    return "\n".join(lines)


def print_summary(evaluation: Evaluation) -> None:
    width = max(len(label) for label in evaluation.labels)
    print(f"balanced accuracy: {evaluation.balanced_accuracy:.2%} (the mean of the per-class recalls)")
    print(f"{'class':<{width}}  precision  recall")
    for label, p, r in zip(evaluation.labels, evaluation.precision, evaluation.recall):
        print(f"{label:<{width}}  {p:9.3f}  {r:6.3f}")
    print(f"accuracy: {evaluation.accuracy:.2%} on {int(evaluation.confusion.sum())} images")


def evaluate_and_report(model_dir: Path, data: str, split: str, report_dir: Path | None = None,
                        limit: int | None = None, card: ModelCard | None = None) -> Evaluation:
    """Evaluate, print the summary, write the PNG and markdown report; return the numbers.
    `card`: the export's, when it is not written yet (the trainer evaluates before it is)."""
    from training.data import load_dataset

    card = card or ModelCard.read(model_dir)
    dataset = load_dataset(data, split=split, image_size=card.image_size[0])
    images, labels = dataset.images, dataset.labels
    if limit:
        images, labels = images[:limit], labels[:limit]
    evaluation = evaluate_saved_model(model_dir, card.labels, images, labels, dataset.class_names)
    print_summary(evaluation)
    report_dir = report_dir or Path("reports") / f"{card.name}-v{card.version}"
    report_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion(evaluation, report_dir / "confusion_matrix.png",
                   f"{card.name} v{card.version}: balanced accuracy {evaluation.balanced_accuracy:.2%}")
    (report_dir / "report.md").write_text(markdown_report(evaluation, card, data, split))
    print(f"report: {report_dir / 'report.md'} (confusion matrix: {report_dir / 'confusion_matrix.png'})")
    return evaluation


def main(argv: list[str] | None = None) -> None:
    parser = model_parser("python -m training.evaluate", "Evaluate an exported classifier: balanced accuracy, "
                          "per-class precision/recall, accuracy, confusion-matrix PNG and a markdown report.",
                          "models/classifier/3")
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist, mnist, or an image folder")
    parser.add_argument("--split", default="test", help="which split of the data set to evaluate on")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N images only")
    parser.add_argument("--report-dir", type=Path, default=None,
                        help="where to write report.md and confusion_matrix.png "
                             "(default: reports/<name>-v<version>)")
    args = parser.parse_args(argv)
    evaluate_and_report(resolve_model_dir(args.model), args.data, args.split, args.report_dir, args.limit)


if __name__ == "__main__":
    sys.exit(run_cli(main))
