"""Temperature scaling: the fit, the export that bakes it into every signature, the trainer
that writes it and its calibration errors into the card."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from training.calibration import (
    expected_calibration_error,
    fit_temperature,
    out_of_fold_scores,
    with_temperature,
)
from training.classifier import main as classifier_main
from training.cli import run_cli


def overconfident(seed: int = 0, images: int = 4000, classes: int = 5, sharpness: float = 3.0):
    """Labels drawn from softmax(logits), scores from softmax(logits · sharpness): a model
    `sharpness` times too sure of itself, whose right temperature is `sharpness`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (images, classes))
    truth_p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in truth_p])
    return with_temperature(truth_p, 1 / sharpness), labels


def test_temperature_undoes_overconfidence():
    scores, labels = overconfident()
    temperature = fit_temperature(scores, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(scores, labels)
    after = expected_calibration_error(with_temperature(scores, temperature), labels)
    assert after < before / 3
    # The arg-max, so the accuracy, does not move.
    assert (with_temperature(scores, temperature).argmax(axis=1) == scores.argmax(axis=1)).all()


def test_an_underconfident_model_is_sharpened():
    scores, labels = overconfident(sharpness=0.5)
    assert fit_temperature(scores, labels) == pytest.approx(0.5, rel=0.1)


def test_expected_calibration_error_by_hand():
    # Two bins used: 0.9 confident and right 1 of 2 (gap 0.4), 0.6 confident and right (gap 0.4).
    scores = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    labels = np.array([0, 1, 1])
    assert expected_calibration_error(scores, labels) == pytest.approx((2 * 0.4 + 0.4) / 3)


def test_out_of_fold_scores_never_score_a_training_image():
    labels = np.repeat(np.arange(3), 10)
    seen: list[set[int]] = []

    def fit_and_score(train, held):
        assert not set(train) & set(held)
        seen.append(set(held))
        return np.tile(np.eye(3)[len(seen) - 1], (len(held), 1))  # fold k answers class k

    scores = out_of_fold_scores(fit_and_score, labels, folds=3, seed=0)
    assert set().union(*seen) == set(range(30)) and sum(map(len, seen)) == 30
    for fold, held in enumerate(seen):
        assert (scores[sorted(held)].argmax(axis=1) == fold).all()
        assert len(np.unique(labels[sorted(held)])) == 3  # stratified: every fold holds every class


def tiny_keras_classifier(image_size: int, classes: int = 3):
    """A fixed, sharp softmax on the mean colour: different images, clearly different scores."""
    import keras

    images = keras.Input((image_size, image_size, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(images))
    dense = keras.layers.Dense(classes, activation="softmax")
    model = keras.Model(images, dense(x))
    dense.set_weights([np.array([[8.0, -4.0, 0.0], [-4.0, 8.0, 0.0], [0.0, 0.0, 6.0]]), np.zeros(classes)])
    return model


@pytest.fixture(scope="module")
def calibrated_export(tmp_path_factory):
    """A classifier exported with T = 2.5, and its Keras model (what T is applied to)."""
    from contract.layout import new_version_folder
    from training.export import export_classifier

    image_size, temperature = 16, 2.5
    model = tiny_keras_classifier(image_size)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, image_size, image_size, 3), dtype=np.uint8)
    out = tmp_path_factory.mktemp("calibrated")
    with new_version_folder(out, None) as (folder, version):
        card = export_classifier(model, ["red", "green", "blue"], image_size, folder, version, pixels[:8],
                                 temperature, name="tiny")
        card.write(folder)
    return out / "1", model, pixels, temperature


def test_every_signature_serves_calibrated_scores(calibrated_export):
    import tensorflow as tf

    folder, model, pixels, temperature = calibrated_export
    expected = with_temperature(np.asarray(model(pixels.astype(np.float32))), temperature)
    assert not np.allclose(expected, np.asarray(model(pixels.astype(np.float32))), atol=1e-3)  # T changes them
    signatures = tf.saved_model.load(str(folder)).signatures
    png = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        png.append(buffer.getvalue())
    served = {
        "classify_resized": signatures["classify_resized"](images=tf.constant(pixels))["scores"],
        "classify_pixels": signatures["classify_pixels"](images=tf.constant(pixels))["scores"],
        "serving_default": signatures["serving_default"](image_bytes=tf.constant(png))["scores"],
    }
    for name, scores in served.items():
        np.testing.assert_allclose(np.asarray(scores), expected, atol=2e-5, err_msg=name)
    assert json.loads((folder / "model_card.json").read_text())["temperature"] == temperature


def test_litert_conversion_of_a_calibrated_export_verifies(calibrated_export):
    from contract.card import ModelCard
    from contract.litert import convert_and_verify

    folder = calibrated_export[0]
    conversion = convert_and_verify(folder, ModelCard.read(folder), interpreters=1)
    assert conversion.verified, conversion.report


def test_old_cards_without_a_temperature_still_load(calibrated_export):
    from contract.card import CardError, ModelCard

    data = json.loads((calibrated_export[0] / "model_card.json").read_text())
    for field in ("temperature", "ece_uncalibrated", "ece_calibrated"):
        data.pop(field, None)
    assert ModelCard.parse(data, "old").temperature is None
    with pytest.raises(CardError, match="temperature"):
        ModelCard.parse({**data, "temperature": 0.0}, "bad")


@pytest.mark.parametrize("extra, held_out", [([], "3 heads"), (["--backbone", "scratch", "--epochs", "2"], None)])
def test_trainer_writes_the_temperature_and_calibration_errors(extra, held_out, tmp_path, capsys):
    """The head on features calibrates on out-of-fold scores; the scratch CNN on its validation split."""
    code = run_cli(lambda: classifier_main([
        "--quick", "--per-class", "10", "--image-size", "32", "--head-steps", "200", "--eval-limit", "200",
        "--out", str(tmp_path), *extra,
    ]))
    assert code == 0
    log = capsys.readouterr().out
    card = json.loads((tmp_path / "1" / "model_card.json").read_text())
    assert card["temperature"] != 1.0 and 0.01 <= card["temperature"] <= 100
    assert 0 <= card["ece_calibrated"] <= 1 and 0 <= card["ece_uncalibrated"] <= 1
    assert f"temperature {card['temperature']:g} fitted on" in log
    if held_out:  # nothing held out of the head: all 100 images train it, each scored out of fold by --quick's 3 heads
        assert held_out in log and "fitted on 100 held-out images" in log
    else:
        assert "heads score" not in log
