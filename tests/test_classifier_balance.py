"""Honest comparisons: the trainer notices a collapse, weighs unbalanced classes, and every
report leads with balanced accuracy (issue #29). Tiny folders, a few steps each."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from training.class_balance import class_weights, collapse_reason
from training.classifier import main as classifier_main
from training.classifier_config import parse_args
from training.cli import run_cli
from training.evaluate import Evaluation


def _folder(root, counts: dict[str, int], side=20, same_image=True):
    """One subfolder per class. `same_image`: every image of every class is the same grey
    square, so nothing can tell the classes apart and a model can only answer one of them."""
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            pixels = np.full((side, side, 3), 128, np.uint8) if same_image else \
                rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}-{index}.png")
    return root


def _card(out):
    return json.loads(next(out.glob("*/model_card.json")).read_text())


def test_an_unlearnable_folder_collapses_with_a_warning_in_the_log_and_the_card(tmp_path, capsys):
    data = _folder(tmp_path / "data", {"left": 20, "right": 20})
    argv = ["--data", str(data), "--backbone", "scratch", "--epochs", "2", "--out", str(tmp_path / "m")]
    assert run_cli(lambda: classifier_main(argv)) == 0
    out = capsys.readouterr().out
    assert "WARNING: the model collapsed" in out
    card = _card(tmp_path / "m")
    assert card["metrics"]["collapsed"] is True
    assert "100% of" in card["metrics"]["collapse"]
    # Balanced accuracy exposes what plain accuracy hides: one class right, the other never.
    assert card["metrics"]["test_balanced_accuracy"] == 0.5
    assert sorted(card["metrics"]["test_recall"].values()) == [0.0, 1.0]
    assert card["image_size"] == [20, 20]  # the scratch CNN follows the folder's size


def test_strict_makes_a_collapse_an_error_and_exports_nothing(tmp_path, capsys):
    data = _folder(tmp_path / "data", {"left": 20, "right": 20})
    argv = ["--data", str(data), "--backbone", "scratch", "--epochs", "2", "--strict", "--out", str(tmp_path / "m")]
    assert run_cli(lambda: classifier_main(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the model collapsed") and "--strict" in err and "Traceback" not in err
    assert not list((tmp_path / "m").glob("[0-9]*"))


def test_a_learnable_folder_does_not_collapse(tmp_path):
    """The check must be able to say no: two classes a CNN tells apart (bright vs dark)."""
    root = tmp_path / "data"
    for name, level in (("dark", 30), ("bright", 220)):
        (root / name).mkdir(parents=True)
        for index in range(20):
            noise = np.random.default_rng(index).integers(-20, 20, (16, 16, 3))
            Image.fromarray((level + noise).astype(np.uint8)).save(root / name / f"{name}-{index}.png")
    argv = ["--data", str(root), "--backbone", "scratch", "--epochs", "15", "--learning-rate", "0.01",
            "--strict", "--out", str(tmp_path / "m")]
    assert run_cli(lambda: classifier_main(argv)) == 0
    metrics = _card(tmp_path / "m")["metrics"]
    assert metrics["collapsed"] is False and "collapse" not in metrics
    assert metrics["test_balanced_accuracy"] == 1.0


@pytest.mark.parametrize("class_weight, expected_share", [("balanced", 0.5), ("none", 0.75)])
def test_class_weights_are_applied_when_classes_are_unbalanced(tmp_path, class_weight, expected_share):
    """Three images of `many` to each of `few`, all identical: the loss is lowest at the
    classes' weighted shares, so the head's score for `many` shows which weights it saw."""
    data = _folder(tmp_path / "data", {"few": 10, "many": 30})
    argv = ["--data", str(data), "--image-size", "32", "--head-steps", "400", "--learning-rate", "0.02",
            "--no-evaluate", "--out", str(tmp_path / "m")]
    if class_weight == "none":
        argv += ["--class-weight", "none"]  # balanced is the default at 3:1
    assert run_cli(lambda: classifier_main(argv)) == 0
    card = _card(tmp_path / "m")
    # 24 + 8 training images once the folder's 20% test share is held out.
    assert card["training"]["class_weights"] == ({"few": 2.0, "many": 0.6667} if class_weight == "balanced"
                                                 else None)
    import tensorflow as tf

    classify = tf.saved_model.load(str(next((tmp_path / "m").glob("[0-9]*")))).signatures["classify_pixels"]
    scores = classify(images=tf.fill([1, 32, 32, 3], tf.constant(128, tf.uint8)))["scores"].numpy()[0]
    assert scores[card["labels"].index("many")] == pytest.approx(expected_share, abs=0.05)


def test_class_weights_balance_the_loss_and_are_off_for_balanced_data():
    labels = np.array([0] * 30 + [1] * 10 + [2] * 20)
    weights = class_weights(labels, 3, None)
    assert weights == {0: pytest.approx(60 / 90), 1: 2.0, 2: 1.0}
    # every class weighs as much in the loss: weight x count is the same
    assert {round(weights[k] * n, 6) for k, n in ((0, 30), (1, 10), (2, 20))} == {20.0}
    assert class_weights(np.array([0] * 14 + [1] * 10), 2, None) is None  # 1.4x: under the 1.5x line
    assert class_weights(labels, 3, "none") is None
    assert class_weights(np.array([0] * 10 + [1] * 10), 2, "balanced") == {0: 1.0, 1: 1.0}


def test_collapse_reasons():
    labels = ["a", "b", "c"]
    one_class = Evaluation(labels, np.array([[10, 0, 0], [9, 1, 0], [10, 0, 0]]))
    assert "'a' for 97% of 30 images, of which 33% are 'a'" in collapse_reason(one_class)
    assert one_class.balanced_accuracy == pytest.approx((1 + 0.1 + 0) / 3)
    # A model that answers the largest class on data that is almost all that class has not collapsed...
    mostly_a = Evaluation(labels, np.array([[96, 0, 0], [2, 0, 0], [2, 0, 0]]))
    assert collapse_reason(mostly_a) is None
    # ...unless, while it trained, it never did better than answering that class.
    assert "never rose above 96%" in collapse_reason(mostly_a, best_validation_accuracy=0.96)
    healthy = Evaluation(labels, np.array([[8, 1, 1], [1, 8, 1], [1, 1, 8]]))
    assert collapse_reason(healthy, best_validation_accuracy=0.8) is None


def test_scratch_image_size_follows_the_data(tmp_path):
    assert parse_args(["--backbone", "scratch"]).image_size == 28  # Fashion-MNIST's own size
    small = _folder(tmp_path / "small", {"a": 2, "b": 2}, side=40, same_image=False)
    assert parse_args(["--backbone", "scratch", "--data", str(small)]).image_size == 40
    large = _folder(tmp_path / "large", {"a": 2, "b": 2}, side=300, same_image=False)
    assert parse_args(["--backbone", "scratch", "--data", str(large)]).image_size == 64  # capped
    assert parse_args(["--backbone", "scratch", "--data", str(large), "--image-size", "96"]).image_size == 96
    assert parse_args(["--data", str(large)]).image_size == 160  # a backbone's own input size
