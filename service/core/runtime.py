"""Model execution behind one small interface, so another engine can plug in.

A `Runtime` runs one signature of an exported model on a whole batch: named numpy
inputs in, named numpy outputs out (the shapes of docs/architecture.md). The core never
touches TensorFlow itself; a LiteRT interpreter pool can implement the same `run`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np


class RuntimeInputError(Exception):
    """The model rejected the batch's content (e.g. an image its decoder cannot read)."""


class Runtime(Protocol):
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class SavedModelRuntime:
    """Calls a loaded signature (a concrete function: compiled, never eager per image)."""

    def __init__(self, path: str, signature: str = "serving_default") -> None:
        import tensorflow as tf

        self._tf = tf
        self._function = tf.saved_model.load(path).signatures[signature]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self._function(**{name: self._tf.constant(value) for name, value in inputs.items()})
        except self._tf.errors.InvalidArgumentError as error:
            raise RuntimeInputError(error.message.splitlines()[0]) from None
        return {name: value.numpy() for name, value in outputs.items()}

