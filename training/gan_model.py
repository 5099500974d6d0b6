"""The DCGAN's two networks, apart from the training loop (as nanoGPT keeps model.py apart).

Generator: a latent vector, joined with a learned embedding of the requested class, goes
through a dense layer into a small feature map, and transposed convolutions double its
side until it is the image (tanh, pixels in [-1, 1]).

Discriminator: strided convolutions with LeakyReLU and dropout, then one "realness" score.
It is told the class by projection (Miyato & Koyama, 2018): the score gets the inner product
of a class embedding with the image features added. That asks "is this a real image *of
this class*?" directly, for the price of one embedding table (the other common way,
concatenating a label map to the input image, makes the first convolution wider).

An unconditional model is the same pair of networks with a single class, so every caller
(training, export, evaluation) treats both the same way: class id 0 means "any".
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf
from keras import layers

# The generator starts from a map of this side or a little less (28 px → 7, 32 → 8, 64 → 8).
SMALLEST_MAP = 8


@dataclass(frozen=True)
class GANConfig:
    """Everything that fixes the shapes of the two networks."""

    image_size: int = 28
    channels: int = 1
    num_classes: int = 10  # 1 for an unconditional model
    latent_dim: int = 64
    filters: int = 32  # width of the last hidden map; each smaller map has twice as many
    embedding_dim: int = 32  # the class embedding joined to the generator's latent vector
    dropout: float = 0.3  # discriminator dropout, as in the TF DCGAN tutorial (docs/gan.md: CPU cost)

    @property
    def upsamplings(self) -> int:
        """How many times the generator doubles its map: halve the image side down to ~8."""
        side, count = self.image_size, 0
        while side > SMALLEST_MAP and side % 2 == 0:
            side, count = side // 2, count + 1
        return count

    @property
    def base_size(self) -> int:
        return self.image_size // 2**self.upsamplings

    @property
    def conditional(self) -> bool:
        return self.num_classes > 1

    def check(self) -> None:
        """Reject sizes the ladder of stride-2 layers cannot produce."""
        if self.upsamplings < 2 or self.base_size > SMALLEST_MAP:
            raise ValueError(
                f"image size {self.image_size} cannot be generated: use a side that halves at least "
                f"twice down to {SMALLEST_MAP} px or less, such as 28, 32 or 64"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")


def build_generator(config: GANConfig) -> keras.Model:
    """(latents float32 [N, latent_dim], class_ids int32 [N]) → images float32 [N, S, S, C] in [-1, 1]."""
    config.check()
    latents = keras.Input((config.latent_dim,), name="latents")
    class_ids = keras.Input((), dtype="int32", name="class_ids")
    label = layers.Embedding(config.num_classes, config.embedding_dim, name="class_embedding")(class_ids)
    x = layers.Concatenate(name="latent_and_class")([latents, label])

    width = config.filters * 2 ** (config.upsamplings - 1)
    x = layers.Dense(config.base_size * config.base_size * width, use_bias=False, name="project")(x)
    x = layers.BatchNormalization(name="project_bn")(x)
    x = layers.ReLU(name="project_relu")(x)
    x = layers.Reshape((config.base_size, config.base_size, width), name="to_map")(x)
    for stage in range(1, config.upsamplings):
        width //= 2
        x = layers.Conv2DTranspose(width, 4, strides=2, padding="same", use_bias=False, name=f"up{stage}")(x)
        x = layers.BatchNormalization(name=f"up{stage}_bn")(x)
        x = layers.ReLU(name=f"up{stage}_relu")(x)
    images = layers.Conv2DTranspose(config.channels, 4, strides=2, padding="same", activation="tanh",
                                    name="to_image")(x)
    return keras.Model([latents, class_ids], images, name="generator")


def build_discriminator(config: GANConfig) -> keras.Model:
    """(images float32 [N, S, S, C] in [-1, 1], class_ids int32 [N]) → realness logits [N]."""
    config.check()
    images = keras.Input((config.image_size, config.image_size, config.channels), name="images")
    class_ids = keras.Input((), dtype="int32", name="class_ids")
    x, width = images, config.filters
    for stage in range(1, config.upsamplings + 1):
        # No bias: with one, TF's graph optimizer logs a failed conv + bias + LeakyReLU
        # fusion on every run. The realness layer keeps its bias.
        x = layers.Conv2D(width, 4, strides=2, padding="same", use_bias=False, name=f"down{stage}")(x)
        x = layers.LeakyReLU(0.2, name=f"down{stage}_lrelu")(x)
        x = layers.Dropout(config.dropout, name=f"down{stage}_dropout")(x)
        width *= 2
    features = layers.Flatten(name="features")(x)
    realness = layers.Dense(1, name="realness")(features)
    class_vector = layers.Embedding(config.num_classes, features.shape[-1], name="class_projection")(class_ids)
    class_match = layers.Dot(axes=1, name="class_match")([class_vector, features])
    logits = layers.Add(name="logits")([realness, class_match])
    return keras.Model([images, class_ids], layers.Reshape((), name="score")(logits), name="discriminator")


def update_moving_average(average: keras.Model, model: keras.Model, decay: float, step) -> None:
    """Move each weight of `average` towards the same weight of `model` (an EMA of the weights).

    average ← d · average + (1 − d) · model, for every weight: the BatchNorm moving
    statistics too, so the averaged generator normalises with statistics of the same blend of
    networks its weights come from. Averaging the weights of a GAN's generator smooths out
    the step-to-step wobble of the adversarial game and gives better samples than the last
    weights (Yazici et al. 2019, "The Unusual Effectiveness of Averaging in GAN Training").

    The decay warms up as in `tf.train.ExponentialMovingAverage`, d = min(decay, (1 + step) /
    (10 + step)): a fixed 0.999 would still hold a quarter of the random initial weights after
    1,400 steps; the warm-up keeps the average over roughly the last tenth of the steps taken
    until that is longer than the 1 / (1 − decay) steps the decay itself averages over.
    """
    step = tf.cast(step, tf.float32)
    decay = tf.minimum(tf.cast(decay, tf.float32), (1.0 + step) / (10.0 + step))
    for averaged, current in zip(average.weights, model.weights):
        averaged.assign(decay * averaged + (1.0 - decay) * current)


class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """A constant learning rate that falls linearly to 0 over the last `decay_steps` of the run.

    Smaller steps at the end let both networks settle instead of circling the equilibrium
    (docs/gan.md has the measurements). The rate is a function of the optimizer's step count
    alone, which is checkpointed: a resumed run follows the schedule the interrupted one
    would have followed. `total_steps` comes from --epochs, so a run resumed with more epochs
    follows the longer run's schedule from where it stands.
    """

    def __init__(self, initial: float, total_steps: int, decay_steps: int):
        self.initial, self.total_steps, self.decay_steps = initial, total_steps, decay_steps

    def __call__(self, step):
        remaining = (self.total_steps - tf.cast(step, tf.float32)) / max(self.decay_steps, 1)
        return self.initial * tf.clip_by_value(remaining, 0.0, 1.0)

    def get_config(self) -> dict:
        return {"initial": self.initial, "total_steps": self.total_steps, "decay_steps": self.decay_steps}


def to_tanh_range(pixels):
    """Pixels 0–255 (any float or int tensor) → float32 in [-1, 1], the generator's range."""
    return tf.cast(pixels, tf.float32) / 127.5 - 1.0


def to_uint8(images):
    """The generator's [-1, 1] output → uint8 pixels, rounded and clipped."""
    return tf.cast(tf.clip_by_value(tf.round((images + 1.0) * 127.5), 0.0, 255.0), tf.uint8)
