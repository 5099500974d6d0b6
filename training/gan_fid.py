"""Domain FID: the Fréchet distance between two image sets, in the feature space of a small CNN.

**Domain FID** is the Fréchet distance between Gaussians fitted to two sets of image
features. The usual FID takes the features from ImageNet's Inception-v3; we take them from
a small CNN trained here on the real training images (the *evaluator*, cached under
`.cache/gan_evaluator/`), because Inception is not available offline and knows nothing of
28-pixel clothes. The numbers are therefore **not comparable with published (Inception)
FIDs** — only with each other and with the **floor**: the same distance between a sample of
real training images and the real test set, with the same sample size and class mix. A
generator as good as the data itself would score about the floor (`training.evaluate_gan`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

EVALUATOR_CACHE = Path(".cache") / "gan_evaluator"
EVALUATOR_REVISION = 1  # bump when build_evaluator changes, so stale caches are not reused
EVALUATOR_EPOCHS = 5
FEATURE_DIM = 128
BATCH_SIZE = 256


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
