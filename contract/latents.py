"""The latents a generator draws from a seed, for both sides.

`seeded_latents` and `seeded_class_ids` are what the export's `generate_seeded` signature
draws: the export's graph calls them, and the service calls the same ones eagerly to serve
that signature on a runtime that has no such graph (LiteRT), so the same seed gives the same
images whichever runtime serves it.

`truncated_latents` is what diptych's own API draws (`seed` and `psi` of a generate or
interpolate request), and what the evaluation measures: one definition, so the numbers in
docs/gan.md and in a generator's card are those of the latents the service serves.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

TRUNCATION = 2.0  # BigGAN's threshold: components beyond ±2 are drawn again (4.6% of a standard normal's)


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


def check_psi(psi: Any) -> float:
    """ψ as a float, or a ValueError: the truncation scales latents, so only (0, 1] makes sense
    (0 would draw the same latent for every seed; above 1, latents the generator rarely saw)."""
    if isinstance(psi, bool) or not isinstance(psi, numbers.Real) or not 0 < psi <= 1:
        raise ValueError(f"must be a number in (0, 1], got {psi!r}")
    return float(psi)


def truncated_latents(seed: int, count: int, latent_dim: int, psi: float = 1.0) -> np.ndarray:
    """float32 [count, latent_dim]: the truncation trick (Brock et al. 2019, BigGAN), ψ · z.

    Each component of z is a standard normal from numpy's RandomState(seed) (a stream frozen
    across numpy versions, so a seed's latents never change), drawn again while it lies
    outside [−TRUNCATION, TRUNCATION]; then everything is scaled by ψ, so |z| ≤ 2ψ. Smaller ψ
    keeps to the well-trained middle of the latent space: more typical images, less variety.
    ψ = 1 is the truncation alone, which leaves 95.4% of the components as drawn.

    Rows are completed one at a time, so a row's values depend only on the seed and the rows
    before it: the first image of a seed is the same whatever the count.
    """
    psi = check_psi(psi)
    rng = np.random.RandomState(seed)
    rows = np.empty((count, latent_dim))
    for row in rows:
        row[:] = rng.standard_normal(latent_dim)
        while (outside := np.abs(row) > TRUNCATION).any():
            row[outside] = rng.standard_normal(int(outside.sum()))
    return (psi * rows).astype(np.float32)
