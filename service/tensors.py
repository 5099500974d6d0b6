"""The models' own signatures as tensor APIs: what TF Serving's Predict and the Open
Inference Protocol serve, whatever their wire format.

What each signature takes and returns comes from the SavedModel's real SignatureDefs
(`contract.signatures`), read once when the version is loaded (`ServedModel.signatures`):
a request never reads the disk, so a version whose folder is gone still answers, and a
folder replaced at the same path cannot lend it another model's signatures. Inputs are checked against them (names, dtypes, shapes) as TF
Serving would. Each kind says which of its signatures it serves and runs them
(`ServedModel.tensor_runners`), through its batches and the engine's limits, never beside
them; the declared outputs are returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from contract.signatures import Signature

from .core import ModelInfo, ServedModel, UnknownSignature, ValidationError

if TYPE_CHECKING:
    from tensorflow.core.protobuf import meta_graph_pb2


def version(info: ModelInfo) -> int:
    """The served version's number (its folder's, or its store tag's), as TF Serving reports it."""
    return int(info.version)


def definitions(model: ServedModel) -> Mapping[str, meta_graph_pb2.SignatureDef]:
    """The SavedModel's SignatureDefMap, as TF Serving reads it from saved_model.pb: the
    model's own copy, read when it was loaded."""
    return model.signature_defs


def signature(model: ServedModel, name: str) -> Signature:
    if name not in model.signatures:
        raise UnknownSignature("signature_name", f'Serving signature name: "{name}" not found in signature def; '
                                                 f"{model.kind} serves {sorted(model.signatures)}")
    return model.signatures[name]


async def run(
    model: ServedModel, name: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Check `inputs` against signature `name` of `model`, run it there, return `outputs`
    (all when empty). `model` is the version the request was resolved to at the edge: it
    is never looked up again, so the version that computes is the one the answer names."""
    served = signature(model, name)
    check(served, inputs)
    runner = model.tensor_runner(frozenset(served.inputs))
    if runner is None:
        raise ValidationError("signature_name", f"signature {name!r} of the {model.kind} is not served")
    for output in outputs:
        if output not in served.outputs:
            raise ValidationError("outputs", f"output tensor alias not found in signature: {output}; "
                                             f"{name} returns {sorted(served.outputs)}")
    results = await runner(**inputs)
    return {key: results[key] for key in (outputs or served.outputs)}


def check(served: Signature, inputs: Mapping[str, np.ndarray]) -> None:
    if set(inputs) != set(served.inputs):
        raise ValidationError("inputs",
                              f"signature {served.name!r} takes {sorted(served.inputs)}, got {sorted(inputs)}")
    for name, spec in served.inputs.items():
        value = inputs[name]
        if value.dtype != spec.dtype:
            raise ValidationError(name, f"must be {_dtype_name(spec.dtype)}, got {_dtype_name(value.dtype)}")
        if spec.shape is not None and (
            value.ndim != len(spec.shape) or any(want not in (-1, got) for want, got in zip(spec.shape, value.shape))
        ):
            raise ValidationError(name, f"has shape {list(value.shape)}; the signature takes {list(spec.shape)} "
                                        "(-1: any size)")


def _dtype_name(dtype: np.dtype) -> str:
    return "string" if dtype.kind == "O" else dtype.name
