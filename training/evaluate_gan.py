"""How good is an exported generator? Domain FID, its real-vs-real floor, class consistency.

    python -m training.evaluate_gan models/generator --figures docs

**Domain FID** is the Fréchet distance between Gaussians fitted to two sets of image
features. The usual FID takes the features from ImageNet's Inception-v3; we take them from
a small CNN trained here on the real training images (the *evaluator*, cached under
`.cache/gan_evaluator/`), because Inception is not available offline and knows nothing of
28-pixel clothes. The numbers are therefore **not comparable with published (Inception)
FIDs** — only with each other and with the **floor**: the same distance between a sample of
real training images and the real test set, with the same sample size and class mix. A
generator as good as the data itself would score about the floor.

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
import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from training.cli import UserError, run_cli  # first: it quiets TensorFlow's start-up logs

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from tqdm import tqdm

from training.data import Dataset
from training.evaluate import resolve_model_dir
from contract.card import ModelCard
from contract.latents import check_psi, truncated_latents

EVALUATOR_CACHE = Path(".cache") / "gan_evaluator"
EVALUATOR_REVISION = 1  # bump when build_evaluator changes, so stale caches are not reused
EVALUATOR_EPOCHS = 5
FEATURE_DIM = 128
BATCH_SIZE = 256  # also the largest batch a generator signature accepts
PSI_GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)  # the truncations measured, largest first
# The class consistency a default ψ must reach (issue #17's bar). choose_psi takes the largest
# ψ that reaches it: the least variety given up for it.
CONSISTENCY_TARGET = 0.97

# A generator maps (latents float32 [N, D], class_ids int32 [N]) to images uint8 [N, H, W, C].
GenerateFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --- Fréchet distance ------------------------------------------------------------------


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a [N, D] feature matrix, in float64."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mean_a, cov_a, mean_b, cov_b) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½), the Fréchet distance of two Gaussians.

    Tr((Σa Σb)^½) is computed as Σ √λ over the eigenvalues λ of Σa^½ Σb Σa^½, a symmetric
    matrix with the same eigenvalues: no general matrix square root (and no scipy) needed.
    """
    root_a = _symmetric_sqrt(cov_a)
    eigenvalues = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    cross_trace = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    difference = np.asarray(mean_a) - np.asarray(mean_b)
    return float(difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2 * cross_trace)


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


# --- the evaluator CNN -----------------------------------------------------------------


def build_evaluator(image_size: int, channels: int, num_classes: int):
    """A small CNN classifier; its `features` layer is the space the FID is measured in.

    Input: float32 pixels in 0–255 `[N, S, S, C]`. Convolution blocks halve the side down
    to 8 px or less, then a 128-unit dense layer gives the features.
    """
    images = keras.Input((image_size, image_size, channels), name="images")
    x = layers.Rescaling(1 / 255, name="scale")(images)
    side, width, block = image_size, 32, 0
    while side > 8:
        block += 1
        x = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"conv{block}")(x)
        x = layers.MaxPooling2D(name=f"pool{block}")(x)
        side, width = side // 2, width * 2
    x = layers.Flatten(name="flatten")(x)
    features = layers.Dense(FEATURE_DIM, activation="relu", name="features")(x)
    x = layers.Dropout(0.3, name="dropout")(features)
    scores = layers.Dense(num_classes, activation="softmax", name="scores")(x)
    return keras.Model(images, scores, name="evaluator")


class Evaluator:
    """The trained evaluator: class scores and FID features for uint8 images."""

    def __init__(self, model: keras.Model, class_names: list[str], test_accuracy: float):
        self.model = model  # keras.Model: float32 pixels 0–255 → class scores
        self.class_names = class_names
        self.test_accuracy = test_accuracy
        both = keras.Model(model.inputs, [model.output, model.get_layer("features").output])
        self._scores_and_features = tf.function(lambda batch: both(batch, training=False), reduce_retracing=True)

    def scores_and_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, features = [], []
        for start in range(0, len(images), BATCH_SIZE):
            batch = images[start:start + BATCH_SIZE].astype(np.float32)
            batch_scores, batch_features = self._scores_and_features(batch)
            scores.append(batch_scores.numpy())
            features.append(batch_features.numpy())
        return np.concatenate(scores), np.concatenate(features)


def train_evaluator(train, test, epochs: int = EVALUATOR_EPOCHS, seed: int = 0) -> Evaluator:
    """Train the evaluator on `train` (a training.data.Dataset) and measure it on `test`."""
    from training.data import make_pipeline

    keras.utils.set_random_seed(seed)
    _, size, _, channels = train.images.shape
    model = build_evaluator(size, channels, train.num_classes)
    model.compile(keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(make_pipeline(train, 128, shuffle=True, seed=seed), epochs=epochs, verbose=2)
    accuracy = model.evaluate(make_pipeline(test, BATCH_SIZE), verbose=0, return_dict=True)["accuracy"]
    return Evaluator(model, list(train.class_names), float(accuracy))


def load_or_train_evaluator(source: str, train, test, cache_root: Path = EVALUATOR_CACHE) -> Evaluator:
    """The cached evaluator for this data source and image shape, trained on first use."""
    _, size, _, channels = train.images.shape
    folder = cache_root / f"{_source_key(source)}-{size}px-{channels}ch-r{EVALUATOR_REVISION}"
    model_path, info_path = folder / "evaluator.keras", folder / "evaluator.json"
    if model_path.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        if info["class_names"] == list(train.class_names):
            return Evaluator(keras.models.load_model(model_path), info["class_names"], info["test_accuracy"])
    print(f"[evaluate_gan] training the evaluator CNN for {source} ({EVALUATOR_EPOCHS} epochs; "
          f"cached in {folder} for next time)", flush=True)
    evaluator = train_evaluator(train, test)
    folder.mkdir(parents=True, exist_ok=True)
    evaluator.model.save(model_path)
    info_path.write_text(json.dumps({"source": source, "class_names": evaluator.class_names,
                                     "test_accuracy": evaluator.test_accuracy}, indent=2) + "\n")
    return evaluator


def _source_key(source: str) -> str:
    """A folder-name-safe key: built-in names as they are, folders by name and path hash."""
    path = Path(source)
    if not path.is_dir():
        return source
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    return f"{path.resolve().name}-{digest}"


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
        generate(latents[start:start + BATCH_SIZE], class_ids[start:start + BATCH_SIZE])
        for start in tqdm(range(0, len(latents), BATCH_SIZE), desc=description, unit="batch", leave=False)
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
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate_gan",
        description="Measure an exported generator: domain FID against the real test set, the real-vs-real "
                    "floor, class consistency; optionally write sample and interpolation grids.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="a version folder (models/generator/3) or its parent (latest version)")
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
