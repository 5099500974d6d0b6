"""Export a trained generator as a self-contained SavedModel with a model card.

Two signatures (docs/architecture.md is the contract):

- `serving_default(latents float32 [N, latent_dim], class_ids int32 [N])` → `images uint8 [N, H, W, C]`
- `generate_seeded(seed int64 [], count int32 [], class_id int32 [])` → `images`, `latents`, `class_ids`;
  class_id −1 cycles through the classes. The latents come from a stateless RNG keyed by the
  seed, so the same seed gives the same images on the same machine.

Bad input is checked in the graph, before the network runs, so a client gets an
InvalidArgumentError that says what is wrong (latent width, NaN/inf, class id, batch size)
instead of a shape error from deep inside a layer — and a server process never crashes.
An unconditional generator has a single class: its class ids must be 0 (or −1 when seeded).
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from contract.card import ModelCard
from contract.latents import seeded_class_ids, seeded_latents
from contract.litert import save_calibration
from training.gan_model import GANConfig, to_uint8

MAX_BATCH = 256  # images per call: bounds the memory one request can take
CALIBRATION_SIZE = 32  # seeded latents kept with the export, for the LiteRT conversion's proof
PIXEL_TOLERANCE = 1  # a generated pixel may differ by one grey level: a float rounding to the other side of .5


class GeneratorModule(tf.Module):
    """The serving graph around a Keras generator: checks in, uint8 pixels out."""

    def __init__(self, generator: keras.Model, config: GANConfig):
        super().__init__()
        self.generator = generator
        self.latent_dim = config.latent_dim
        self.num_classes = config.num_classes

    def _generate(self, latents: tf.Tensor, class_ids: tf.Tensor) -> tf.Tensor:
        rows = tf.shape(latents)[0]
        checks = [
            tf.debugging.assert_equal(tf.shape(latents)[1], self.latent_dim, message=(
                f"latents must have {self.latent_dim} columns (the latent dimension)")),
            tf.debugging.assert_equal(rows, tf.shape(class_ids)[0], message=(
                "latents and class_ids must have the same number of rows")),
            tf.debugging.assert_greater(rows, 0, message="at least one latent row is needed"),
            tf.debugging.assert_less_equal(rows, MAX_BATCH, message=f"at most {MAX_BATCH} images per call"),
            tf.debugging.assert_non_negative(class_ids, message="class ids must be >= 0"),
            tf.debugging.assert_less(class_ids, self.num_classes, message=(
                f"class ids must be < {self.num_classes} (the number of classes)")),
        ]
        with tf.control_dependencies(checks):
            latents = tf.debugging.assert_all_finite(latents, "latents must be finite (no NaN or inf)")
            latents = tf.ensure_shape(latents, [None, self.latent_dim])
            class_ids = tf.identity(class_ids)
        return to_uint8(self.generator([latents, class_ids], training=False))

    def generate(self, latents, class_ids):
        return {"images": self._generate(latents, class_ids)}

    def serving_default(self) -> tf.types.experimental.ConcreteFunction:
        """`generate` with the latent width declared, so that a client reading the model's
        metadata (TF Serving's GetModelMetadata, the V2 protocol, tritonclient) learns it."""
        return tf.function(self.generate, input_signature=[
            tf.TensorSpec([None, self.latent_dim], tf.float32, name="latents"),
            tf.TensorSpec([None], tf.int32, name="class_ids"),
        ]).get_concrete_function()

    @tf.function(input_signature=[
        tf.TensorSpec([], tf.int64, name="seed"),
        tf.TensorSpec([], tf.int32, name="count"),
        tf.TensorSpec([], tf.int32, name="class_id"),
    ])
    def generate_seeded(self, seed, count, class_id):
        checks = [
            tf.debugging.assert_positive(count, message="count must be at least 1"),
            tf.debugging.assert_less_equal(count, MAX_BATCH, message=f"count must be at most {MAX_BATCH}"),
            tf.debugging.assert_greater_equal(class_id, -1, message="class_id must be -1 (cycle) or a class id"),
            tf.debugging.assert_less(class_id, self.num_classes, message=(
                f"class_id must be < {self.num_classes} (the number of classes)")),
        ]
        with tf.control_dependencies(checks):
            count = tf.identity(count)
        latents = seeded_latents(seed, count, self.latent_dim)
        class_ids = seeded_class_ids(class_id, count, self.num_classes)
        return {"images": self._generate(latents, class_ids), "latents": latents, "class_ids": class_ids}


def export_generator(generator: keras.Model, config: GANConfig, class_names: list[str],
                     folder: str | os.PathLike, version: int, **card: object) -> ModelCard:
    """Write the SavedModel and its calibration sample into `folder` (a staging folder of
    `contract.layout.new_version_folder`, so a server watching the models never loads a
    half-written version); return the card, for the caller to complete and write once."""
    module = GeneratorModule(generator, config)
    tf.saved_model.save(module, str(folder), signatures={
        "serving_default": module.serving_default(),
        "generate_seeded": module.generate_seeded,
    })
    save_calibration(folder, {
        "latents": np.random.RandomState(0).standard_normal((CALIBRATION_SIZE, config.latent_dim)).astype(np.float32),
        "class_ids": (np.arange(CALIBRATION_SIZE) % config.num_classes).astype(np.int32),
    })
    return ModelCard.new(
        kind="generator", version=version, image_size=(config.image_size, config.image_size),
        channels=config.channels, latent_dim=config.latent_dim, conditional=config.conditional,
        classes=class_names if config.conditional else ["any"], max_batch=MAX_BATCH,
        numeric_signature="serving_default", tolerance=PIXEL_TOLERANCE,
        signatures={
            "serving_default": "latents float32 [N, latent_dim], class_ids int32 [N] -> images uint8 [N, H, W, C]",
            "generate_seeded": "seed int64 [], count int32 [], class_id int32 [] (-1 = cycle through classes) "
                               "-> images uint8 [N, H, W, C], latents float32 [N, latent_dim], class_ids int32 [N]",
        },
        **card,
    )
