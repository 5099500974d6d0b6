"""Image bytes in and out: cheap checks before batching, decoding, PNG encoding, grids.

Requests are checked from their headers only (format known, pixel count within the
limit) before they join a batch; the batch workers then decode each image once, in
parallel, as the exported graph's `serving_default` does: upright (EXIF), RGB, resized with
an antialiased bilinear filter, rounded to uint8. JPEGs (what apps send) go through
libjpeg-turbo's DCT scaling (simplejpeg) and Pillow's one-pass uint8 resize, both with the
GIL released; other formats through Pillow. An image enlarged to the model's size gets the
graph's own pixels (enlarge.py), a shrunk one the graph's up to rounding ties. The runtimes
take those pixels (`classify_resized`, or its LiteRT conversion).
"""

from __future__ import annotations

import asyncio
import functools
import io
import math
import struct
import warnings
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import fpng_py
import numpy as np
import simplejpeg
from PIL import Image, ImageOps

from contract.runtime import cores

from .enlarge import enlarge
from .errors import LimitExceeded, ValidationError

DRAFT_FACTOR = 2  # JPEG draft decoding stops at this multiple of the model's input size
_ORIENTATION = 0x0112  # the EXIF tag
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}  # EXIF orientation -> the turn that shows it upright (as ImageOps.exif_transpose)


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
            if image.format in ("JPEG", "MPO") and (pixels := _decode_jpeg(data, image, size)) is not None:
                return pixels
            if image.format in ("JPEG", "MPO"):
                image.draft(None, (DRAFT_FACTOR * size, DRAFT_FACTOR * size))
            return resize(_rgb_or_grey(ImageOps.exif_transpose(image)), size)
    except Exception:  # Pillow raises many kinds of error on malformed input
        raise ValidationError(field, "the image cannot be decoded (truncated or corrupt file)") from None


def _decode_jpeg(data: bytes, image: Image.Image, size: int) -> np.ndarray | None:
    """A JPEG's uint8 RGB [size, size, 3] by libjpeg-turbo, or None where Pillow must decide
    (CMYK, 12-bit, damaged files: the old path, its errors included).

    Measured against the graph (tf.io.decode_image + antialiased resize) on the photo corpus
    (benchmarks/photos.py, docs/serving.md): libjpeg-turbo's scaled decoding to ≥ DRAFT_FACTOR ×
    `size` with the fast integer DCT (the graph's decoder's own, so unscaled files decode as it
    does) and Pillow's uint8 bilinear resize cost about half of Pillow's draft + float resize,
    at the same or a smaller difference from the graph; both release the GIL. A file with no
    more pixels than the model's input is enlarged by the float resize instead: Pillow's uint8
    mode rounds between its two passes, which put 12% of a 28-px JPEG's pixels one grey level
    off the graph and changed 62 of Fashion-MNIST's 10 000 test answers; the float resize, whose
    cost is bounded by the model's input here, matches the graph up to rounding ties.
    """
    if image.mode not in ("RGB", "L"):
        return None
    width, height = image.size
    reduction = max(r for r in (8, 4, 2, 1) if r == 1 or min(width, height) >= r * DRAFT_FACTOR * size)
    try:  # scales of 1/2^k only, as Pillow's draft: libjpeg-turbo's 3/8, 3/4... differed from the graph by up to 10
        pixels = simplejpeg.decode_jpeg(data, "RGB" if image.mode == "RGB" else "GRAY", fastdct=True,
                                        min_height=-(-height // reduction), min_width=-(-width // reduction))
    except ValueError:
        return None
    if width * height <= size * size:  # enlarged (a thumbnail, a 28-px item): the float resize
        resized = Image.fromarray(resize(pixels, size))
    else:
        resized = Image.fromarray(pixels if image.mode == "RGB" else pixels[..., 0]).resize((size, size), Image.BILINEAR)
    if (turn := _UPRIGHT.get(image.getexif().get(_ORIENTATION))) is not None:
        resized = resized.transpose(turn)  # on the square result: a resize to a square commutes with turns
    resized = np.asarray(resized)
    return resized if resized.ndim == 3 else np.repeat(resized[..., None], 3, axis=-1)


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
    `tf.image.resize(..., antialias=True)` then round. Enlarged: TensorFlow's own float32
    steps (`enlarge`), bit for bit. Shrunk: Pillow's bilinear filter, which widens with the
    scale as TF's does, in float ("F") mode: TF's pixels but for rounding ties (one grey
    level, rare when shrinking); Pillow's uint8 mode rounds between its two passes and differs more."""
    height, width, channels = pixels.shape
    if height <= size and width <= size and (height, width) != (size, size):
        pixels = np.clip(np.round(enlarge(pixels, size)), 0, 255).astype(np.uint8)
    elif (height, width) != (size, size):
        planes = [
            np.asarray(Image.fromarray(pixels[..., c].astype(np.float32), "F").resize((size, size), Image.BILINEAR))
            for c in range(channels)
        ]
        pixels = np.clip(np.round(np.stack(planes, axis=-1)), 0, 255).astype(np.uint8)
    return np.repeat(pixels, 3, axis=-1) if channels == 1 else pixels


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 [H, W] or [H, W, C] (C in 1, 2, 3, 4) → PNG bytes; what Pillow cannot write
    (another dtype, another shape) raises, as Pillow does, rather than becoming other pixels.

    Measured per 28-px image (docs/batch.md): RGB and RGBA through fpng, 8 µs against Pillow's
    196 µs, files 1.35× larger; grey and grey with alpha (which fpng cannot write) by
    `_png_grey`, 43 µs of CPU against Pillow's 80 at zlib level 1, the same size. Lossless either way."""
    if pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        height, width, channels = pixels.shape  # fpng reads raw bytes: only uint8 RGB(A) means what it writes
        return fpng_py.fpng_encode_image_to_memory(np.ascontiguousarray(pixels).tobytes(), width, height, channels)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.dtype == np.uint8 and (pixels.ndim == 2 or pixels.ndim == 3 and pixels.shape[-1] == 2):
        return _png_grey(pixels)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # raises: no PNG holds these pixels as they are
    return buffer.getvalue()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREY, _GREY_ALPHA = 0, 4  # the PNG colour types of 1 and 2 channels


def _png_grey(pixels: np.ndarray) -> bytes:
    """uint8 [H, W] (grey) or [H, W, 2] (grey, alpha) → the smallest valid PNG: one IDAT of
    unfiltered rows at zlib level 1. Pillow's writer spends most of its time on a 28-px image
    in Python around the same zlib call; zlib releases the GIL while it compresses."""
    height, width = pixels.shape[:2]
    rows = np.zeros((height, 1 + pixels[0].size), np.uint8)  # each row starts with its filter type: 0, none
    rows[:, 1:] = pixels.reshape(height, -1)
    header = struct.pack(">IIBBBBB", width, height, 8, _GREY if pixels.ndim == 2 else _GREY_ALPHA, 0, 0, 0)
    return b"".join((_PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)),
                     _chunk(b"IEND", b"")))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def encode_pngs(images: Sequence[np.ndarray]) -> list[bytes]:
    """Each image's PNG, in order, a chunk per core on the encoder threads (zlib and Pillow
    compress with the GIL released; fpng holds it, but for ~8 µs an image)."""
    return [png for chunk in _encoders().map(_encode_all, _chunks(images)) for png in chunk]


async def encode_pngs_off_loop(images: Sequence[np.ndarray]) -> list[bytes]:
    """`encode_pngs` from a coroutine: the event loop (HTTP's and gRPC's, shared) goes on
    parsing and answering while the encoder threads work."""
    done = await asyncio.gather(*(asyncio.wrap_future(_encoders().submit(_encode_all, chunk))
                                  for chunk in _chunks(images)))
    return [png for chunk in done for png in chunk]


def _encode_all(images: Sequence[np.ndarray]) -> list[bytes]:
    return [encode_png(image) for image in images]


def _chunks(images: Sequence[np.ndarray]) -> list[Sequence[np.ndarray]]:
    """One chunk per core: a task per small image cost more than encoding it."""
    size = -(-len(images) // cores()) or 1
    return [images[start:start + size] for start in range(0, len(images), size)]


@functools.cache
def _encoders() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(cores(), thread_name_prefix="png")


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

