"""The in-memory data set both trainers share, its errors, and the checks every source makes."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from training.cli import UserError

# Decoded data may use at most this share of the available memory: the tf.data pipeline
# and the model need the rest.
MEMORY_SHARE = 0.5


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

    def sample(self, count: int, seed: int) -> Dataset:
        """At most `count` images chosen at random with `seed` (all of them, in order, when there are fewer)."""
        if len(self) <= count:
            return self
        return self.subset(np.sort(np.random.default_rng(seed).choice(len(self), count, replace=False)))


def train_validation_split(
    ds: Dataset, validation_fraction: float = 0.1, seed: int = 0, min_per_class: int = 1
) -> tuple[Dataset, Dataset]:
    """Split off `validation_fraction` of every class, chosen at random with `seed`.

    Every class gets at least `min_per_class` validation images, or half its images when it
    has fewer than twice that, and keeps at least one training image; a class of one image
    has none to spare.
    """
    if not 0 <= validation_fraction < 1:
        raise DataError(f"validation fraction must be in [0, 1), got {validation_fraction}")
    rng = np.random.default_rng(seed)
    validation = []
    for label in range(ds.num_classes):
        members = rng.permutation(np.flatnonzero(ds.labels == label))
        count = round(len(members) * validation_fraction)
        if validation_fraction > 0:  # every class is validated...
            count = max(count, min(min_per_class, len(members) // 2), 1)
        count = min(count, max(len(members) - 1, 0))  # ...and keeps a training image
        validation.append(members[:count])
    is_validation = np.zeros(len(ds), dtype=bool)
    is_validation[np.concatenate(validation)] = True
    return ds.subset(np.flatnonzero(~is_validation)), ds.subset(np.flatnonzero(is_validation))


def warn_short_class(name: str, available: int, per_class: int) -> None:
    warnings.warn(f"class {name!r} has only {available} images (per_class={per_class}): using all of them",
                  DataWarning, stacklevel=2)


def check_fits_in_memory(count: int, size: int, channels: int, what: str) -> None:
    needed = count * size * size * channels
    available = available_memory_bytes()
    if needed > MEMORY_SHARE * available:
        raise DataError(
            f"{count} images of {what} need {needed / 2**30:.1f} GiB, more than "
            f"{MEMORY_SHARE:.0%} of the {available / 2**30:.1f} GiB of memory available: "
            "lower --image-size or --per-class"
        )


def available_memory_bytes() -> int:
    """Memory the system can give us now: MemAvailable on Linux, else free pages."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
