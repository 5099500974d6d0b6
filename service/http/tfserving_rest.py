"""TF Serving's REST API (its g3doc/api_rest.md), what most TF Serving clients call:

    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    row ("instances") or columnar ("inputs")
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:classify   tf.Examples with an image_bytes feature
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            the versions' status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   the SignatureDefMap

Binary values travel as `{"b64": "..."}`; string outputs come back as text, or as `{"b64":
...}` when their name ends in `_bytes` or they are not UTF-8, as TF Serving answers. Errors
are TF Serving's `{"error": "..."}` (with the service's `detail` beside it). Every call runs
through the same signatures, checks and batches as TF Serving's gRPC Predict.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import tensors, tfserving
from ..core import ServedModel, ValidationError
from ..core.validation import json_document, requested_version
from ..kinds import Classifier
from .api import engine, model_headers
from .errors import errors


def model_of(request: Request) -> ServedModel:
    """The version the path names (its version, its label, or the latest): resolved once,
    it computes the answer, and its headers name it."""
    params = request.path_params
    return tfserving.servable(engine(), params["name"], path_version(request), params.get("label"))


def path_version(request: Request) -> int | None:
    version = request.path_params.get("version")
    return None if version is None else requested_version(version, "version")


@errors
async def predict(request: Request) -> Response:
    model, body = model_of(request), _json(await request.body())
    signature = tensors.signature(model, body.get("signature_name") or "serving_default")
    row = "instances" in body
    if row == ("inputs" in body):
        raise ValidationError("body", "send either `instances` (row format) or `inputs` (columnar format)")
    inputs = _row_inputs(body["instances"], signature) if row else _columnar_inputs(body["inputs"], signature)
    outputs = await tensors.run(model, signature.name, inputs)
    if row:
        rows = [{name: _json_value(name, np.asarray(value[i], dtype=value.dtype)) for name, value in outputs.items()}
                for i in range(len(next(iter(outputs.values()))))]
        return answer({"predictions": [next(iter(r.values())) if len(r) == 1 else r for r in rows]}, model)
    values = {name: _json_value(name, value) for name, value in outputs.items()}
    return answer({"outputs": next(iter(values.values())) if len(values) == 1 else values}, model)


@errors
async def classify(request: Request) -> Response:
    model, body = model_of(request), _json(await request.body())
    if not isinstance(model, Classifier):
        raise ValidationError("model", f"{model.info.name} is a {model.kind}: :classify needs a classifier")
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise ValidationError("examples", "send a list of examples, each {\"image_bytes\": {\"b64\": ...}}")
    images = [_binary(f"examples[{i}].image_bytes", example.get("image_bytes") if isinstance(example, dict) else None)
              for i, example in enumerate(examples)]
    result = await model.score(images)
    return answer({"results": [[[label, score] for label, score in zip(result.labels, row.tolist())]
                               for row in result.scores]}, model)


def answer(body: dict[str, Any], model: ServedModel) -> Response:
    """TF Serving's body, with the headers of the diptych API naming the version that computed it
    (TF Serving's REST answers name none)."""
    return JSONResponse(body, headers=model_headers(model.info))


@errors
async def status(request: Request) -> Response:
    params = request.path_params
    found = tfserving.version_status(engine(), params["name"], path_version(request), params.get("label"))
    return JSONResponse({"model_version_status": [
        {"version": str(number), "state": state, "status": {"error_code": "UNKNOWN" if reason else "OK",
                                                            "error_message": reason}}
        for number, state, reason in found]})


@errors
async def metadata(request: Request) -> Response:
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    model = model_of(request)
    definitions = get_model_metadata_pb2.SignatureDefMap(signature_def=tensors.definitions(model))
    return JSONResponse({"model_spec": {"name": model.info.name, "signature_name": "", "version": model.info.version},
                         "metadata": {"signature_def": json_format.MessageToDict(definitions)}})


def _json(body: bytes) -> dict[str, Any]:
    parsed = json_document(body)
    if not isinstance(parsed, dict):
        raise ValidationError("body", "send a JSON object")
    return parsed


def _row_inputs(instances: Any, signature: tensors.Signature) -> dict[str, np.ndarray]:
    """Row format: one instance per item, each a value (one input) or an object by input name."""
    if not isinstance(instances, list) or not instances:
        raise ValidationError("instances", "a non-empty list")
    names = list(signature.inputs)
    if len(names) == 1 and not (isinstance(instances[0], dict) and "b64" not in instances[0]):
        return {names[0]: _array(names[0], instances, signature)}
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict) or set(instance) != set(names):
            raise ValidationError(f"instances[{i}]", f"an object with the inputs {names}")
    return {name: _array(name, [instance[name] for instance in instances], signature) for name in names}


def _columnar_inputs(inputs: Any, signature: tensors.Signature) -> dict[str, np.ndarray]:
    names = list(signature.inputs)
    if not isinstance(inputs, dict) or "b64" in inputs:
        inputs = {names[0]: inputs} if len(names) == 1 else inputs
    if not isinstance(inputs, dict) or set(inputs) != set(names):
        raise ValidationError("inputs", f"an object with the inputs {names}")
    return {name: _array(name, value, signature) for name, value in inputs.items()}


def _array(name: str, value: Any, signature: tensors.Signature) -> np.ndarray:
    """A JSON value as the input's dtype: `{"b64": ...}` or text for strings, numbers else."""
    dtype = signature.inputs[name].dtype
    if dtype.kind == "O":  # strings (TensorFlow DT_STRING)
        flat = np.array(value, dtype=object)
        return np.vectorize(lambda item: _binary(name, item), otypes=[object])(flat) if flat.size else flat
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError(name, f"expected numbers for a {dtype.name} tensor") from None
    if dtype.kind in "iu" and not np.all(np.mod(array, 1) == 0):
        raise ValidationError(name, f"expected integers for a {dtype.name} tensor")
    return array.astype(dtype)


def _binary(field: str, value: Any) -> bytes:
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise ValidationError(field, "not valid base64") from None
    if isinstance(value, str):
        return value.encode()
    raise ValidationError(field, "a string, or {\"b64\": \"...\"} for binary data")


def _json_value(name: str, value: np.ndarray) -> Any:
    if value.dtype != object:
        return value.tolist()
    return np.vectorize(lambda item: _text(name, item), otypes=[object])(value).tolist()


def _text(name: str, item: bytes) -> Any:
    if not name.endswith("_bytes"):
        try:
            return item.decode()
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(item).decode()}
