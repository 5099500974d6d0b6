"""Image folders: one subfolder per class, any common image format, decoded into memory."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from contract.imagefolder import IMAGE_EXTENSIONS
from training.data.dataset import DataError, Dataset, DataWarning, check_fits_in_memory, warn_short_class

# Folder images need one common size to be stacked; 224 is the input size the ImageNet
# backbones were trained at, and `make_pipeline` can resize further for a smaller model.
DEFAULT_FOLDER_IMAGE_SIZE = 224
# A folder without a test/ subfolder gets this share of each class held out as its test split.
HELD_OUT_FRACTION = 0.2
PROGRESS_MIN_FILES = 200


def load_folder(source: str, split: str, per_class: int | None, seed: int, image_size: int) -> Dataset:
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
    check_fits_in_memory(sum(wanted), image_size, 3, f"{source} at {image_size}x{image_size}")

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
                warn_short_class(name, read, per_class)
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (", ..." if len(unreadable) > 5 else "")
        warnings.warn(f"skipped {len(unreadable)} unreadable image file(s) in {source}: {shown}",
                      DataWarning, stacklevel=3)
    return Dataset(images[:count], labels[:count], class_names, source)


def typical_side(source: str, sample: int = 64) -> int | None:
    """The median shorter side of up to `sample` of a folder's training images (read from
    their headers, not decoded), or None when there is no readable one: what a model that
    follows the data, such as the scratch CNN, sizes itself to."""
    root = Path(source)
    train_root = root / "train" if (root / "train").is_dir() else root
    try:
        files = [path for name in _class_folders(train_root) for path in _image_files(train_root / name, name)]
    except (DataError, OSError):
        return None  # loading the folder will say what is wrong with it
    sides = []
    for path in files[:: max(1, len(files) // sample)][:sample]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except Exception:  # decoders raise many types; an unreadable file is skipped at load too
            continue
    return int(np.median(sides)) if sides else None


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
