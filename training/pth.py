"""Read PyTorch ``.pth`` state dicts with numpy only.

A ``.pth`` file is a pickle, and unpickling runs whatever code the file names, so
``pickle.load`` on a downloaded checkpoint is as dangerous as ``exec``. This reader
unpickles through :class:`RestrictedUnpickler`, whose ``find_class`` admits only the
handful of globals a state dict needs (tensor rebuilders, storage types,
``OrderedDict``) and maps them to small numpy stand-ins; any other global is refused
before it can run. No torch is imported.

PyTorch has written two layouts:

* **zip** (torch >= 1.6): ``<name>/data.pkl`` holds the object; each storage is a
  raw little-endian file ``<name>/data/<key>``.
* **legacy**: five pickles one after another (magic number, protocol version, system
  info, the object, the list of storage keys), then for each key its element count as
  an int64 followed by its raw bytes.

In both, the object's pickle refers to storages by *persistent id*
``('storage', StorageType, key, location, numel, ...)``; tensors are rebuilt with
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch's typed storages and the numpy dtype of their elements (little-endian).
STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class PthError(ValueError):
    """The file is not a PyTorch checkpoint this reader understands."""


class UnsafePickleError(PthError, pickle.UnpicklingError):
    """The pickle names a global outside the state-dict allow-list."""


class StorageType:
    """Stands in for ``torch.FloatStorage`` and friends: just a name and a dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]

    def __repr__(self) -> str:
        return f"torch.{self.name}"


def rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """numpy version of ``torch._utils._rebuild_tensor_v2``.

    Returns a strided *view* of the storage: in the legacy layout the storage bytes
    are only read after the whole pickle, so the data must not be copied yet.
    The trailing arguments (requires_grad, backward hooks, metadata) mean nothing here.
    """
    size, stride = tuple(size), tuple(stride)
    if any(n < 0 for n in size) or any(s < 0 for s in stride) or storage_offset < 0:
        raise PthError(f"invalid tensor geometry: size {size}, stride {stride}")
    if 0 not in size:
        last_element = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last_element >= storage.size:
            raise PthError(
                f"tensor of size {size} at offset {storage_offset} overruns its "
                f"storage of {storage.size} elements")
    return np.lib.stride_tricks.as_strided(
        storage[storage_offset:],
        shape=size,
        strides=tuple(s * storage.itemsize for s in stride),
        writeable=False,
    )


def rebuild_parameter(data, *_ignored):
    """numpy version of ``torch._utils._rebuild_parameter``: a Parameter is its data."""
    return data


ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    **{("torch", name): StorageType(name) for name in STORAGE_DTYPES},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds tensors as numpy arrays and refuses everything else.

    ``load_storage(storage_type, key, numel)`` supplies the flat numpy array behind
    each persistent id; the two file layouts differ only in how they do that.
    """

    def __init__(self, file: BinaryIO, load_storage: Callable | None = None):
        super().__init__(file)
        self.load_storage = load_storage

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global '{module}.{name}': a state dict holds "
                "only tensors, and any other object could run code. Load this file "
                "with torch itself only if you trust its source.") from None

    def persistent_load(self, pid):
        if (self.load_storage is None or not isinstance(pid, tuple) or len(pid) < 5
                or pid[0] != "storage" or not isinstance(pid[1], StorageType)):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, *view = pid
        if view and view[0] is not None:
            raise PthError("storage views (files from torch < 0.4) are not supported")
        return self.load_storage(storage_type, str(key), int(numel))


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict (zip or legacy ``.pth``) into ``{name: ndarray}``.

    Arrays are contiguous copies in the stored dtype (float32 weights, int64
    counters such as ``num_batches_tracked``).
    """
    path = Path(path)
    obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()):
        raise PthError(f"{path} does not hold a state dict (a mapping of name -> tensor)")
    return {name: np.array(array, order="C") for name, array in obj.items()}  # copies; keeps 0-d shapes


def _load_zip(path: Path):
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise PthError(f"{path}: expected one data.pkl in the zip, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise PthError(f"{path}: big-endian checkpoints are not supported")

        storages: dict[str, np.ndarray] = {}

        def load_storage(storage_type: StorageType, key: str, numel: int) -> np.ndarray:
            if key not in storages:
                raw = archive.read(f"{prefix}data/{key}")
                if len(raw) != numel * storage_type.dtype.itemsize:
                    raise PthError(f"{path}: storage {key} has {len(raw)} bytes, "
                                   f"expected {numel} x {storage_type!r}")
                storages[key] = np.frombuffer(raw, dtype=storage_type.dtype)
            return storages[key]

        with archive.open(pickles[0]) as pickled:
            return RestrictedUnpickler(pickled, load_storage).load()


def _load_legacy(path: Path):
    with open(path, "rb") as file:
        try:
            magic_number = RestrictedUnpickler(file).load()
        except UnsafePickleError:
            raise
        except Exception as error:
            raise PthError(f"{path} is neither a zip nor a legacy PyTorch file") from error
        if magic_number != LEGACY_MAGIC_NUMBER:
            raise PthError(f"{path} is not a PyTorch file (wrong magic number)")
        protocol_version = RestrictedUnpickler(file).load()
        if protocol_version != LEGACY_PROTOCOL_VERSION:
            raise PthError(f"{path}: unsupported legacy protocol {protocol_version}")
        sys_info = RestrictedUnpickler(file).load()
        if not sys_info.get("little_endian", False):
            raise PthError(f"{path}: big-endian checkpoints are not supported")

        # The object comes before the storage bytes: hand out empty buffers now and
        # fill them in place afterwards (the tensors are views of them).
        storages: dict[str, np.ndarray] = {}

        def load_storage(storage_type: StorageType, key: str, numel: int) -> np.ndarray:
            if key not in storages:
                storages[key] = np.empty(numel, dtype=storage_type.dtype)
            return storages[key]

        obj = RestrictedUnpickler(file, load_storage).load()
        storage_keys = RestrictedUnpickler(file).load()
        for key in storage_keys:
            storage = storages.get(key)
            if storage is None:
                raise PthError(f"{path}: storage {key} is listed but never referenced")
            stored_numel = int.from_bytes(file.read(8), "little")
            if stored_numel != storage.size or file.readinto(storage) != storage.nbytes:
                raise PthError(f"{path}: storage {key} is truncated or mis-sized")
        return obj
