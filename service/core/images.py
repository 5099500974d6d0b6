"""Image bytes in and out: cheap checks before batching, decoding, PNG encoding, grids.

Requests are checked from their headers only (format known, pixel count within the
limit) before they join a batch; the batch workers then decode each image once with
Pillow, in parallel, as the exported graph's `serving_default` does (up to rounding ties):
upright (EXIF), RGB, resized with an antialiased bilinear filter in float, rounded to
uint8. The runtimes take those pixels (`classify_resized`, or its LiteRT conversion).
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps

from .errors import LimitExceeded, ValidationError

DRAFT_FACTOR = 2  # JPEG draft decoding stops at this multiple of the model's input size


def prepare(data: bytes, field: str, max_pixels: int) -> bytes:
    """Check the header (a known format, pixels within the limit) and return `data`;
    decompression bombs are refused before anything is decoded. Else ValidationError naming `field`."""
    if not data:
        raise ValidationError(field, "the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bombs: our own limit follows; Pillow's notes on broken files are noise
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise LimitExceeded(field, "the image has far too many pixels") from None
    except Exception:  # Pillow raises many kinds of error on malformed input
        raise ValidationError(field, "not an image (unrecognised format)") from None
    width, height = image.size
    if width * height > max_pixels:
        raise LimitExceeded(field, f"the image has {width}x{height} pixels, more than the limit of {max_pixels}")
    if width == 0 or height == 0:
        raise ValidationError(field, "the image has no pixels")
    return data


def decode(data: bytes, size: int, field: str) -> np.ndarray:
    """Encoded image (any format Pillow reads) → uint8 RGB [size, size, 3], or ValidationError.

    A large JPEG is decoded at a reduced scale (libjpeg's DCT scaling: 1/2, 1/4, 1/8),
    never below DRAFT_FACTOR × `size`: a 12-megapixel photo decodes ~10x faster, and the
    antialiased resize that follows still averages several pixels into each one.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # headers were checked in prepare(); Pillow's notes are noise here
            image = Image.open(io.BytesIO(data))
            if image.format in ("JPEG", "MPO"):
                image.draft(None, (DRAFT_FACTOR * size, DRAFT_FACTOR * size))
            return resize(_rgb_or_grey(ImageOps.exif_transpose(image)), size)
    except Exception:  # Pillow raises many kinds of error on malformed input
        raise ValidationError(field, "the image cannot be decoded (truncated or corrupt file)") from None


def _rgb_or_grey(image: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] or [H, W, 1], as tf.io.decode_image reads the file (alpha dropped)."""
    if image.mode.startswith("I"):  # 16-bit grey: keep the high byte, as the graph's PNG decoder does
        return (np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)[..., None]
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    pixels = np.asarray(image)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, C] (C 1 or 3) → uint8 [size, size, 3], as the graph's
    `tf.image.resize(..., antialias=True)` then round: Pillow's bilinear filter widens with
    the scale as TF's does, and in float ("F") mode it matches TF to rounding (one grey level
    at most, on ties); Pillow's uint8 mode rounds between its two passes and differs more."""
    height, width, channels = pixels.shape
    if (height, width) != (size, size):
        planes = [
            np.asarray(Image.fromarray(pixels[..., c].astype(np.float32), "F").resize((size, size), Image.BILINEAR))
            for c in range(channels)
        ]
        pixels = np.clip(np.round(np.stack(planes, axis=-1)), 0, 255).astype(np.uint8)
    return np.repeat(pixels, 3, axis=-1) if channels == 1 else pixels


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 [H, W] or [H, W, C] (C in 1, 3, 4) → PNG bytes."""
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def tile(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """[N, H, W, C] → one [rows*H, columns*W, C] image; a square-ish grid by default."""
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    canvas = np.zeros((rows * height, columns * width, channels), dtype=images.dtype)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        canvas[row * height : (row + 1) * height, column * width : (column + 1) * width] = image
    return canvas

