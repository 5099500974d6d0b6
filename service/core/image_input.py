"""Image input for any kind that takes images: a request's images checked (count, format,
pixels, from their headers) before they join a batch, and each one's pixels at the model's
size, decoded in the batch worker so that a broken image fails alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import Settings
from .errors import LimitExceeded, ValidationError
from .images import decode, prepare, resize

Image = bytes | np.ndarray  # an encoded file, or uint8 pixels [H, W, 1|3]


def checked(images: Sequence[Image], settings: Settings) -> list[tuple[Image, str]]:
    """Images → (image, field) items, after the cheap checks: count, format, pixels."""
    if not len(images):
        raise ValidationError("images", "no images given")
    if len(images) > settings.max_images:
        raise LimitExceeded("images", f"{len(images)} images; at most {settings.max_images} per request")
    return [(_checked(image, f"images[{i}]", settings.max_pixels), f"images[{i}]") for i, image in enumerate(images)]


def _checked(image: Image, field: str, max_pixels: int) -> Image:
    if isinstance(image, bytes):
        return prepare(image, field, max_pixels)
    height, width = image.shape[:2]
    if height * width > max_pixels:
        raise LimitExceeded(field, f"the image has {width}x{height} pixels, more than the limit of {max_pixels}")
    return image


def pixels(items: list[tuple[Image, str]], size: int) -> list[np.ndarray | ValidationError]:
    """Each item's pixels at `size` × `size` (RGB), or why its image cannot be decoded."""
    return [_pixels(image, field, size) for image, field in items]


def _pixels(image: Image, field: str, size: int) -> np.ndarray | ValidationError:
    if not isinstance(image, bytes):
        return resize(image, size)
    try:
        return decode(image, size, field)
    except ValidationError as error:
        return error


def run_good(items: list[np.ndarray | Exception], run) -> list:
    """`run` (one model call) on the stacked good pixels; each bad item keeps its error."""
    good = [item for item in items if not isinstance(item, Exception)]
    results = iter(run(np.stack(good)) if good else [])
    return [item if isinstance(item, Exception) else next(results) for item in items]
