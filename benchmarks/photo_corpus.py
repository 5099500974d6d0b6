"""A corpus of photos as apps send them, made at run time from real photos into a cache folder.

scikit-image's and scikit-learn's sample photos (bundled with them, no download) re-encoded
at a phone camera's 4:3 at 0.3, 2 and 12 megapixels: JPEG at quality 85 with 4:2:0 chroma (what phones and
browsers write), and one photo also as PNG, WebP (quality 80), a JPEG stored sideways with
EXIF orientation 6 (as phones store portrait shots) and a greyscale JPEG. The sample photos
are 0.14-0.27 megapixels: enlarged, they would be smoother than a camera's and decode
faster, so sizes above the source get a sensor's grain (Gaussian, sigma 2 grey levels,
seeded). The files are megabytes: never committed, made once per cache folder.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = {"0.3MP": (640, 480), "2MP": (1632, 1224), "12MP": (4032, 3024)}
SKIMAGE_PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")  # skimage.data: RGB photos of 0.14-0.26 MP
SKLEARN_PHOTOS = ("china", "flower")  # sklearn.datasets.load_sample_image: 640x427 JPEGs
PHOTOS = SKIMAGE_PHOTOS + SKLEARN_PHOTOS
ODD_ONE = "coffee"  # the photo also written in the other formats
FORMATS = ("jpeg", "png", "webp", "jpeg-exif", "jpeg-grey")
ORIENTATION = 0x0112


@dataclass(frozen=True)
class Photo:
    size: str  # a key of SIZES
    format: str  # one of FORMATS
    name: str  # the source photo
    path: Path

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diptych" / "photos"


def corpus(cache: Path | None = None) -> list[Photo]:
    """Every photo of the corpus, made into `cache` (default: the user's cache folder) if missing."""
    cache = cache or default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    photos = []
    for size in SIZES:
        for format in FORMATS:
            for name in PHOTOS if format == "jpeg" else (ODD_ONE,):
                path = cache / f"{size}-{name}.{format}"
                if not path.exists():
                    staging = path.with_suffix(".partial")
                    staging.write_bytes(encode(source(name, SIZES[size]), format))
                    staging.rename(path)
                photos.append(Photo(size, format, name, path))
    return photos


def source(name: str, size: tuple[int, int]) -> Image.Image:
    """The sample photo cropped to 4:3 and resized to `size` (width, height), grain added when enlarged."""
    pixels = sample_photo(name)
    height, width = pixels.shape[:2]
    crop_height, crop_width = (height, height * 4 // 3) if width * 3 >= height * 4 else (width * 3 // 4, width)
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    image = Image.fromarray(pixels[top : top + crop_height, left : left + crop_width]).resize(size, Image.LANCZOS)
    if size[0] > crop_width:
        grain = np.random.default_rng(sum(map(ord, name))).normal(0, 2, (size[1], size[0], 3))
        image = Image.fromarray(np.clip(np.asarray(image) + grain, 0, 255).round().astype(np.uint8))
    return image


def sample_photo(name: str) -> np.ndarray:
    """One of PHOTOS as uint8 RGB [H, W, 3], from the package that ships it."""
    if name in SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    return getattr(skimage.data, name)()


def encode(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    if format == "jpeg":
        image.save(buffer, "JPEG", quality=85, subsampling="4:2:0")
    elif format == "png":
        image.save(buffer, "PNG")
    elif format == "webp":
        image.save(buffer, "WEBP", quality=80)
    elif format == "jpeg-exif":  # stored sideways: the viewer turns it 90 degrees clockwise
        exif = Image.Exif()
        exif[ORIENTATION] = 6
        image.transpose(Image.ROTATE_90).save(buffer, "JPEG", quality=85, subsampling="4:2:0", exif=exif)
    elif format == "jpeg-grey":
        image.convert("L").save(buffer, "JPEG", quality=85)
    else:
        raise ValueError(f"unknown format {format}")
    return buffer.getvalue()
