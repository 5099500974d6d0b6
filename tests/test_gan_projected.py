"""The projected discriminator: its shapes, DiffAugment, and a few training steps on a small
RGB image folder through the CLI (frozen weights stay frozen, finite losses, the export serves).

Quality is the benchmark's business (benchmarks/gan_results.py, docs/gan.md), not a test's.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.test_gan import _band_images, _train
from training.diffaugment import diff_augment
from training.gan_config import TrainConfig
from training.gan_discriminators import projected_settings
from training.gan_projected import (
    ProjectedConfig,
    RandomProjection,
    build_projected_discriminator,
)


@pytest.mark.parametrize("size, channels, backbone_size, depths",
                         [(28, 1, 32, 4), (32, 3, 32, 4), (64, 3, 64, 4), (28, 1, 32, 2), (64, 3, 64, 1)])
def test_the_discriminator_gives_one_logit_per_head_position(size, channels, backbone_size, depths):
    model = build_projected_discriminator(size, channels, 4, ProjectedConfig(input_size=backbone_size, depths=depths))
    images = tf.random.uniform([3, size, size, channels], -1, 1)
    logits = model([images, tf.constant([0, 1, 3])])
    # One head per depth read, shallowest first, each down to 4x4 or less: at a 32-px
    # backbone input the four maps are 8, 4, 2, 1.
    sides = (backbone_size // 4, backbone_size // 8, backbone_size // 16, backbone_size // 32)[:depths]
    assert logits.shape == (3, sum(min(side, 4) ** 2 for side in sides))
    # The backbone itself stops at the deepest depth read: the deep stages are most of its cost.
    assert len(model.get_layer("frozen_features").outputs) == depths
    assert np.isfinite(logits.numpy()).all()


def test_only_the_heads_train():
    model = build_projected_discriminator(28, 1, 10)
    trainable = {variable.path.split("/")[0] for variable in model.trainable_variables}
    assert trainable and all(name.startswith("head") for name in trainable), trainable


def test_the_class_changes_the_score():
    """The heads are told the class: the same images asked as another class score differently."""
    model = build_projected_discriminator(28, 1, 10)
    images = tf.random.uniform([2, 28, 28, 1], -1, 1)
    as_zero, as_five = model([images, tf.constant([0, 0])]), model([images, tf.constant([5, 5])])
    assert not np.allclose(as_zero.numpy(), as_five.numpy())


def test_diff_augment_keeps_shapes_and_passes_gradients():
    images = tf.Variable(tf.random.uniform([4, 28, 28, 1], -1, 1))
    rng = tf.random.Generator.from_seed(0)
    with tf.GradientTape() as tape:
        augmented = diff_augment(images, rng)
        total = tf.reduce_sum(augmented)
    assert augmented.shape == images.shape
    assert not np.allclose(augmented.numpy(), images.numpy())
    gradient = tape.gradient(total, images)
    assert gradient is not None and float(tf.reduce_sum(tf.abs(gradient))) > 0


# --- a few steps on a small RGB folder, through the CLI -------------------------------------


@pytest.fixture(scope="module")
def projected_run(tmp_path_factory):
    """Two classes of 24 RGB 32-px images, one epoch of batch 16 against the projected discriminator."""
    root = tmp_path_factory.mktemp("projected")
    rng = np.random.default_rng(0)
    for name, top in (("bottom", False), ("top", True)):
        (root / "data" / name).mkdir(parents=True)
        for index, image in enumerate(_band_images(24, top, rng)):
            Image.fromarray(image).save(root / "data" / name / f"{index:03d}.png")
    argv = ["--data", str(root / "data"), "--discriminator", "projected", "--epochs", "1", "--batch-size", "16",
            "--filters", "8", "--latent-dim", "8", "--no-evaluate",
            "--run-dir", str(root / "run"), "--out", str(root / "models")]
    assert _train(argv) == 0
    return root


@pytest.mark.slow
def test_frozen_weights_stay_frozen_and_the_heads_learn(projected_run):
    """Restore the trained discriminator into a fresh one: the backbone and the random mixing
    are what they were built as, the heads are not (so the restore did load trained weights)."""
    config = projected_config(projected_run)
    trained = build_projected_discriminator(32, 3, 2, config)
    fresh = build_projected_discriminator(32, 3, 2, config)
    tf.train.Checkpoint(discriminator=trained).restore(
        tf.train.latest_checkpoint(projected_run / "run" / "checkpoints")).expect_partial()

    def weights(model, frozen: bool):
        return [(weight.path, weight.numpy()) for layer in model.layers for weight in layer.weights
                if isinstance(layer, (keras.Model, RandomProjection)) == frozen]

    for (path, after), (_, before) in zip(weights(trained, True), weights(fresh, True), strict=True):
        np.testing.assert_array_equal(after, before, err_msg=f"{path} changed in training")
    heads = zip(weights(trained, False), weights(fresh, False), strict=True)
    assert any(not np.array_equal(after, before) for (_, after), (_, before) in heads)


@pytest.mark.slow
def test_losses_are_finite_and_the_export_serves(projected_run):
    history = json.loads((projected_run / "run" / "history.json").read_text())
    assert history["epochs"][0]["steps"] == 3  # 48 images, batches of 16
    assert np.isfinite(np.array(history["steps"])).all()
    model_dir = projected_run / "models" / "1"
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["training"]["config"]["discriminator"] == "projected"
    seeded = tf.saved_model.load(str(model_dir)).signatures["generate_seeded"]
    out = seeded(seed=tf.constant(3, tf.int64), count=tf.constant(4), class_id=tf.constant(-1))
    assert out["images"].dtype == tf.uint8 and out["images"].shape == (4, 32, 32, 3)
    assert out["class_ids"].numpy().tolist() == [0, 1, 0, 1]


def projected_config(root) -> ProjectedConfig:
    """The projected discriminator's settings of the run in `root`."""
    return projected_settings(TrainConfig(**json.loads((root / "run" / "config.json").read_text())))


@pytest.mark.parametrize("argv, message", [
    (["--discriminator", "projected", "--backbone", "keras:ResNet50"], "not 'keras:ResNet50'"),
    (["--discriminator", "projected", "--backbone-size", "16"], "32 to 512 px (--backbone-size), got 16"),
    (["--discriminator", "projected", "--backbone-size", "100000"], "32 to 512 px (--backbone-size), got 100000"),
    (["--projected-depths", "2"], "--projected-depths only apply with --discriminator projected"),
    (["--backbone", "mobilenetv2", "--backbone-size", "64"],
     "--backbone, --backbone-size only apply with --discriminator projected"),
    (["--discriminator", "projected", "--projected-depths", "5"], "choose 1 to 4, got 5"),
    (["--fid-every", "-1"], "--fid-every must be 0"),
])
def test_projected_mistakes_get_a_clear_error(argv, message, tmp_path, capsys):
    assert _train([*argv, "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_run_saved_before_the_projected_flags_resumes_with_their_defaults(tmp_path):
    from dataclasses import asdict

    from training.gan_config import resumed_config

    saved = {key: value for key, value in asdict(TrainConfig()).items()
             if key not in ("discriminator", "backbone", "backbone_size", "projected_depths", "fid_every")}
    (tmp_path / "config.json").write_text(json.dumps({**saved, "epochs": 2}))
    (tmp_path / "history.json").write_text(json.dumps({"epochs": [{}]}))
    resumed = resumed_config(tmp_path, {"epochs": 3, "projected_depths": 4}, quick=False)
    assert (resumed.epochs, resumed.discriminator, resumed.projected_depths) == (3, "dcgan", 4)
