"""Image bytes in and out: cheap checks before batching, PNG encoding, grids.

Classification decodes inside the model graph (one decode per image), so requests are
checked from their headers only: the format is known, the size is within the pixel limit.
Formats the graph cannot decode (TIFF, PPM, ICO, ...) and photos with an EXIF rotation
(JPEG; the graph ignores it, the trainer applies it) are converted to upright PNG here once.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps

from .errors import LimitExceeded, ValidationError

# What tf.io.decode_image reads (MPO is a JPEG with extra frames).
GRAPH_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"})
EXIF_ORIENTATION = 0x0112


def prepare(data: bytes, field: str, max_pixels: int) -> bytes:
    """Return bytes the model graph can decode, or raise ValidationError naming `field`."""
    if not data:
        raise ValidationError(field, "the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit follows
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
    return data if image.format in GRAPH_FORMATS and _upright(image) else to_png(data, field)


def _upright(image: Image.Image) -> bool:
    """A JPEG's EXIF rotation is in its header (reading other formats' EXIF means decoding)."""
    if image.format not in ("JPEG", "MPO"):
        return True
    try:
        return image.getexif().get(EXIF_ORIENTATION, 1) == 1
    except Exception:  # malformed EXIF: take the pixels as stored, as the graph does
        return True


def to_png(data: bytes, field: str) -> bytes:
    """Decode fully with Pillow, upright, and re-encode as PNG; a truncated or corrupt file fails here."""
    try:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        return encode_png(np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB")))
    except Exception:  # Pillow raises many kinds of error on malformed input
        raise ValidationError(field, "the image cannot be decoded (truncated or corrupt file)") from None


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

