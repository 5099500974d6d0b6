"""The transfer-learning trainer end to end: train → export → reload (no project code) → predict."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from training.classifier import main as classifier_main
from training.classifier_config import ClassifierConfig, parse_args
from training.cli import flag, run_cli
from training.data import load_dataset

FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(scope="module")
def transfer_model(tmp_path_factory):
    """A tiny but real run of the recipe: both phases, export and evaluation."""
    out = tmp_path_factory.mktemp("classifier")
    code = run_cli(lambda: classifier_main([
        "--data", "fashion-mnist", "--per-class", "30", "--image-size", "64", "--head-steps", "300",
        "--fine-tune-epochs", "1", "--fine-tune-fraction", "0.1", "--eval-limit", "300",
        "--out", str(out), "--seed", "1",
    ]))
    assert code == 0
    return out / "1"


def test_export_has_card_and_labels(transfer_model):
    card = json.loads((transfer_model / "model_card.json").read_text())
    assert card["kind"] == "classifier"
    assert card["version"] == 1
    assert card["labels"] == FASHION_LABELS
    assert card["backbone"] == "efficientnet-lite0"
    assert card["image_size"] == [64, 64]
    assert card["per_class_counts"] == {label: 30 for label in FASHION_LABELS}
    assert card["metrics"]["test_examples"] == 300
    # 300 images of 10 classes: far above chance (10%) already, or the features are broken.
    assert card["metrics"]["test_accuracy"] > 0.5
    assert (transfer_model / "assets" / "labels.txt").read_text().split("\n")[:10] == FASHION_LABELS
    # The head's weight decay follows the data: 10 / 250 training images (30 per class less
    # the 5 of each class held out for validation: 10% would be 3, under the minimum of 5).
    assert card["training"]["head_l2"] == pytest.approx(10 / 250)
    # Balanced data: no class weights; every report leads with balanced accuracy.
    assert card["training"]["class_weights"] is None
    assert card["metrics"]["collapsed"] is False
    assert card["metrics"]["test_balanced_accuracy"] > 0.5
    assert set(card["metrics"]["test_recall"]) == set(FASHION_LABELS)


def test_reload_without_project_code(transfer_model, tmp_path):
    """A client with TensorFlow only: bytes of any format and mode, and raw pixels."""
    test = load_dataset("fashion-mnist", split="test")
    grey = test.images[:4, :, :, 0]
    files = []
    for index, (fmt, mode) in enumerate([("PNG", "L"), ("JPEG", "RGB"), ("BMP", "RGBA"), ("WEBP", "RGB")]):
        buffer = io.BytesIO()
        image = Image.fromarray(grey[index]).convert(mode).resize((100, 100))
        image.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        path = tmp_path / f"item{index}.{fmt.lower()}"
        path.write_bytes(buffer.getvalue())
        files.append(str(path))
    np.save(tmp_path / "pixels.npy", test.images[:4])
    script = textwrap.dedent(f"""
        import json, sys, numpy as np, tensorflow as tf
        model = tf.saved_model.load({str(transfer_model)!r})
        by_bytes = model.signatures["serving_default"](
            image_bytes=tf.constant([open(f, "rb").read() for f in {files!r}]))
        by_pixels = model.signatures["classify_pixels"](images=tf.constant(np.load({str(tmp_path / 'pixels.npy')!r})))
        print(json.dumps({{
            "bytes_scores": by_bytes["scores"].numpy().tolist(),
            "bytes_classes": [[c.decode() for c in row] for row in by_bytes["classes"].numpy()],
            "pixels_scores": by_pixels["scores"].numpy().tolist(),
            "dtypes": [by_bytes["scores"].dtype.name, by_bytes["classes"].dtype.name],
        }}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=tmp_path)  # cwd outside the repo: `training` is not importable there
    out = json.loads(result.stdout.strip().splitlines()[-1])
    bytes_scores = np.array(out["bytes_scores"])
    pixels_scores = np.array(out["pixels_scores"])
    assert bytes_scores.shape == (4, 10) and pixels_scores.shape == (4, 10)
    assert out["dtypes"] == ["float32", "string"]
    assert out["bytes_classes"][0] == FASHION_LABELS
    np.testing.assert_allclose(bytes_scores.sum(axis=1), 1.0, atol=1e-4)
    # The lossless PNG of an item and its raw pixels are the same picture: same prediction.
    assert np.argmax(bytes_scores[0]) == np.argmax(pixels_scores[0])


@pytest.mark.parametrize("pooling, reduce", [("max", np.max), ("average", np.mean)])
def test_multi_level_features_pool_each_depth(pooling, reduce):
    """Each chosen depth's feature map is reduced over space, then all are concatenated."""
    import keras

    from training.backbones import BACKBONES, build_backbone
    from training.classifier_model import multi_level_features

    backbone = build_backbone("efficientnet-lite0", image_size=32, include_top=False)
    names = BACKBONES["efficientnet-lite0"].feature_layers
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    maps = keras.Model(backbone.input, [backbone.get_layer(name).output for name in names])(images)
    expected = np.concatenate([reduce(np.asarray(m), axis=(1, 2)) for m in maps], axis=1)
    features = multi_level_features(backbone, names, pooling)(images)
    np.testing.assert_allclose(np.asarray(features), expected, rtol=1e-5, atol=1e-5)


def test_scratch_baseline_trains_and_exports(tmp_path):
    code = run_cli(lambda: classifier_main([
        "--backbone", "scratch", "--per-class", "20", "--epochs", "2", "--eval-limit", "100",
        "--out", str(tmp_path),
    ]))
    assert code == 0
    card = json.loads((tmp_path / "1" / "model_card.json").read_text())
    assert card["backbone"] == "scratch" and card["image_size"] == [28, 28]


@pytest.mark.parametrize("argv, message", [
    (["--backbone", "resnet9000", "--per-class", "5"], "unknown backbone"),
    (["--per-class", "1"], "--per-class must be at least 2"),
    (["--data", "no/such/folder"], "no/such/folder"),
    (["--image-size", "8"], "--image-size"),
    (["--validation-fraction", "0", "--fine-tune-epochs", "1"], "nothing to stop early on"),
    (["--head-steps", "0"], "--head-steps must be at least 1"),
])
def test_user_mistakes_get_a_clear_error(argv, message, tmp_path, capsys):
    code = run_cli(lambda: classifier_main([*argv, "--out", str(tmp_path)]))
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.lower() in err.lower()
    assert "Traceback" not in err


def test_help_states_every_flag_and_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at hyphens: "--per-class" must stay whole
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, value in asdict(ClassifierConfig()).items():
        assert flag(name) in text and (value is None or f"(default: {value})" in text), name
    assert "--backbone scratch sets --epochs=30" in text and "--quick sets --per-class=100" in text
    assert "for scratch the data's own size" in text


@pytest.mark.parametrize("argv, expected", [
    ([], dict(image_size=160, per_class=None, epochs=200, validation_fraction=0.0)),
    (["--quick"], dict(per_class=100, image_size=96, eval_limit=2000, validation_fraction=0.0)),
    (["--backbone", "scratch"], dict(image_size=28, epochs=30, augment=False, validation_fraction=0.1)),
    (["--backbone", "scratch", "--quick"], dict(image_size=96, epochs=30, per_class=100)),  # --quick wins
    (["--quick", "--image-size", "40", "--no-evaluate"], dict(image_size=40, per_class=100, evaluate=False)),
])
def test_profiles_fill_only_the_flags_not_given(argv, expected):
    config = asdict(parse_args(argv))
    assert {key: config[key] for key in expected} == expected


def test_one_class_folder_is_refused(tmp_path, capsys):
    (tmp_path / "data" / "only").mkdir(parents=True)
    for index in range(4):
        Image.new("RGB", (32, 32), (index * 40, 0, 0)).save(tmp_path / "data" / "only" / f"{index}.png")
    code = run_cli(lambda: classifier_main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "m")]))
    assert code == 2
    assert "class" in capsys.readouterr().err


def test_quick_profile_without_fine_tuning(tmp_path):
    """Without phase 2 (the default) the stacked model must still evaluate and export."""
    code = run_cli(lambda: classifier_main([
        "--quick", "--per-class", "10", "--image-size", "32", "--eval-limit", "50", "--out", str(tmp_path),
    ]))
    assert code == 0
    card = json.loads((tmp_path / "1" / "model_card.json").read_text())
    assert card["training"]["config"]["fine_tune_epochs"] == 0
    assert card["metrics"]["test_examples"] == 50
    # Nothing stops early, so no image is held out: all 100 train the head.
    assert card["training"]["config"]["validation_fraction"] == 0
    assert "validation_accuracy" not in card["metrics"]
    assert card["training"]["head_l2"] == pytest.approx(10 / 100)


def test_evaluate_cli_writes_report(transfer_model, tmp_path, capsys):
    from training.evaluate import main as evaluate_main

    # The parent folder is accepted too: its highest version is evaluated.
    code = run_cli(lambda: evaluate_main([str(transfer_model.parent), "--limit", "200",
                                          "--report-dir", str(tmp_path)]))
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    # What the export predicts for those 200 images, worked out here from its own signature.
    import tensorflow as tf

    card = json.loads((transfer_model / "model_card.json").read_text())
    test = load_dataset("fashion-mnist", split="test", image_size=card["image_size"][0])
    truth = test.labels[:200]
    classify = tf.saved_model.load(str(transfer_model)).signatures["classify_pixels"]
    predicted = classify(images=tf.constant(test.images[:200]))["scores"].numpy().argmax(axis=1)
    accuracy = float(np.mean(predicted == truth))
    expected = {label: (np.sum((predicted == i) & (truth == i)) / max(np.sum(predicted == i), 1),
                        np.sum((predicted == i) & (truth == i)) / max(np.sum(truth == i), 1))
                for i, label in enumerate(FASHION_LABELS)}
    balanced = np.mean([recall for _, recall in expected.values()])
    # stdout: balanced accuracy first, a row per class in the model's label order, then the accuracy
    assert out[0] == f"balanced accuracy: {balanced:.2%} (the mean of the per-class recalls)"
    assert out[1].split() == ["class", "precision", "recall"]
    rows = [line.rsplit(maxsplit=2) for line in out[2:12]]
    assert [label.strip() for label, _, _ in rows] == FASHION_LABELS
    for label, precision, recall in rows:
        assert (float(precision), float(recall)) == pytest.approx(expected[label.strip()], abs=5e-4), label
    assert out[12] == f"accuracy: {accuracy:.2%} on 200 images"
    # report.md: title, balanced accuracy, the accuracy, the same table, the confusion matrix beside it
    report = (tmp_path / "report.md").read_text().splitlines()
    assert report[0] == f"# {card['name']} v1 on fashion-mnist (test)"
    assert report[2] == f"Balanced accuracy **{balanced:.2%}** (the mean of the per-class recalls)."
    assert report[4] == f"Backbone `efficientnet-lite0` at 64 px; accuracy **{accuracy:.2%}** on 200 images."
    assert report[6:8] == ["| class | precision | recall |", "|---|---|---|"]
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in report[8:18]]
    assert table == [[label.strip(), precision, recall] for label, precision, recall in rows]
    assert report[18:] == ["", "![confusion matrix](confusion_matrix.png)"]
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_cli_without_a_model(tmp_path, capsys):
    from training.evaluate import main as evaluate_main

    assert run_cli(lambda: evaluate_main([str(tmp_path)])) == 2
    assert "no exported model" in capsys.readouterr().err
