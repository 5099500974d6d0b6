"""A SavedModel's signatures, read from `saved_model.pb` alone: no model is loaded.

What each signature takes and returns (names, dtypes, shapes) is what TF Serving reports
and checks requests against; the service does the same with this reader, and the LiteRT
conversion finds its signature here. TensorFlow's protos are imported when first used:
`tensorflow.core` loads all of TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .layout import SAVED_MODEL

if TYPE_CHECKING:
    from tensorflow.core.protobuf import meta_graph_pb2


@dataclasses.dataclass(frozen=True)
class Spec:
    dtype: np.dtype
    shape: tuple[int, ...] | None  # None: any rank; -1: any size


@dataclasses.dataclass(frozen=True)
class Signature:
    name: str
    inputs: dict[str, Spec]
    outputs: dict[str, Spec]


@functools.cache
def dtypes() -> dict[int, np.dtype]:
    """TensorFlow's DataType codes and the numpy dtypes they stand for."""
    from tensorflow.core.framework import types_pb2

    return {
        types_pb2.DT_BOOL: np.dtype(bool),
        types_pb2.DT_UINT8: np.dtype(np.uint8),
        types_pb2.DT_INT8: np.dtype(np.int8),
        types_pb2.DT_INT16: np.dtype(np.int16),
        types_pb2.DT_INT32: np.dtype(np.int32),
        types_pb2.DT_INT64: np.dtype(np.int64),
        types_pb2.DT_HALF: np.dtype(np.float16),
        types_pb2.DT_FLOAT: np.dtype(np.float32),
        types_pb2.DT_DOUBLE: np.dtype(np.float64),
        types_pb2.DT_STRING: np.dtype(object),  # bytes items
    }


def signature_defs(folder: str | os.PathLike) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefMap of the `serve` graph, as TF Serving reads it."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((Path(folder) / SAVED_MODEL).read_bytes())
    graph = next(graph for graph in saved.meta_graphs if "serve" in graph.meta_info_def.tags)
    return dict(graph.signature_def)


def signatures(folder: str | os.PathLike) -> dict[str, Signature]:
    """The signatures that take inputs (TF's `__saved_model_init_op` takes none)."""
    return signatures_of(signature_defs(folder))


def signatures_of(definitions: Mapping[str, meta_graph_pb2.SignatureDef]) -> dict[str, Signature]:
    """`signatures`, from a SignatureDefMap already read."""
    return {name: Signature(name, _specs(definition.inputs), _specs(definition.outputs))
            for name, definition in definitions.items() if definition.inputs}


def _specs(tensors: Mapping[str, meta_graph_pb2.TensorInfo]) -> dict[str, Spec]:
    def shape(info: meta_graph_pb2.TensorInfo) -> tuple[int, ...] | None:
        return None if info.tensor_shape.unknown_rank else tuple(dim.size for dim in info.tensor_shape.dim)

    return {name: Spec(dtypes()[info.dtype], shape(info)) for name, info in sorted(tensors.items())}
