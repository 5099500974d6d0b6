"""The latents a generator's `generate_seeded` signature draws, for both sides.

The export's graph calls these functions, and the service calls the same ones eagerly to
serve a seeded request on a runtime that has no such signature (LiteRT): one definition,
so the same seed gives the same images whichever runtime serves it.
"""

from __future__ import annotations

from typing import Any


def seeded_latents(seed: Any, count: Any, latent_dim: int) -> Any:
    """float32 [count, latent_dim]: TensorFlow's stateless normal, keyed by (seed, 0)."""
    import tensorflow as tf

    key = tf.stack([tf.convert_to_tensor(seed, tf.int64), tf.constant(0, tf.int64)])  # stateless RNGs take two integers
    return tf.random.stateless_normal([count, latent_dim], seed=key)


def seeded_class_ids(class_id: Any, count: Any, classes: int) -> Any:
    """int32 [count]: `class_id` every time, or for −1 the classes in turn."""
    import tensorflow as tf

    class_id = tf.convert_to_tensor(class_id, tf.int32)
    return tf.where(class_id < 0, tf.range(count) % classes, tf.fill([count], class_id))
