"""Export a trained classifier as a self-contained SavedModel.

The SavedModel is the exchange format: TF Serving, the diptych service and any
`tf.saved_model.load` user read it without our code. So everything a client would
otherwise have to reproduce — decoding, resizing, grey→RGB, the label names — lives in
the graph, and the model card beside it says what the model is and how good it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from contract.card import ModelCard
from contract.litert import save_calibration
from training.calibration import TINY

LABELS_FILE = "labels.txt"
CALIBRATION_SIZE = 32  # real inputs kept with the export, for the LiteRT conversion's proof
SCORE_TOLERANCE = 1e-4  # the largest difference of a score that LiteRT may show against TensorFlow


class ClassifierModule(tf.Module):
    """The serving graph: raw images in, class scores and their labels out.

    `model` maps float32 RGB 0–255 `[N, S, S, 3]` to softmax scores `[N, C]`; every signature
    returns them calibrated by `temperature` (training/calibration.py), so TF Serving, V2 and a
    LiteRT conversion serve the same calibrated scores with no code of ours.
    """

    def __init__(self, model: keras.Model, labels: list[str], image_size: int, labels_path: str,
                 temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.image_size = image_size
        self.labels_asset = tf.saved_model.Asset(labels_path)
        self.labels = tf.constant(labels)

    def _classify(self, rgb_uint8: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.image.resize(tf.cast(rgb_uint8, tf.float32), (self.image_size, self.image_size), antialias=True)
        scores = self._scores(images)
        classes = tf.tile(self.labels[tf.newaxis, :], [tf.shape(scores)[0], 1])
        return {"scores": scores, "classes": classes}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def classify_bytes(self, image_bytes):
        """Encoded JPEG/PNG/BMP/GIF/WebP of any size and mode (grey, RGBA, CMYK, palette)."""

        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            image = tf.image.resize(image, (self.image_size, self.image_size), antialias=True)
            return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

        images = tf.map_fn(
            decode,
            image_bytes,
            fn_output_signature=tf.TensorSpec([self.image_size, self.image_size, 3], tf.uint8),
        )
        return self._classify(images)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8, name="images")])
    def classify_pixels(self, images):
        """A uint8 batch with 1 (grey) or 3 (RGB) channels, any height and width."""
        tf.debugging.assert_equal(
            tf.reduce_any(tf.equal(tf.shape(images)[-1], [1, 3])),
            True,
            message="images must have 1 (grey) or 3 (RGB) channels",
        )
        rgb = tf.cond(
            tf.equal(tf.shape(images)[-1], 1),
            lambda: tf.tile(images, [1, 1, 1, 3]),
            lambda: images,
        )
        return self._classify(tf.ensure_shape(rgb, [None, None, None, 3]))

    def classify_resized(self, images):
        """The numeric core alone: RGB already at the model's size, scores only.

        No string, decoding or resizing ops, so it converts to a LiteRT flatbuffer of
        builtin ops: the service decodes and resizes outside it (service/core/images.py).
        """
        return {"scores": self._scores(tf.cast(images, tf.float32))}

    def _scores(self, images: tf.Tensor) -> tf.Tensor:
        """softmax(log(scores) / T): calibration.with_temperature in the graph."""
        scores = self.model(images, training=False)
        return tf.nn.softmax(tf.math.log(tf.maximum(scores, TINY)) / self.temperature, axis=-1)


def export_classifier(
    model: keras.Model,
    labels: list[str],
    image_size: int,
    folder: str | os.PathLike,
    version: int,
    calibration: np.ndarray,
    temperature: float = 1.0,
    **card: object,
) -> ModelCard:
    """Write the SavedModel (its scores calibrated by `temperature`) and its calibration sample into `folder` (a staging folder of
    `contract.layout.new_version_folder`); return the card, for the caller to complete with
    its measurements and write once."""
    folder = Path(folder)
    labels_path = folder / LABELS_FILE
    labels_path.write_text("\n".join(labels) + "\n")
    module = ClassifierModule(model, labels, image_size, str(labels_path), temperature)
    tf.saved_model.save(
        module,
        str(folder),
        signatures={
            "serving_default": module.classify_bytes,
            "classify_pixels": module.classify_pixels,
            "classify_resized": tf.function(module.classify_resized, input_signature=[
                tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name="images")]),
        },
    )
    labels_path.unlink()  # the SavedModel keeps its own copy under assets/
    save_calibration(folder, {"images": calibration})
    return ModelCard.new(
        kind="classifier", version=version, image_size=(image_size, image_size), channels=3, labels=labels,
        numeric_signature="classify_resized", tolerance=SCORE_TOLERANCE, temperature=temperature,
        signatures={
            "serving_default": "image_bytes: string [N] -> scores float32 [N, C], classes string [N, C]",
            "classify_pixels": "images: uint8 [N, H, W, 1|3] -> scores, classes",
            "classify_resized": f"images: uint8 [N, {image_size}, {image_size}, 3] -> scores",
        },
        **card,
    )


def calibration_images(images: np.ndarray, labels: np.ndarray, image_size: int) -> np.ndarray:
    """About CALIBRATION_SIZE training images, as many of each class, at the model's size as
    uint8 RGB: what `classify_resized` takes."""
    per_class = -(-CALIBRATION_SIZE // (labels.max() + 1))
    chosen = np.concatenate([np.flatnonzero(labels == label)[:per_class] for label in np.unique(labels)])
    pixels = tf.image.resize(tf.cast(images[chosen], tf.float32), (image_size, image_size), antialias=True)
    rgb = tf.image.grayscale_to_rgb(pixels) if pixels.shape[-1] == 1 else pixels
    return tf.cast(tf.clip_by_value(tf.round(rgb), 0, 255), tf.uint8).numpy()
