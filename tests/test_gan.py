"""The DCGAN: network shapes, the exported signatures and their checks, training on a toy task.

The toy task is an image folder with two classes, a bright band in the top half or in the
bottom half of a dark 32-px RGB image: a tiny conditional GAN learns it in seconds, and
whether a sample honours its class can be read off its pixels, no classifier needed.
"""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contract.layout import new_version_folder
from tests.conftest import ROOT
from training import gan
from training.cli import run_cli
from training.evaluate_gan import PSI_GRID
from training.gan_config import TrainConfig
from training.gan_export import MAX_BATCH, export_generator
from training.gan_model import (
    GANConfig,
    LinearDecay,
    build_discriminator,
    build_generator,
    to_uint8,
    update_moving_average,
)

TINY = GANConfig(image_size=28, channels=1, num_classes=3, latent_dim=8, filters=8)
TOY_FLAGS = ["--epochs", "6", "--filters", "16", "--latent-dim", "8", "--batch-size", "32", "--learning-rate", "1e-3",
             "--lr-decay", "0.7"]  # the decay starts in epoch 2: a run interrupted after epoch 3 stops inside it
TOY_STEPS_PER_EPOCH = 20  # 2 classes x 400 images, 20% held out for test, batches of 32
TOY = GANConfig(image_size=32, channels=3, num_classes=2, latent_dim=8, filters=16)


# --- networks --------------------------------------------------------------------------


@pytest.mark.parametrize("size, upsamplings, base", [(28, 2, 7), (32, 2, 8), (64, 3, 8)])
def test_generator_and_discriminator_shapes(size, upsamplings, base):
    config = GANConfig(image_size=size, channels=3, num_classes=4, latent_dim=8, filters=8)
    assert (config.upsamplings, config.base_size) == (upsamplings, base)
    latents, class_ids = tf.random.normal([5, 8]), tf.constant([0, 1, 2, 3, 0])
    images = build_generator(config)([latents, class_ids])
    assert images.shape == (5, size, size, 3)
    assert float(tf.reduce_min(images)) >= -1 and float(tf.reduce_max(images)) <= 1
    assert build_discriminator(config)([images, class_ids]).shape == (5,)


def test_sizes_the_ladder_cannot_make_are_refused():
    with pytest.raises(ValueError, match="cannot be generated"):
        build_generator(GANConfig(image_size=30))


def test_the_moving_average_moves_towards_the_trained_weights():
    model, average = build_generator(TINY), build_generator(TINY)
    model.set_weights([weight + 1.0 for weight in model.get_weights()])  # every weight differs, BN statistics too
    assert any("moving_mean" in weight.path for weight in average.weights)

    def weights(network):
        return [weight.numpy() for weight in network.weights]

    def check(before, decay):
        for averaged, old, new in zip(weights(average), before, weights(model)):
            np.testing.assert_allclose(averaged, decay * old + (1 - decay) * new, rtol=1e-5, atol=1e-6)

    before = weights(average)
    update_moving_average(average, model, 0.999, step=0)  # warm-up: decay (1 + 0) / (10 + 0)
    check(before, 0.1)
    before = weights(average)
    update_moving_average(average, model, 0.999, step=100_000)  # long after: the decay itself
    check(before, 0.999)
    update_moving_average(average, model, 0.0, step=100_000)  # 0: the average is the model
    check(weights(model), 0.0)


def test_the_learning_rate_is_constant_then_falls_linearly_to_zero():
    schedule = LinearDecay(1e-3, total_steps=1000, decay_steps=400)
    rates = [float(schedule(step)) for step in (0, 600, 800, 999, 1000, 1200)]
    np.testing.assert_allclose(rates, [1e-3, 1e-3, 5e-4, 2.5e-6, 0.0, 0.0], rtol=1e-5, atol=1e-9)
    constant = LinearDecay(1e-3, total_steps=1000, decay_steps=0)
    assert float(constant(0)) == float(constant(999)) == np.float32(1e-3)


# --- the export ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An untrained tiny generator, exported and loaded back with tf.saved_model.load alone."""
    model_dir = export_untrained(tmp_path_factory.mktemp("generator"), TINY, ["a", "b", "c"], name="tiny")
    return model_dir, tf.saved_model.load(str(model_dir))


def export_untrained(out: Path, config: GANConfig, classes: list[str], name: str = "generator") -> Path:
    """Export an untrained generator as the trainer does: into a new version folder, card last."""
    with new_version_folder(out) as (folder, version):
        export_generator(build_generator(config), config, classes, folder, version, name=name).write(folder)
    return out / str(version)


def test_export_writes_a_versioned_model_with_its_card(exported):
    model_dir, _ = exported
    assert model_dir.name == "1" and (model_dir / "saved_model.pb").exists()
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["kind"] == "generator" and card["name"] == "tiny" and card["version"] == 1
    assert card["image_size"] == [28, 28] and card["channels"] == 1
    assert card["latent_dim"] == 8 and card["classes"] == ["a", "b", "c"] and card["conditional"] is True
    for key in ("created", "metrics", "max_batch", "signatures"):
        assert key in card


def test_serving_default_gives_uint8_images(exported):
    _, model = exported
    out = model.signatures["serving_default"](latents=tf.random.normal([4, 8]), class_ids=tf.constant([0, 1, 2, 0]))
    assert out["images"].dtype == tf.uint8 and out["images"].shape == (4, 28, 28, 1)


def test_seeded_generation_is_deterministic(exported):
    _, model = exported
    seeded = model.signatures["generate_seeded"]

    def call(seed, count=6, class_id=-1):
        return seeded(seed=tf.constant(seed, tf.int64), count=tf.constant(count), class_id=tf.constant(class_id))

    first, again, other = call(7), call(7), call(8)
    np.testing.assert_array_equal(first["images"], again["images"])
    np.testing.assert_array_equal(first["latents"], again["latents"])
    assert not np.array_equal(first["latents"], other["latents"])
    assert first["class_ids"].numpy().tolist() == [0, 1, 2, 0, 1, 2]  # -1 cycles through the classes
    assert call(7, class_id=2)["class_ids"].numpy().tolist() == [2] * 6
    # The seeded images are exactly what serving_default makes from the returned latents.
    direct = model.signatures["serving_default"](latents=first["latents"], class_ids=first["class_ids"])
    np.testing.assert_array_equal(direct["images"], first["images"])


@pytest.mark.parametrize("latents, class_ids, message", [
    (np.zeros([2, 5]), [0, 1], "latents must have 8 columns"),
    (np.full([2, 8], np.nan), [0, 1], "latents must be finite"),
    (np.full([2, 8], np.inf), [0, 1], "latents must be finite"),
    (np.zeros([2, 8]), [0, 3], "class ids must be < 3"),
    (np.zeros([2, 8]), [-1, 0], "class ids must be >= 0"),
    (np.zeros([2, 8]), [0], "same number of rows"),
    (np.zeros([0, 8]), [], "at least one latent row"),
    (np.zeros([MAX_BATCH + 1, 8]), [0] * (MAX_BATCH + 1), f"at most {MAX_BATCH} images"),
])
def test_bad_latents_or_classes_raise_a_clear_error(exported, latents, class_ids, message):
    _, model = exported
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        model.signatures["serving_default"](latents=tf.constant(latents, tf.float32),
                                            class_ids=tf.constant(class_ids, tf.int32))


@pytest.mark.parametrize("count, class_id, message", [
    (0, 0, "count must be at least 1"),
    (-3, 0, "count must be at least 1"),
    (MAX_BATCH + 1, 0, f"count must be at most {MAX_BATCH}"),
    (4, 3, "class_id must be < 3"),
    (4, -2, "class_id must be -1"),
])
def test_bad_seeded_requests_raise_a_clear_error(exported, count, class_id, message):
    _, model = exported
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        model.signatures["generate_seeded"](seed=tf.constant(1, tf.int64), count=tf.constant(count),
                                            class_id=tf.constant(class_id))


def test_unconditional_generator_takes_class_zero_only(tmp_path):
    config = GANConfig(image_size=28, channels=1, num_classes=1, latent_dim=8, filters=8)
    model_dir = export_untrained(tmp_path, config, ["ignored"])
    assert json.loads((model_dir / "model_card.json").read_text())["classes"] == ["any"]
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    assert serve(latents=tf.zeros([2, 8]), class_ids=tf.constant([0, 0]))["images"].shape == (2, 28, 28, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="class ids must be < 1"):
        serve(latents=tf.zeros([1, 8]), class_ids=tf.constant([1]))


# --- training on the toy task ----------------------------------------------------------


def _band_images(count: int, top: bool, rng) -> list[np.ndarray]:
    images = []
    for _ in range(count):
        image = rng.integers(0, 40, (32, 32, 3)).astype(np.uint8)
        row = rng.integers(2, 10) if top else rng.integers(22, 30)
        image[row - 2:row + 2, 4:28] = rng.integers(200, 256)
        images.append(image)
    return images


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bands")
    rng = np.random.default_rng(0)
    for name, top in (("bottom", False), ("top", True)):
        (root / name).mkdir()
        for index, image in enumerate(_band_images(400, top, rng)):
            Image.fromarray(image).save(root / name / f"{index:03d}.png")
    return root


def _train(argv: list[str]) -> int:
    return run_cli(lambda: gan.main(argv))


def _band_on_top(images: np.ndarray) -> np.ndarray:
    """Per image: is the top half brighter than the bottom half?"""
    return images[:, :16].mean(axis=(1, 2, 3)) > images[:, 16:].mean(axis=(1, 2, 3))


@pytest.fixture(scope="module")
def toy_run(toy_folder, tmp_path_factory, monkeypatch_module):
    """Train the toy GAN for 6 epochs, interrupted (Ctrl-C) after epoch 3, then --resume (with evaluation)."""
    from training import evaluate_gan

    work = tmp_path_factory.mktemp("toy")
    monkeypatch_module.chdir(work)  # the evaluator cache (.cache/) goes here
    common = ["--run-dir", "run", "--out", "models"]
    save_grid = evaluate_gan.save_grid

    def save_grid_then_interrupt_after_epoch_3(grid, path, *args, **kwargs):
        save_grid(grid, path, *args, **kwargs)
        if path.name == "epoch_003.png":
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate_gan, "save_grid", save_grid_then_interrupt_after_epoch_3)
        assert _train(["--data", str(toy_folder), *TOY_FLAGS, "--no-evaluate", *common]) == 130
    assert _train(["--resume", "--evaluate", *common]) == 0
    return work


@pytest.fixture(scope="module")
def straight_run(toy_run, toy_folder):
    """The same 6 epochs as toy_run, without the interruption (in toy_run/straight/)."""
    straight = ["--data", str(toy_folder), *TOY_FLAGS, "--no-evaluate", "--run-dir", "straight", "--out", "straight"]
    assert _train(straight) == 0
    return toy_run / "straight"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.slow
def test_toy_generator_respects_the_requested_class(toy_run):
    model_dir = toy_run / "models" / "1"
    seeded = tf.saved_model.load(str(model_dir)).signatures["generate_seeded"]
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["classes"] == ["bottom", "top"] and card["channels"] == 3 and card["image_size"] == [32, 32]
    for class_id, name in enumerate(card["classes"]):
        images = seeded(seed=tf.constant(0, tf.int64), count=tf.constant(32), class_id=tf.constant(class_id))
        on_top = _band_on_top(images["images"].numpy()).mean()
        assert on_top == (1.0 if name == "top" else 0.0), f"{name}: {on_top:.0%} of the samples have the band on top"
    metrics = card["metrics"]
    assert metrics["class_consistency"] >= 0.9
    assert np.isfinite(metrics["fid"]) and metrics["fid_floor"] > 0
    # The trainer measured every ψ and wrote the one its rule chose (tests/test_gan_fid.py) as the
    # card's default, with the measurement at that ψ as the card's headline numbers.
    assert sorted(map(float, metrics["by_psi"])) == sorted(PSI_GRID)
    assert card["truncation_psi"] == metrics["psi"] in PSI_GRID
    assert metrics["by_psi"][f"{metrics['psi']:g}"]["fid"] == metrics["fid"]


@pytest.mark.slow
def test_resume_continues_where_the_run_stopped(toy_run, straight_run):
    run = toy_run / "run"
    history = json.loads((run / "history.json").read_text())
    assert [epoch["epoch"] for epoch in history["epochs"]] == [1, 2, 3, 4, 5, 6]
    assert len(history["steps"]) == 6 * TOY_STEPS_PER_EPOCH
    assert sorted(path.name for path in (run / "samples").iterdir())[-1] == "epoch_006.png"
    assert (run / "training_curves.png").exists()
    # The resumed run ends where an uninterrupted one does: same optimizer step count, hence
    # the same learning rates (the decay had begun when the run stopped), and the same
    # weights (same shuffles, latents and dropout masks after the restore).
    resumed = tf.saved_model.load(str(toy_run / "models" / "1")).signatures["generate_seeded"]
    uninterrupted = tf.saved_model.load(str(straight_run / "1")).signatures["generate_seeded"]
    request = dict(seed=tf.constant(3, tf.int64), count=tf.constant(8), class_id=tf.constant(-1))
    np.testing.assert_allclose(resumed(**request)["images"].numpy().astype(int),
                               uninterrupted(**request)["images"].numpy().astype(int), atol=1)
    straight_history = json.loads((straight_run / "history.json").read_text())
    np.testing.assert_allclose(history["steps"], straight_history["steps"], atol=1e-3)


def _restore_generators(run_dir):
    """The trained generator and its moving average, as the run's last checkpoint holds them."""
    generator, average = build_generator(TOY), build_generator(TOY)
    checkpoint = tf.train.Checkpoint(generator=generator, ema_generator=average)
    checkpoint.restore(tf.train.latest_checkpoint(run_dir / "checkpoints")).expect_partial()
    return generator, average


@pytest.mark.slow
def test_the_export_is_the_moving_average_and_resume_keeps_it(toy_run, straight_run):
    generator, average = _restore_generators(toy_run / "run")
    assert not np.allclose(generator.get_weights()[0], average.get_weights()[0])
    latents = tf.random.stateless_normal([16, TOY.latent_dim], seed=[1, 2])
    class_ids = tf.constant([0, 1] * 8)
    exported = tf.saved_model.load(str(toy_run / "models" / "1")).signatures["serving_default"]
    images = exported(latents=latents, class_ids=class_ids)["images"].numpy().astype(int)
    np.testing.assert_allclose(images, to_uint8(average([latents, class_ids])).numpy().astype(int), atol=1)
    assert np.abs(images - to_uint8(generator([latents, class_ids])).numpy().astype(int)).mean() > 1
    # The average is checkpointed: the run resumed after epoch 3 ends with the average the
    # uninterrupted run ends with (restarting it from the generator would leave a trace).
    _, uninterrupted = _restore_generators(straight_run)
    for resumed_weight, straight_weight in zip(average.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(resumed_weight, straight_weight, atol=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--ema", "1.5"], "--ema must be in [0, 1)"),
    (["--lr-decay", "1.5"], "--lr-decay must be in [0, 1]"),
    (["--data", "no/such/folder"], "no/such/folder"),
    (["--data", "fashion-mnist", "--image-size", "30"], "cannot be generated"),
    (["--resume"], "nothing to resume"),
])
def test_user_mistakes_get_a_clear_error(argv, message, tmp_path, capsys):
    assert _train([*argv, "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_resume_refuses_to_change_the_recipe(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({**asdict(TrainConfig()), "run_dir": str(run)}))
    (run / "history.json").write_text(json.dumps({"epochs": [{"epoch": 1}], "steps": []}))
    assert _train(["--resume", "--run-dir", str(run), "--filters", "8", "--epochs", "3"]) == 2
    assert "--filters cannot change" in capsys.readouterr().err
    assert _train(["--resume", "--run-dir", str(run), "--epochs", "1"]) == 2
    assert "already trained 1 epochs" in capsys.readouterr().err


def test_help_states_every_default(capsys):
    with pytest.raises(SystemExit):
        gan.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, value in asdict(TrainConfig()).items():
        assert f"(default: {value})" in text or (value is None and "default: all" in text), name


def test_evaluating_a_missing_model_is_a_clear_error(tmp_path, capsys):
    from training import evaluate_gan

    assert run_cli(lambda: evaluate_gan.main([str(tmp_path / "nothing")])) == 2
    assert "no exported model" in capsys.readouterr().err


def test_benchmark_prints_the_recorded_numbers(capsys):
    """`python -m benchmarks.gan_results` prints docs/gan_results.json as docs/gan.md's
    results table publishes it: the same columns, and row for row the same cells (the
    published one adds only the `×`, the backticks and "(default)"); a row not measured
    yet says so."""
    from benchmarks.gan_results import RESULTS, ROWS, print_table

    recorded = json.loads(RESULTS.read_text())
    assert list(recorded) == list(ROWS)
    print_table({**recorded, "later": None})
    output = capsys.readouterr().out.split("\n\n")[0]  # the results table (the ψ trade-off follows)
    header, _, *printed = [table_cells(line) for line in output.splitlines()]
    lines = (ROOT / "docs" / "gan.md").read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| row | epochs |")))
    table = [table_cells(line) for line in lines[start:] if line.startswith("|")]
    published_header, published = table[0], table[2 : 2 + len(recorded)]
    assert [cell.replace(" ", "") for cell in header] == [cell.replace(" ", "") for cell in published_header]
    assert len(lines) > start + 2 + len(recorded) and not lines[start + 2 + len(recorded)].startswith("|")
    for row in published:
        row[0] = row[0].removesuffix(" (default)")
        row[7] = row[7].removesuffix("\u00d7")  # FID / floor
        row[-1] = row[-1].strip("`")
    assert printed[:-1] == published
    assert printed[-1][0] == "later" and printed[-1][-1] == "not measured yet"


def table_cells(line: str) -> list[str]:
    """The cells of a markdown table row (the closing `|` optional)."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_the_latent_width_is_declared_in_the_signature(exported):
    """Clients that read model metadata (TF Serving, V2, tritonclient) learn the width there."""
    from contract.signatures import signatures

    model_dir, _ = exported
    assert signatures(model_dir)["serving_default"].inputs["latents"].shape == (-1, TINY.latent_dim)
