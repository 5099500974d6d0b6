"""Enlarging an image exactly as the exported graph does, float rounding included.

An item no larger than the model's input (a thumbnail, Fashion-MNIST's 28 px) is enlarged
by `tf.image.resize(..., antialias=True)` in the graph's `serving_default`: a separable
triangle filter whose weights TensorFlow computes and applies in float32
(`ScaleAndTranslate`: rows first, then columns). The enlarged pixels fall exactly on
rounding ties (a 28 → 32 px weight is a multiple of 1/16), where Pillow's exact arithmetic
rounded one way and TensorFlow's float error the other: 0.15% of Fashion-MNIST's pixels one
grey level off, which moved a served score 8e-5, and 1.2e-4 once a temperature below 1
sharpened the scores (past the card's tolerance of 1e-4). Doing TensorFlow's float32 steps
in the same order gives its pixels bit for bit. Shrinking keeps Pillow's filter (images.py):
TensorFlow's wider kernel there is not reproduced bit for bit, and a tie is rare.
"""

from __future__ import annotations

import functools

import numpy as np

_HALF = np.float32(0.5)
_ONE = np.float32(1.0)


def enlarge(pixels: np.ndarray, size: int) -> np.ndarray:
    """float32 [H, W, C] with H, W ≤ `size` → float32 [size, size, C], equal to the graph's
    `tf.image.resize(pixels, (size, size), antialias=True)`."""
    height, width = pixels.shape[:2]
    rows = _gather(pixels.astype(np.float32), *_spans(size, height))
    return _gather(rows.swapaxes(0, 1), *_spans(size, width)).swapaxes(0, 1)


@functools.lru_cache(maxsize=256)
def _spans(size: int, source: int) -> tuple[np.ndarray, np.ndarray]:
    """Each output index's first source index [size] and its normalised weights [size, taps],
    computed as `ComputeSpansCore` does for a scale ≥ 1 (kernel radius 1, no kernel scaling)."""
    inverse_scale = np.float32(1.0 / np.float64(np.float32(size) / np.float32(source)))
    centres = (np.arange(size, dtype=np.float32) + _HALF) * inverse_scale
    starts = np.clip(np.ceil(centres - _ONE - _HALF), 0, source - 1).astype(np.int64)
    ends = np.clip(np.floor(centres + _ONE - _HALF), 0, source - 1).astype(np.int64) + 1
    taps = min(3, source)
    weights = np.zeros((size, taps), np.float32)
    total = np.zeros(size, np.float32)
    for tap in range(taps):  # summed tap by tap, in TensorFlow's order
        distance = np.abs((starts + tap).astype(np.float32) + _HALF - centres)
        weights[:, tap] = np.where((starts + tap < ends) & (distance < _ONE), _ONE - distance, 0)
        total += weights[:, tap]
    weights *= (_ONE / total)[:, None]
    return starts, weights


def _gather(pixels: np.ndarray, starts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Along the first axis: output i = Σ_tap weight[i, tap] × pixels[start[i] + tap], a float32
    multiply and add per tap (a tap past the edge has weight 0)."""
    last = len(pixels) - 1
    out = np.zeros((len(starts), *pixels.shape[1:]), np.float32)
    for tap in range(weights.shape[1]):
        out += weights[:, tap].reshape(-1, *[1] * (pixels.ndim - 1)) * pixels[np.minimum(starts + tap, last)]
    return out
