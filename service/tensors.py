"""The models' own signatures as tensor APIs: what TF Serving's Predict and the Open
Inference Protocol serve, whatever their wire format.

What each signature takes and returns comes from the SavedModel's real SignatureDefs, so
inputs are checked against them (names, dtypes, shapes) as TF Serving would. Every call
then runs through the `Engine` (its limits, checks and batching), never beside it. A
signature is run according to what it takes: encoded images (`image_bytes`) or pixels
(`images`) for the classifier, latent rows (`latents`, `class_ids`) or a seed (`seed`,
`count`, `class_id`) for the generator; its declared outputs are returned.

TensorFlow's protos are imported when first used, not with this module: `tensorflow.core`
loads all of TensorFlow, and the `bentoml serve` supervisor imports this module (through
the HTTP app) without ever running a model: ~0.5 GiB per pod for nothing.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .core import Engine, Scores, UnknownSignature, ValidationError
from .core.images import encode_png
from .core.models import ModelInfo, locate
from .core.validation import image_count

if TYPE_CHECKING:
    from tensorflow.core.protobuf import meta_graph_pb2


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


@dataclasses.dataclass(frozen=True)
class Spec:
    dtype: np.dtype
    shape: tuple[int, ...] | None  # None: any rank; -1: any size


@dataclasses.dataclass(frozen=True)
class Signature:
    name: str
    inputs: dict[str, Spec]
    outputs: dict[str, Spec]


def version(info: ModelInfo) -> int:
    """The model card's integer version, as TF Serving and the V2 protocol report it."""
    return int(info.card.get("version", info.version))


def signature_defs(info: ModelInfo) -> Mapping[str, meta_graph_pb2.SignatureDef]:
    """The SavedModel's SignatureDefMap, as TF Serving reads it from saved_model.pb."""
    return _read(info.source, info.name, info.version)[0]


def signature(info: ModelInfo, name: str) -> Signature:
    served = _read(info.source, info.name, info.version)[1]
    if name not in served:
        raise UnknownSignature("signature_name", f'Serving signature name: "{name}" not found in signature def; '
                                                 f"{info.kind} serves {sorted(served)}")
    return served[name]


@functools.cache
def _read(source: str, name: str, version: str) -> tuple[dict[str, meta_graph_pb2.SignatureDef], dict[str, Signature]]:
    """Once per model: its SignatureDefMap, and the signatures that take inputs."""
    from tensorflow.core.protobuf import saved_model_pb2

    ref = source if Path(source).is_dir() else f"{name}:{version}"
    saved = saved_model_pb2.SavedModel.FromString((Path(locate(ref)[0]) / "saved_model.pb").read_bytes())
    graph = next(graph for graph in saved.meta_graphs if "serve" in graph.meta_info_def.tags)
    definitions = dict(graph.signature_def)
    signatures = {key: Signature(key, _specs(definition.inputs), _specs(definition.outputs))
                  for key, definition in definitions.items() if definition.inputs}
    return definitions, signatures


def _specs(tensors: Mapping[str, meta_graph_pb2.TensorInfo]) -> dict[str, Spec]:
    def shape(info: meta_graph_pb2.TensorInfo) -> tuple[int, ...] | None:
        return None if info.tensor_shape.unknown_rank else tuple(dim.size for dim in info.tensor_shape.dim)

    return {name: Spec(dtypes()[info.dtype], shape(info)) for name, info in sorted(tensors.items())}


async def run(
    engine: Engine, info: ModelInfo, name: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Check `inputs` against signature `name`, run it, return `outputs` (all when empty)."""
    served = signature(info, name)
    check(served, inputs)
    runner = RUNNERS.get((info.kind, frozenset(served.inputs)))
    if runner is None:
        raise ValidationError("signature_name", f"signature {name!r} of the {info.kind} is not served")
    for output in outputs:
        if output not in served.outputs:
            raise ValidationError("outputs", f"output tensor alias not found in signature: {output}; "
                                             f"{name} returns {sorted(served.outputs)}")
    results = await runner(engine, **inputs)
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
    return "string" if dtype == object else dtype.name


# -- how each kind of signature runs through the engine ------------------------------------


async def _classify_encoded(engine: Engine, image_bytes: np.ndarray) -> dict[str, np.ndarray]:
    return _scored(await engine.score(image_bytes.tolist()))


async def _classify_pixels(engine: Engine, images: np.ndarray) -> dict[str, np.ndarray]:
    """Lossless PNG keeps the pixels exact, and joins the encoded images' batches."""
    if images.shape[-1] not in (1, 3):
        raise ValidationError("images", "images must have 1 (grey) or 3 (RGB) channels")
    if 0 in images.shape[1:3]:
        raise ValidationError("images", "the images have no pixels")
    return _scored(await engine.score([encode_png(image) for image in images]))


def _scored(result: Scores) -> dict[str, np.ndarray]:
    labels = np.array([label.encode() for label in result.labels], dtype=object)
    return {"scores": result.scores.astype(np.float32), "classes": np.tile(labels, (len(result.scores), 1))}


async def _render(engine: Engine, latents: np.ndarray, class_ids: np.ndarray) -> dict[str, np.ndarray]:
    return {"images": (await engine.render(latents, class_ids)).images}


async def _render_seeded(
    engine: Engine, seed: np.ndarray, count: np.ndarray, class_id: np.ndarray
) -> dict[str, np.ndarray]:
    """The latents the SavedModel's own graph draws: TensorFlow's stateless RNG keyed by the seed."""
    import tensorflow as tf

    generator = engine.generator
    count = image_count(int(count), engine.settings)
    classes = len(generator.classes) if generator.conditional else 1
    if not -1 <= int(class_id) < classes:
        raise ValidationError("class_id", f"must be -1 (cycle through the classes) or an id 0-{classes - 1}")
    key = tf.constant([int(seed), 0], tf.int64)
    latents = tf.random.stateless_normal([count, generator.latent_dim], seed=key).numpy()
    class_ids = np.arange(count) % classes if class_id < 0 else np.full(count, class_id)
    result = await engine.render(latents, class_ids.astype(np.int32))
    return {"images": result.images, "latents": result.latents, "class_ids": result.class_ids}


Runner = Callable[..., Awaitable[dict[str, np.ndarray]]]
RUNNERS: dict[tuple[str, frozenset[str]], Runner] = {
    ("classifier", frozenset({"image_bytes"})): _classify_encoded,
    ("classifier", frozenset({"images"})): _classify_pixels,
    ("generator", frozenset({"latents", "class_ids"})): _render,
    ("generator", frozenset({"seed", "count", "class_id"})): _render_seeded,
}
