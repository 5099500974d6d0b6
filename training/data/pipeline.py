"""`make_pipeline`: a `Dataset` as batched `tf.data`, resized, converted and augmented on the fly."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from training.data.dataset import DataError, Dataset, available_memory_bytes

# Unshuffled pipelines cache their float32 batches when those take at most this share of
# the available memory.
CACHE_MEMORY_SHARE = 0.25
# Augmentation: each image is shifted by up to this fraction of its side and zoomed by up
# to this fraction in or out.
MAX_SHIFT = 0.1
MAX_ZOOM = 0.1


def make_pipeline(
    ds: Dataset,
    batch_size: int,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of (float32 images in 0-255 [B, S, S, channels], int32 labels [B]).

    Resizing (bilinear, antialiased) and channel conversion happen per batch in the
    pipeline, so a 28x28 dataset can feed a 224x224 model without storing 224x224 copies.
    Unshuffled pipelines cache their converted batches in memory when they fit (validation
    and feature extraction then pay the conversion once). Augmentation - random horizontal
    flip, shift and zoom - is drawn from `seed`, like the shuffle: the same seed gives the
    same batches, and each epoch gets fresh draws.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be positive, got {batch_size}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    _, height, width, stored_channels = ds.images.shape
    size = image_size or height
    channels = channels or stored_channels

    def to_model_input(images, labels):
        images = tf.cast(images, tf.float32)
        if (size, size) != (height, width):
            images = tf.image.resize(images, (size, size), antialias=True)
        if channels == 3 and stored_channels == 1:
            images = tf.image.grayscale_to_rgb(images)
        elif channels == 1 and stored_channels == 3:
            images = tf.image.rgb_to_grayscale(images)
        return images, labels

    pipeline = tf.data.Dataset.from_tensor_slices((ds.images, ds.labels.astype(np.int32)))
    if shuffle:
        pipeline = pipeline.shuffle(len(ds), seed=seed, reshuffle_each_iteration=True)
    pipeline = pipeline.batch(batch_size).map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE)
    converted_bytes = len(ds) * size * size * channels * 4
    if not shuffle and converted_bytes <= CACHE_MEMORY_SHARE * available_memory_bytes():
        pipeline = pipeline.cache()
    if augment:
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        pipeline = tf.data.Dataset.zip(pipeline, draws).map(
            lambda batch, draw: (_augment(batch[0], draw), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return pipeline.prefetch(tf.data.AUTOTUNE)


def _augment(images: tf.Tensor, draw: tf.Tensor) -> tf.Tensor:
    """Randomly flip, shift and zoom each image of a batch; `draw` seeds the randomness."""
    images = tf.image.stateless_random_flip_left_right(images, seed=tf.stack([draw, 0]))
    batch = tf.shape(images)[0]
    side = tf.cast(tf.shape(images)[1], tf.float32)
    zoom = tf.random.stateless_uniform([batch], tf.stack([draw, 1]), 1 - MAX_ZOOM, 1 + MAX_ZOOM)
    shift = tf.random.stateless_uniform([batch, 2], tf.stack([draw, 2]), -MAX_SHIFT, MAX_SHIFT) * side
    # Each output pixel (x, y) samples the input at zoom * (x, y) + offset: a zoom about the
    # image centre plus a shift.
    offset = (side - 1) / 2 * (1 - zoom)
    zeros = tf.zeros_like(zoom)
    transforms = tf.stack(
        [zoom, zeros, offset + shift[:, 0], zeros, zoom, offset + shift[:, 1], zeros, zeros], axis=1
    )
    transformed = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )
    return tf.ensure_shape(transformed, images.shape)  # the op forgets the static shape
