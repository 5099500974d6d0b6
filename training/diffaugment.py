"""DiffAugment (Zhao et al. 2020): augmentations the generator's gradient passes through.

A discriminator that sees few images memorises them; augmenting what it sees keeps it
honest. The augmentations must be differentiable and applied to real *and* generated
images alike, so the generator is not taught to draw augmented images. The three policies
the Projected GAN paper trains with (Sauer et al. 2021), as the DiffAugment paper defines them:

- colour: brightness + U(−0.5, 0.5), saturation × U(0, 2), contrast × U(0.5, 1.5);
- translation: a shift of up to 1/8 of the side, the uncovered border zero;
- cutout: a zeroed square of half the side at a random place.

Images are float32 `[N, S, S, C]` in [−1, 1]; for grey images (C = 1) saturation is a
no-op, as it is for any grey pixel. `rng` is a `tf.random.Generator`, checkpointed with the
run, so a resumed run draws the augmentations the uninterrupted one would have.
"""

from __future__ import annotations

import tensorflow as tf

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def diff_augment(images: tf.Tensor, rng: tf.random.Generator) -> tf.Tensor:
    """Colour, translation, cutout: one random draw per image."""
    return cutout(translate(colour(images, rng), rng), rng)


def colour(images, rng):
    rows = tf.shape(images)[0]

    def per_image(low, high):
        return rng.uniform([rows, 1, 1, 1], low, high)

    images = images + per_image(-0.5, 0.5)
    mean = tf.reduce_mean(images, axis=3, keepdims=True)
    images = (images - mean) * per_image(0.0, 2.0) + mean
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    return (images - mean) * per_image(0.5, 1.5) + mean


def translate(images, rng):
    """Shift each image by up to ±1/8 of its side; what moves in is 0."""
    shape = tf.shape(images)
    rows, size = shape[0], shape[1]
    limit = tf.cast(tf.cast(size, tf.float32) * TRANSLATION_RATIO + 0.5, tf.int32)
    shifts = rng.uniform([rows, 2], -limit, limit + 1, dtype=tf.int32)
    padded = tf.pad(images, [[0, 0], [limit, limit], [limit, limit], [0, 0]])
    # Gather rows then columns of the padded image, offset per image.
    base = tf.range(size)[tf.newaxis, :] + limit
    y_index = tf.clip_by_value(base - shifts[:, :1], 0, size + 2 * limit - 1)
    x_index = tf.clip_by_value(base - shifts[:, 1:], 0, size + 2 * limit - 1)
    images = tf.gather(padded, y_index, axis=1, batch_dims=1)
    return tf.gather(images, x_index, axis=2, batch_dims=1)


def cutout(images, rng):
    """Zero a square of half the side, centred at a random place (it may cross the border)."""
    shape = tf.shape(images)
    rows, size = shape[0], shape[1]
    half = tf.cast(tf.cast(size, tf.float32) * CUTOUT_RATIO / 2 + 0.5, tf.int32)
    centres = rng.uniform([rows, 2], 0, size, dtype=tf.int32)
    positions = tf.range(size)[tf.newaxis, :]
    inside_y = tf.abs(positions - centres[:, :1]) < half  # [N, S]
    inside_x = tf.abs(positions - centres[:, 1:]) < half
    keep = tf.logical_not(tf.logical_and(inside_y[:, :, tf.newaxis], inside_x[:, tf.newaxis, :]))
    return images * tf.cast(keep, images.dtype)[:, :, :, tf.newaxis]
