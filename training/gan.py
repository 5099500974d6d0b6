"""A class-conditional DCGAN, trained on a CPU in minutes.

    python -m training.gan                  # the full recipe on Fashion-MNIST
    python -m training.gan --quick          # the demo profile: a few minutes

1. Load the training images and scale them to [-1, 1], the generator's tanh range.
2. Build the generator and the discriminator (training/gan_model.py), one Adam each.
3. Train both with one compiled step per batch: the discriminator learns to tell real
   images of a class from generated ones, the generator learns to fool it (non-saturating
   loss). Both learning rates fall linearly to 0 over the second half of the run, and a
   slowly moving average (EMA) of the generator's weights is kept beside it: it averages
   out the step-to-step wobble of GAN training and is the generator we export.
4. After every epoch: a checkpoint (so `--resume` continues where a run stopped) and a
   sample grid from fixed latents, one row per class.
5. At the end: a plot of the training curves, the SavedModel export with its model card,
   and the measured quality (domain FID, its floor, class consistency) written into the card.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from training.cli import UserError, run_cli
from training.gan_config import FOLDER_IMAGE_SIZE, TrainConfig, parse_args

SAMPLE_COLUMNS = 10
RUN_FILES = ("config.json", "history.json", "training_curves.png")


def log(message: str) -> None:
    print(f"[gan] {message}", flush=True)


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Train (or continue training), export, evaluate; return the exported model's folder."""
    import keras
    import numpy as np
    import tensorflow as tf
    from tqdm import tqdm

    from training.data import load_dataset, make_pipeline
    from training.gan_discriminators import build_critic, projected_settings
    from training.gan_model import (
        GANConfig,
        LinearDecay,
        build_generator,
        to_tanh_range,
        to_uint8,
        update_moving_average,
    )

    run_dir = Path(config.run_dir)
    keras.utils.set_random_seed(config.seed)

    # -- 1. Data: uint8 images in memory; the pipeline batches and shuffles them.
    image_size = config.image_size or (None if config.data in ("fashion-mnist", "mnist") else FOLDER_IMAGE_SIZE)
    dataset = load_dataset(config.data, "train", per_class=config.per_class, seed=config.seed, image_size=image_size)
    _, size, _, channels = dataset.images.shape
    num_classes = dataset.num_classes if config.conditional else 1
    log(f"data: {config.data}, {len(dataset)} training images of {size}x{size}x{channels}, "
        f"{dataset.num_classes} classes ({'conditional' if num_classes > 1 else 'unconditional'} model)")

    # -- 2. The two networks, their optimizers, and the EMA copy of the generator.
    model_config = GANConfig(image_size=size, channels=channels, num_classes=num_classes,
                             latent_dim=config.latent_dim, filters=config.filters)
    generator = build_generator(model_config)
    augment_rng = tf.random.Generator.from_seed(config.seed + 1)
    critic = build_critic(config.discriminator, model_config, augment_rng, projected_settings(config))
    discriminator = critic.model
    ema_generator = build_generator(model_config)
    ema_generator.set_weights(generator.get_weights())
    # Both rates are constant, then fall to 0 over the last --lr-decay of the steps of --epochs.
    total_steps = config.epochs * math.ceil(len(dataset) / config.batch_size)
    schedule = LinearDecay(config.learning_rate, total_steps, round(config.lr_decay * total_steps))
    generator_optimizer = keras.optimizers.Adam(schedule, beta_1=0.5)
    discriminator_optimizer = keras.optimizers.Adam(schedule, beta_1=0.5)
    generator_optimizer.build(generator.trainable_variables)
    discriminator_optimizer.build(discriminator.trainable_variables)
    latent_rng = tf.random.Generator.from_seed(config.seed)
    log(f"generator {generator.count_params():,} parameters, discriminator {discriminator.count_params():,}")

    epochs_done = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(
        generator=generator, discriminator=discriminator, ema_generator=ema_generator,
        generator_optimizer=generator_optimizer, discriminator_optimizer=discriminator_optimizer,
        latent_rng=latent_rng, augment_rng=augment_rng, epochs_done=epochs_done,
        # Keras leaves the dropout layers' random state out of TF checkpoints; without it a
        # resumed run would draw other dropout masks than an uninterrupted one.
        dropout_states=[layer.seed_generator.state for layer in discriminator.layers
                        if hasattr(layer, "seed_generator")],
    )
    checkpoints = tf.train.CheckpointManager(checkpoint, run_dir / "checkpoints", max_to_keep=1)
    history = {"epochs": [], "steps": [], "fid_curve": []}
    if resume:
        if checkpoints.latest_checkpoint is None:
            raise UserError(f"{run_dir} has no checkpoint yet: start the run again without --resume")
        checkpoint.restore(checkpoints.latest_checkpoint).assert_existing_objects_matched()
        # The history may be one epoch ahead of the checkpoint if a run died between the two.
        history = json.loads((run_dir / "history.json").read_text())
        history["epochs"] = history["epochs"][:int(epochs_done)]
        history["steps"] = history["steps"][:sum(epoch["steps"] for epoch in history["epochs"])]
        history["fid_curve"] = [point for point in history.get("fid_curve", []) if point[0] <= len(history["steps"])]
        log(f"resumed {run_dir} after epoch {int(epochs_done)}")

    # -- 3. One training step, compiled into a graph (XLA made it slower here: docs/gan.md).
    # The signature's open batch size keeps the last, smaller batch from retracing (~30 s).
    @tf.function(input_signature=[tf.TensorSpec([None, size, size, channels], tf.float32),
                                  tf.TensorSpec([None], tf.int32)])
    def train_step(pixels, class_ids):
        real = to_tanh_range(pixels)
        latents = latent_rng.normal([tf.shape(real)[0], config.latent_dim])
        with tf.GradientTape() as generator_tape, tf.GradientTape() as discriminator_tape:
            fake = generator([latents, class_ids], training=True)
            real_scores = discriminator([critic.augment(real), class_ids], training=True)
            fake_scores = discriminator([critic.augment(fake), class_ids], training=True)
            discriminator_loss, generator_loss = critic.losses(real_scores, fake_scores)
        generator_optimizer.apply_gradients(zip(
            generator_tape.gradient(generator_loss, generator.trainable_variables), generator.trainable_variables))
        discriminator_optimizer.apply_gradients(zip(
            discriminator_tape.gradient(discriminator_loss, discriminator.trainable_variables),
            discriminator.trainable_variables))
        update_moving_average(ema_generator, generator, config.ema, generator_optimizer.iterations)
        return generator_loss, discriminator_loss

    generate = tf.function(lambda latents, class_ids: to_uint8(ema_generator([latents, class_ids], training=False)))
    class_names = dataset.class_names if num_classes > 1 else ["any"]

    # -- 4. The epochs: train, checkpoint, draw the fixed-latent grid.
    from training.evaluate_gan import sample_grid, save_grid

    curve = None
    if config.fid_every:
        from training.gan_progress import FidCurve

        curve = FidCurve(config.data, size, config.latent_dim, num_classes > 1, config.seed)
        curve.points = history["fid_curve"]
    for epoch in range(len(history["epochs"]) + 1, config.epochs + 1):
        shuffle_seed = int(np.random.SeedSequence([config.seed, epoch]).generate_state(1)[0])
        batches = make_pipeline(dataset, config.batch_size, shuffle=True, seed=shuffle_seed)
        wall_start, cpu_start = time.monotonic(), time.process_time()
        paused_wall = paused_cpu = 0.0  # the FID curve's points are not training time
        losses = []
        with tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", total=len(batches)) as progress:
            for pixels, labels in progress:
                class_ids = labels if num_classes > 1 else tf.zeros_like(labels)
                losses.append([float(loss) for loss in train_step(pixels, class_ids)])
                if len(losses) % 20 == 0:
                    generator_loss, discriminator_loss = np.mean(losses[-20:], axis=0)
                    progress.set_postfix(G=f"{generator_loss:.3f}", D=f"{discriminator_loss:.3f}")
                step = len(history["steps"]) + len(losses)
                if curve and (step % config.fid_every == 0 or step == total_steps):
                    pause_wall, pause_cpu = time.monotonic(), time.process_time()
                    trained_cpu = (sum(done["cpu_seconds"] for done in history["epochs"])
                                   + pause_cpu - cpu_start - paused_cpu)
                    fid = curve.measure(lambda z, y: generate(z, y).numpy(), step, trained_cpu)
                    progress.write(f"[gan] step {step}: FID {fid:.2f} (2,000 test images) after "
                                   f"{trained_cpu / 60:.1f} CPU-min")
                    paused_wall += time.monotonic() - pause_wall
                    paused_cpu += time.process_time() - pause_cpu
        generator_loss, discriminator_loss = np.mean(losses, axis=0)
        history["steps"] += [[round(g, 4), round(d, 4)] for g, d in losses]
        history["epochs"].append({
            "epoch": epoch, "steps": len(losses), "generator_loss": round(float(generator_loss), 4),
            "discriminator_loss": round(float(discriminator_loss), 4),
            "wall_seconds": round(time.monotonic() - wall_start - paused_wall, 1),
            "cpu_seconds": round(time.process_time() - cpu_start - paused_cpu, 1),
        })
        epochs_done.assign(epoch)
        checkpoints.save()
        save_json(run_dir / "config.json", asdict(config))
        save_json(run_dir / "history.json", history)
        grid = sample_grid(lambda z, y: generate(z, y).numpy(), config.latent_dim, num_classes, SAMPLE_COLUMNS)
        save_grid(grid, run_dir / "samples" / f"epoch_{epoch:03d}.png", class_names, f"epoch {epoch}")

    # -- 5. Curves, export, evaluation.
    plot_history(history, run_dir / "training_curves.png", f"GAN training, {config.discriminator} discriminator")
    return export_and_measure(ema_generator, model_config, class_names, config, history, len(dataset))


def export_and_measure(generator, model_config, class_names: list[str], config: TrainConfig,
                       history: dict, train_images: int) -> Path:
    """Export the generator with its card; measure the export and record that in the card."""
    from contract.layout import new_version_folder
    from training.gan_export import export_generator

    wall_seconds = sum(epoch["wall_seconds"] for epoch in history["epochs"])
    cpu_seconds = sum(epoch["cpu_seconds"] for epoch in history["epochs"])
    log(f"trained {len(history['epochs'])} epochs in {wall_seconds / 60:.1f} min "
        f"({cpu_seconds / 60:.1f} CPU-min); samples and curves in {config.run_dir}")
    training = {"config": asdict(config), "epochs": len(history["epochs"]), "wall_seconds": round(wall_seconds, 1),
                "cpu_seconds": round(cpu_seconds, 1), "train_images": train_images,
                "fid_curve": history.get("fid_curve", [])}
    with new_version_folder(config.out, config.sign_key) as (folder, version):
        card = export_generator(generator, model_config, class_names, folder, version, name=config.name,
                                dataset=config.data, training=training)
        if config.evaluate:
            from training.evaluate_gan import card_metrics, choose_psi, evaluate_saved_generator

            log("measuring the export at each truncation ψ: domain FID, its real-vs-real floor, class consistency")
            evaluations = evaluate_saved_generator(folder, seed=config.seed, card=card)
            psi = choose_psi(evaluations)
            evaluation = evaluations[psi]
            card = replace(card, truncation_psi=psi, metrics=card_metrics(evaluations, psi))
            consistency = evaluation.class_consistency
            log(f"default ψ {psi:g}: domain FID {evaluation.fid:.2f} (real-vs-real floor {evaluation.fid_floor:.2f}, "
                f"{evaluation.fid / evaluation.fid_floor:.0f}x)"
                + (f", class consistency {consistency:.1%}" if consistency is not None else ""))
        card.write(folder)
    model_dir = Path(config.out) / str(version)
    log(f"exported {model_dir} (SavedModel + model_card.json)")
    return model_dir


def clear_run(run_dir: Path) -> None:
    """Remove what a previous run wrote into `run_dir` (and nothing else the user keeps there)."""
    if (run_dir / "config.json").exists():
        log(f"starting a new run: clearing the previous one in {run_dir}")
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    shutil.rmtree(run_dir / "samples", ignore_errors=True)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def save_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1) + "\n")


def plot_history(history: dict, path: Path, title: str) -> None:
    """Both losses per step (faint) and their running means, one tick per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.array(history["steps"], dtype=float).reshape(-1, 2)
    window = max(1, len(steps) // 50)
    kernel = np.ones(window) / window
    fig, ax = plt.subplots(figsize=(8, 4))
    for column, (label, color) in enumerate([("generator", "tab:blue"), ("discriminator", "tab:orange")]):
        ax.plot(steps[:, column], color=color, alpha=0.2, linewidth=0.5)
        ax.plot(np.arange(window - 1, len(steps)), np.convolve(steps[:, column], kernel, mode="valid"),
                color=color, label=f"{label} loss")
    steps_per_epoch = len(steps) / max(1, len(history["epochs"]))
    ax.set_xticks([steps_per_epoch * epoch["epoch"] for epoch in history["epochs"]],
                  [str(epoch["epoch"]) for epoch in history["epochs"]])
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    config, resume = parse_args(argv)
    if not resume:
        clear_run(Path(config.run_dir))
    model_dir = train(config, resume)
    log(f"done: {model_dir}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
