"""The Open Inference Protocol (KServe V2) data plane, shared by its REST and gRPC adapters.

Each model is served as its SavedModel's `serving_default` signature: `classifier` takes
`image_bytes` (BYTES [-1], encoded image files) and returns `scores` (FP32 [-1, C]) and
`classes` (BYTES [-1, C]); `generator` takes `latents` (FP32 [-1, latent_dim]) and
`class_ids` (INT32 [-1]) and returns `images` (UINT8 [-1, H, W, C]). An adapter turns its
wire format into a `Request` of numpy arrays with `tensor()` (one set of checks for both),
calls `infer`, and lays the outputs out with `raw()` / `values()`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from contract.signatures import Spec

from . import __version__, tensors
from .core import Engine, NotFound, ServedModel, ValidationError, VersionState
from .core.repository import ModelRef
from .core.validation import json_document, requested_version

SIGNATURE = "serving_default"
PLATFORM = "tensorflow_savedmodel"  # what Triton calls a SavedModel
DATATYPES = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
NAMES = {dtype: name for name, dtype in DATATYPES.items()}


def server_metadata() -> dict[str, Any]:
    return {"name": "diptych", "version": __version__, "extensions": ["binary_tensor_data"]}


@dataclasses.dataclass(frozen=True)
class Request:
    model: str
    version: str  # empty: the served one
    id: str
    inputs: dict[str, np.ndarray]
    outputs: list[str]  # empty: every output


@dataclasses.dataclass(frozen=True)
class Response:
    model: str
    version: str
    id: str
    outputs: dict[str, np.ndarray]


def model(engine: Engine, name: str, version: str = "") -> ServedModel:
    """The served version of model `name` (`version`, when given) that will answer this
    request, resolved once; or NotFound in Triton's words."""
    number = requested_version(version, "version") if version else None
    try:
        return engine.find(ModelRef(name, number))
    except NotFound:
        missing = f" version {version}" if version else ""
        raise NotFound(f"Request for unknown model: '{name}'{missing} is not found", "version" if version else "name") \
            from None


def model_ready(engine: Engine, name: str, version: str = "") -> bool:
    """False for an unknown model, or a version that is no version number, as Triton answers."""
    try:
        return engine.ready and model(engine, name, version) is not None
    except (NotFound, ValidationError):
        return False


def model_metadata(engine: Engine, name: str, version: str = "") -> dict[str, Any]:
    served_model = model(engine, name, version)
    info, served = served_model.info, tensors.signature(served_model, SIGNATURE)

    def describe(specs: dict[str, Spec]) -> list[dict[str, Any]]:
        return [{"name": key, "datatype": NAMES[spec.dtype], "shape": [-1] if spec.shape is None else list(spec.shape)}
                for key, spec in specs.items()]

    versions = [str(number) for number, status in engine.status()[info.name].versions.items()
                if status.state is VersionState.AVAILABLE] if not version else [version]
    return {"name": name, "versions": versions, "platform": PLATFORM,
            "inputs": describe(served.inputs), "outputs": describe(served.outputs)}


# -- the model repository extension: REST and gRPC ------------------------------------------

REPOSITORY_STATES = {VersionState.LOADING: "LOADING", VersionState.AVAILABLE: "READY",  # Triton's words
                     VersionState.UNLOADING: "UNLOADING", VersionState.FAILED: "UNAVAILABLE"}


def repository_index(engine: Engine, ready_only: bool = False) -> list[dict[str, str]]:
    """Every model version and its state, as Triton's index lists them."""
    index = [{"name": name, "version": str(number), "state": REPOSITORY_STATES[status.state], "reason": status.reason}
             for name, model in sorted(engine.status().items()) for number, status in model.versions.items()]
    return [entry for entry in index if entry["state"] == "READY"] if ready_only else index


def repository_config(text: Any) -> dict[str, Any]:
    """The `config` load parameter: JSON of the model's repository table (as in the settings)."""
    table = json_document(text, "parameters.config") if isinstance(text, (str, bytes)) else None
    if not isinstance(table, dict):
        raise ValidationError("parameters.config", "JSON of the model's settings, e.g. "
                                                   '{"labels": {"stable": 3}, "traffic": {"stable": 100}}')
    return table


async def repository_load(engine: Engine, name: str, parameters: dict[str, Any]) -> None:
    """A load, with its `version` (one more version) and `config` (the model's settings), at once."""
    config = repository_config(parameters["config"]) if "config" in parameters else None
    await engine.load_model(name, repository_version(parameters), config)


def repository_version(parameters: dict[str, Any]) -> int | None:
    """The `version` parameter of a load or unload: this version only (an int or a digit string)."""
    value = parameters.get("version")
    return None if value is None else requested_version(value, "parameters.version")


async def infer(engine: Engine, request: Request) -> Response:
    served = model(engine, request.model, request.version)
    outputs = await tensors.run(served, SIGNATURE, request.inputs, request.outputs)
    return Response(request.model, served.info.version, request.id, outputs)


# -- tensors on the wire: the same checks and layout for REST and gRPC --------------------


def tensor(field: str, datatype: str, shape: Sequence[int], data: bytes | Sequence[Any]) -> np.ndarray:
    """One input tensor as an array. `data` is its raw bytes (BYTES: each element after a
    4-byte little-endian length) or its values, flat or nested in row-major order."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise ValidationError(f"{field}.datatype", f"unknown datatype {datatype!r}: use one of {', '.join(DATATYPES)}")
    if any(size < 0 for size in shape):
        raise ValidationError(f"{field}.shape", f"{list(shape)}: sizes must not be negative")
    try:
        if isinstance(data, bytes):
            array = np.array(_split(data), dtype=object) if datatype == "BYTES" else np.frombuffer(data, dtype)
        else:
            array = _values(data, dtype)
    except (ValueError, TypeError, OverflowError) as error:
        raise ValidationError(f"{field}.data", f"not {datatype} data: {error}") from None
    if array.size != math.prod(shape):
        raise ValidationError(f"{field}.shape", f"{list(shape)} needs {math.prod(shape)} values, got {array.size}")
    try:
        return array.reshape(shape)
    except ValueError:  # no values, yet a dimension beyond what numpy can index: [0, 2**62]
        raise ValidationError(f"{field}.shape", f"{list(shape)}: a dimension is too large") from None


def _values(data: Sequence[Any], dtype: np.dtype) -> np.ndarray:
    """JSON values as `dtype`, refusing what the cast would change rather than serving it:
    a fraction or an out-of-range number for an integer or BOOL type, a number beyond a
    float type's range."""
    if dtype.kind == "O":
        return np.array(data, dtype=object).ravel()
    given = np.array(data).ravel()
    with np.errstate(over="ignore", invalid="ignore"):
        array = given.astype(dtype)
    if given.dtype.kind in "iufb":
        if dtype.kind in "iub" and not np.array_equal(array.astype(given.dtype), given):
            raise ValueError("a value is not an integer, or is out of the datatype's range")
        if dtype.kind == "f" and np.any(np.isinf(array) & np.isfinite(given)):
            raise ValueError("a value is out of the datatype's range")
    return array


def _split(data: bytes) -> list[bytes]:
    items, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "little")
        if at + 4 + size > len(data):
            raise ValueError("an element is shorter than its 4-byte length prefix says")
        items.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return items


def datatype(array: np.ndarray) -> str:
    return NAMES[array.dtype]


def raw(array: np.ndarray) -> bytes:
    """The binary layout of the protocol: little-endian, row-major; BYTES length-prefixed."""
    if array.dtype == object:
        return b"".join(len(item).to_bytes(4, "little") + item for item in array.ravel())
    return np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()


def values(array: np.ndarray) -> list[Any]:
    """Flat row-major values for JSON (BYTES as text: every BYTES output here is a label)."""
    flat = array.ravel().tolist()
    return [item.decode() for item in flat] if array.dtype == object else flat
