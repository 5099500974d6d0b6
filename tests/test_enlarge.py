"""The service enlarges an image as the exported graph does, bit for bit (service/core/enlarge.py):
a grey level off on a rounding tie moved a served score past the card's tolerance once a
temperature below 1 sharpened the scores (test_service.py's Fashion-MNIST test)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from service.core.images import resize
from training.data import load_dataset


def graph(pixels: np.ndarray, size: int) -> np.ndarray:
    """The classifier export's preprocessing (training/export.py): resize, round, RGB."""
    resized = tf.image.resize(tf.cast(pixels, tf.float32), (size, size), antialias=True)
    rounded = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()
    return np.repeat(rounded, 3, axis=-1) if rounded.shape[-1] == 1 else rounded


def test_fashion_mnist_items_enlarge_to_the_graphs_pixels():
    """28 → 32 px weights are multiples of 1/16, so ties are common: 0.15% of these pixels
    were a grey level off when Pillow enlarged them."""
    items = load_dataset("fashion-mnist", split="test").images[:2000]
    np.testing.assert_array_equal(np.stack([resize(item, 32) for item in items]), graph(items, 32))


@st.composite
def small_images(draw) -> tuple[np.ndarray, int]:
    size = draw(st.sampled_from([32, 96, 160]))
    shape = (draw(st.integers(1, size)), draw(st.integers(1, size)), draw(st.sampled_from([1, 3])))
    return draw(arrays(np.uint8, shape)), size


@settings(max_examples=60, deadline=None)
@given(small_images())
def test_any_image_no_larger_than_the_model_enlarges_to_the_graphs_pixels(image_and_size):
    image, size = image_and_size
    np.testing.assert_array_equal(resize(image, size), graph(image[np.newaxis], size)[0])
