"""A small offline image folder for the transfer-vs-scratch comparison: faces vs non-faces.

    python -m benchmarks.lfw_folder data/lfw-faces

scikit-image (BSD-3-Clause) ships `skimage.data.lfw_subset()`: 100 faces from Labeled
Faces in the Wild and 100 background crops of the same photos, 25x25 grayscale (LFW's
images carry no licence of their own; UMass publishes them for research). This writes
them as PNGs into `faces/` and `non-faces/`, a folder `python -m training.classifier
--data` reads as any user's; with no `test/` folder the loader holds out a fixed 20% of
each class (by file name) as the test split.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def write_lfw_folder(folder: str | Path) -> Path:
    """Write the 200 images under `folder` (again, identically, when they are there)."""
    from skimage.data import lfw_subset

    images = np.round(lfw_subset() * 255).astype(np.uint8)  # floats in [0, 1]; faces first
    folder = Path(folder)
    for start, name in ((0, "faces"), (100, "non-faces")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images[start:start + 100]):
            Image.fromarray(image).save(folder / name / f"{name}-{index:03d}.png")
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m benchmarks.lfw_folder FOLDER")
    print(write_lfw_folder(sys.argv[1]))
