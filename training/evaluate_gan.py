"""How good is an exported generator? Domain FID, its real-vs-real floor, class consistency.

    python -m training.evaluate_gan models/generator --figures docs

**Domain FID** (`training.gan_fid`) is the Fréchet distance between the features of two
image sets, in the feature space of a small CNN trained here (the *evaluator*): not
comparable with published (Inception) FIDs, only with each other and with the **floor**,
the same distance between a sample of real training images and the real test set, with
the same sample size and class mix. A generator as good as the data itself would score
about the floor.

**Class consistency** is the share of conditional samples that the evaluator classifies as
the class they were asked for.

Both are measured at several truncations ψ (`contract.latents.truncated_latents`, the
latents the service draws): smaller ψ trades variety (FID) for typical images (class
consistency). `choose_psi` picks the default the trainer writes into the card.

The generator is called through its SavedModel (`tf.saved_model.load` alone), so what is
measured is the exported artefact.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

# isort: off
from training.cli import UserError, model_parser, resolve_model_dir, run_cli  # first: it quiets TensorFlow
# isort: on

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from contract.card import ModelCard
from contract.latents import check_psi, truncated_latents
from training.data import Dataset
from training.gan_export import MAX_BATCH
from training.gan_fid import Evaluator, fid, load_or_train_evaluator

PSI_GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)  # the truncations measured, largest first
# The class consistency a default ψ must reach (issue #17's bar). choose_psi takes the largest
# ψ that reaches it: the least variety given up for it.
CONSISTENCY_TARGET = 0.97

# A generator maps (latents float32 [N, D], class_ids int32 [N]) to images uint8 [N, H, W, C].
GenerateFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --- measuring a generator -------------------------------------------------------------


@dataclass
class GANEvaluation:
    psi: float  # the truncation the latents were drawn with
    fid: float  # generated samples vs the real test set
    fid_floor: float  # real training images vs the real test set
    class_consistency: float | None  # None for an unconditional generator
    per_class_consistency: dict[str, float] | None
    evaluator_accuracy: float  # the evaluator's own test accuracy: how much to trust the two above
    samples: int

    def as_dict(self) -> dict:
        values = asdict(self)
        values["fid_over_floor"] = self.fid / self.fid_floor
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in values.items()}


def saved_model_generator(model_dir: Path) -> GenerateFn:
    """Call an exported generator's serving signature, loaded with tf.saved_model.load alone."""
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    return lambda latents, class_ids: serve(latents=tf.constant(latents, tf.float32),
                                            class_ids=tf.constant(class_ids, tf.int32))["images"].numpy()


def generate_in_batches(generate: GenerateFn, latents: np.ndarray, class_ids: np.ndarray,
                        description: str = "generate") -> np.ndarray:
    return np.concatenate([
        generate(latents[start:start + MAX_BATCH], class_ids[start:start + MAX_BATCH])
        for start in tqdm(range(0, len(latents), MAX_BATCH), desc=description, unit="batch", leave=False)
    ])


def class_matched_sample(ds, like_labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices into `ds` with as many images of each class as `like_labels` has (seeded)."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(like_labels, minlength=ds.num_classes)
    return np.concatenate([rng.choice(np.flatnonzero(ds.labels == label), count, replace=False)
                           for label, count in enumerate(counts)])


@dataclass
class RealSide:
    """What every measurement against a test set shares, computed once for all ψ."""

    test: Dataset  # what the generated samples are measured against
    test_features: np.ndarray
    fid_floor: float


def real_side(evaluator: Evaluator, train, test, seed: int = 0) -> RealSide:
    """The test set's features, and the floor: a class-matched sample of training images of
    the test set's size, against the test set."""
    _, test_features = evaluator.scores_and_features(test.images)
    _, train_features = evaluator.scores_and_features(train.images[class_matched_sample(train, test.labels, seed)])
    return RealSide(test, test_features, fid(train_features, test_features))


def evaluate_generator(generate: GenerateFn, latent_dim: int, conditional: bool, evaluator: Evaluator,
                       real: RealSide, seed: int = 0, psi: float = 1.0) -> GANEvaluation:
    """Measure a generator at truncation `psi`: one sample per test image, asking for its class.

    Asking for each test image's class gives the generated set the test set's class mix
    and size. The latents are the service's (`truncated_latents`) for `seed`.
    """
    test = real.test
    latents = truncated_latents(seed, len(test), latent_dim, psi)
    requested = test.labels if conditional else np.zeros(len(test), np.int32)
    scores, generated_features = evaluator.scores_and_features(generate_in_batches(generate, latents, requested))

    consistency = per_class = None
    if conditional:
        hits = np.argmax(scores, axis=1) == test.labels
        consistency = float(hits.mean())
        per_class = {name: round(float(hits[test.labels == label].mean()), 4)
                     for label, name in enumerate(test.class_names)}
    return GANEvaluation(
        psi=psi,
        fid=fid(generated_features, real.test_features),
        fid_floor=real.fid_floor,
        class_consistency=consistency,
        per_class_consistency=per_class,
        evaluator_accuracy=evaluator.test_accuracy,
        samples=len(test),
    )


def choose_psi(evaluations: dict[float, GANEvaluation], target: float = CONSISTENCY_TARGET) -> float:
    """The default ψ: the largest whose class consistency reaches `target`, else the most
    consistent one; for an unconditional generator (no consistency), the lowest FID."""
    if next(iter(evaluations.values())).class_consistency is None:
        return min(evaluations, key=lambda psi: evaluations[psi].fid)
    reaching = [psi for psi, evaluation in evaluations.items() if evaluation.class_consistency >= target]
    if reaching:
        return max(reaching)
    return max(evaluations, key=lambda psi: (evaluations[psi].class_consistency, psi))


def card_metrics(evaluations: dict[float, GANEvaluation], psi: float) -> dict:
    """The card's `metrics`: the measurement at the default ψ, and FID and consistency at each ψ."""
    by_psi = {f"{each:g}": {key: evaluation.as_dict()[key] for key in ("fid", "class_consistency")}
              for each, evaluation in evaluations.items()}
    return {**evaluations[psi].as_dict(), "by_psi": by_psi}


def evaluate_saved_generator(model_dir: Path, data: str | None = None, seed: int = 0,
                             card: ModelCard | None = None,
                             psis: Sequence[float] = PSI_GRID) -> dict[float, GANEvaluation]:
    """Load the data the card names (or `data`), the evaluator, and measure the export at
    each ψ of `psis`, on the same seed's latents: ψ only scales them, so the rows differ by
    ψ alone. `card`: the export's, when it is not written yet (the trainer measures before
    it is)."""
    from training.data import load_dataset

    card = card or ModelCard.read(model_dir)
    data = data or card.dataset
    size = card.image_size[0]
    train = load_dataset(data, "train", image_size=size)
    test = load_dataset(data, "test", image_size=size)
    if train.images.shape[-1] != card.channels:
        raise UserError(f"{data} has {train.images.shape[-1]}-channel images but the generator "
                        f"makes {card.channels}-channel ones: evaluate it on the data it was trained on")
    if card.conditional and card.classes != train.class_names:
        raise UserError(f"the generator's classes {card.classes} are not those of {data} "
                        f"({train.class_names}): evaluate it on the data it was trained on")
    evaluator = load_or_train_evaluator(data, train, test)
    generate, real = saved_model_generator(model_dir), real_side(evaluator, train, test, seed)
    return {psi: evaluate_generator(generate, card.latent_dim, card.conditional, evaluator, real, seed, psi)
            for psi in psis}


# --- figures ---------------------------------------------------------------------------


def sample_grid(generate: GenerateFn, latent_dim: int, num_classes: int, columns: int = 10,
                seed: int = 0, psi: float = 1.0) -> np.ndarray:
    """One row per class, one column per fixed latent: images uint8 [rows, columns, H, W, C].

    Each column uses the same latent in every row, so a column shows what the latent
    (pose, thickness, brightness) means across classes.
    """
    latents = truncated_latents(seed, columns, latent_dim, psi)
    all_latents = np.tile(latents, (num_classes, 1))
    class_ids = np.repeat(np.arange(num_classes, dtype=np.int32), columns)
    images = generate_in_batches(generate, all_latents, class_ids, "sample grid")
    return images.reshape(num_classes, columns, *images.shape[1:])


def interpolation_grid(generate: GenerateFn, latent_dim: int, num_classes: int, steps: int = 10,
                       seed: int = 0, psi: float = 1.0) -> np.ndarray:
    """Per class, a spherical path between two random latents: uint8 [rows, steps, H, W, C].

    Spherical (slerp), not straight: Gaussian latents live near a sphere, and the straight
    line's midpoint falls inside it, where the generator saw few latents during training.
    """
    starts, ends = truncated_latents(seed, 2 * num_classes, latent_dim, psi).reshape(2, num_classes, latent_dim)
    fractions = np.linspace(0, 1, steps)
    latents = np.concatenate([slerp(start, end, fractions) for start, end in zip(starts, ends)]).astype(np.float32)
    class_ids = np.repeat(np.arange(num_classes, dtype=np.int32), steps)
    images = generate_in_batches(generate, latents, class_ids, "interpolation")
    return images.reshape(num_classes, steps, *images.shape[1:])


def slerp(start: np.ndarray, end: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    cosine = np.dot(start, end) / (np.linalg.norm(start) * np.linalg.norm(end))
    angle = np.arccos(np.clip(cosine, -1, 1))
    if angle < 1e-6:  # (nearly) the same direction: the straight line is the arc
        return np.outer(1 - fractions, start) + np.outer(fractions, end)
    weights_start = np.sin((1 - fractions) * angle) / np.sin(angle)
    weights_end = np.sin(fractions * angle) / np.sin(angle)
    return np.outer(weights_start, start) + np.outer(weights_end, end)


def save_grid(images: np.ndarray, path: Path, row_names: list[str] | None = None, title: str | None = None) -> None:
    """Write a [rows, columns, H, W, C] uint8 grid as one PNG, each row labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, columns, height, width, channels = images.shape
    gap = 2
    canvas = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, channels), 255, np.uint8)
    for row in range(rows):
        for column in range(columns):
            top, left = row * (height + gap), column * (width + gap)
            canvas[top:top + height, left:left + width] = images[row, column]
    scale = max(1.0, 64 / height) * 0.012  # inches per pixel: small images are drawn larger
    label_space = 1.3 if row_names else 0.1
    fig = plt.figure(figsize=(canvas.shape[1] * scale + label_space, canvas.shape[0] * scale + 0.5))
    ax = fig.add_axes([label_space / fig.get_figwidth(), 0.02, 1 - label_space / fig.get_figwidth() - 0.01,
                       1 - 0.5 / fig.get_figheight()])
    ax.imshow(canvas[..., 0] if channels == 1 else canvas, cmap="gray" if channels == 1 else None,
              vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([row * (height + gap) + height / 2 for row in range(rows)], row_names or [""] * rows)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_figures(model_dir: Path, figures_dir: Path) -> list[Path]:
    """gan_samples.png (one row per class) and gan_interpolation.png, from the export, at
    the card's default ψ: what a request without one gets."""
    card = ModelCard.read(model_dir)
    generate = saved_model_generator(model_dir)
    classes, psi = card.classes, card.truncation_psi or 1.0
    name = f"{card.name} v{card.version}, ψ {psi:g}"
    samples_path, interpolation_path = figures_dir / "gan_samples.png", figures_dir / "gan_interpolation.png"
    save_grid(sample_grid(generate, card.latent_dim, len(classes), psi=psi), samples_path, classes,
              f"{name}: one row per class, one latent per column")
    save_grid(interpolation_grid(generate, card.latent_dim, len(classes), psi=psi), interpolation_path, classes,
              f"{name}: spherical interpolation between two latents")
    return [samples_path, interpolation_path]


def psi_value(text: str) -> float:
    try:
        return check_psi(float(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"ψ {error}") from None


def main(argv: list[str] | None = None) -> None:
    parser = model_parser("python -m training.evaluate_gan", "Measure an exported generator: domain FID against "
                          "the real test set, the real-vs-real floor, class consistency; optionally write sample "
                          "and interpolation grids.", "models/generator/3")
    parser.add_argument("--data", default=None, help="the data set to compare with (default: the one in the card)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents")
    parser.add_argument("--psi", type=psi_value, nargs="+", default=list(PSI_GRID),
                        help="measure at these truncations ψ in (0, 1]")
    parser.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True,
                        help="measure FID, floor and class consistency (--no-metrics: figures only)")
    parser.add_argument("--figures", type=Path, default=None,
                        help="also write gan_samples.png and gan_interpolation.png into this folder")
    args = parser.parse_args(argv)
    model_dir = resolve_model_dir(args.model)
    if args.metrics:
        evaluations = evaluate_saved_generator(model_dir, args.data, args.seed, psis=args.psi)
        print(json.dumps({"model": str(model_dir), "card_psi": ModelCard.read(model_dir).truncation_psi,
                          "chosen_psi": choose_psi(evaluations),
                          "by_psi": [evaluation.as_dict() for evaluation in evaluations.values()]}, indent=2))
    if args.figures:
        for path in write_figures(model_dir, args.figures):
            print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
