"""TF Serving's PredictionService (the `tensorflow-serving-api` stubs) over the same core,
so an existing TF Serving client switches to diptych without a changed line.

- `Predict` runs any served signature of either model (`serving_default` and
  `classify_pixels` of the classifier, `serving_default` and `generate_seeded` of the
  generator), checked against the SavedModel's real SignatureDefs, through the engine's
  batching; outputs keep the signature's names, `output_filter` picks some.
- `Classify` takes tf.Examples with an `image_bytes` bytes feature (an encoded image) and
  returns every class with its score, in the model's label order, as TF Serving does.
- `MultiInference` runs one classify task (the classifier's one signature), as `Classify`.
- `GetModelMetadata` returns the real SignatureDefMap from saved_model.pb.

Models are named and versioned as TF Serving reports them (the card's integer version),
and an unknown one is NOT_FOUND "Servable not found for request: Latest(name)".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from contract.signatures import dtypes

from .. import tensors, tfserving
from ..core import Engine, ServedModel, ValidationError
from ..core.validation import requested_version
from ..kinds import Classifier, Scores

SIGNATURE_DEF = "signature_def"  # the one metadata field TF Serving knows
CLASSIFY, REGRESS = "tensorflow/serving/classify", "tensorflow/serving/regress"  # MultiInference method names
DATA_TYPES = {dtype: code for code, dtype in dtypes().items()}


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def Predict(self, request: predict_pb2.PredictRequest,
                      context: grpc.aio.ServicerContext) -> predict_pb2.PredictResponse:
        model, spec = servable(self.engine, request.model_spec)
        inputs = arrays(request.inputs, self.engine.settings.max_body_bytes)
        outputs = await tensors.run(model, spec.signature_name, inputs, request.output_filter)
        return predicted(spec, outputs)

    async def Classify(self, request: classification_pb2.ClassificationRequest,
                       context: grpc.aio.ServicerContext) -> classification_pb2.ClassificationResponse:
        model, spec = servable(self.engine, request.model_spec, classify=True)
        result = await model.score(encoded_images(request.input))
        return classification_pb2.ClassificationResponse(model_spec=spec, result=classifications(result))

    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                               context: grpc.aio.ServicerContext) -> get_model_metadata_pb2.GetModelMetadataResponse:
        model, spec = servable(self.engine, request.model_spec)
        return metadata(model, spec, request.metadata_field)

    async def Regress(self, request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no regression model is served")

    async def MultiInference(self, request: inference_pb2.MultiInferenceRequest,
                             context: grpc.aio.ServicerContext) -> inference_pb2.MultiInferenceResponse:
        """TF Serving's rules: one model for all tasks, each signature once. The classifier has
        one signature to classify with, so a request is one classify task: Classify's answer."""
        model, spec = servable(self.engine, classify_task(request.tasks), classify=True)
        result = await model.score(encoded_images(request.input))
        return inference_pb2.MultiInferenceResponse(results=[
            inference_pb2.InferenceResult(model_spec=spec, classification_result=classifications(result))])


def servable(
    engine: Engine, spec: model_pb2.ModelSpec, classify: bool = False
) -> tuple[ServedModel, model_pb2.ModelSpec]:
    """The model version a ModelSpec names (its version, its label, or the latest), and the
    spec to answer with (version and signature filled in)."""
    if not spec.name:
        raise ValidationError("model_spec", "Missing ModelSpec")
    choice = spec.WhichOneof("version_choice")
    version = requested_version(spec.version.value, "model_spec.version") if choice == "version" else None
    model = tfserving.servable(engine, spec.name, version, spec.version_label if choice == "version_label" else None)
    signature = spec.signature_name or "serving_default"
    if classify and (not isinstance(model, Classifier) or signature != "serving_default"):
        raise ValidationError("model_spec", "Classify serves the classifier's serving_default signature; use Predict")
    answer = model_pb2.ModelSpec(name=spec.name, signature_name=signature)
    answer.version.value = tensors.version(model.info)
    return model, answer


def classify_task(tasks: Sequence[inference_pb2.InferenceTask]) -> model_pb2.ModelSpec:
    """The ModelSpec of a MultiInference request's only task, refused as TF Serving words it."""
    if not tasks:
        raise ValidationError("tasks", "MultiInferenceRequest must specify at least one task")
    if len({task.model_spec.name for task in tasks}) > 1:
        raise ValidationError("tasks", "All ModelSpecs in a MultiInferenceRequest must access the same model name")
    for i, task in enumerate(tasks):
        if task.method_name == REGRESS:
            raise ValidationError(f"tasks[{i}].method_name", "no regression signature is served")
        if task.method_name != CLASSIFY:
            raise ValidationError(f"tasks[{i}].method_name", f"Unsupported signature method_name: {task.method_name}")
    if len(tasks) > 1:
        raise ValidationError("tasks", "the classifier has one signature to classify with: send one task")
    return tasks[0].model_spec


def arrays(inputs: Mapping[str, tensor_pb2.TensorProto], max_values: int) -> dict[str, np.ndarray]:
    """The request's TensorProtos as arrays. A proto may declare a shape far larger than the
    values it carries (TF fills it with the last one), so the shape is bounded first: no
    tensor gets more values than the HTTP API lets a body have bytes."""
    result = {}
    for name, proto in inputs.items():
        shape = [dim.size for dim in proto.tensor_shape.dim]
        if any(size < 0 for size in shape) or math.prod(shape) > max_values:
            raise ValidationError(f"inputs.{name}", f"shape {shape}: sizes must be non-negative, with at most "
                                                    f"{max_values} values in all")
        try:
            result[name] = tf.make_ndarray(proto)
        except Exception as error:  # KeyError (unknown dtype), OverflowError (int_val out of range), ...
            raise ValidationError(f"inputs.{name}", f"not a valid TensorProto: {error!r}") from None
    return result


def predicted(spec: model_pb2.ModelSpec, outputs: Mapping[str, np.ndarray]) -> predict_pb2.PredictResponse:
    """Outputs as TensorProtos the way TF lays them out (raw little-endian bytes, or
    string_val), filled in place: tf.make_tensor_proto costs more than the whole call."""
    response = predict_pb2.PredictResponse(model_spec=spec)
    for name, value in outputs.items():
        proto = response.outputs[name]
        proto.dtype = DATA_TYPES[value.dtype]
        proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in value.shape)
        if value.dtype == object:
            proto.string_val.extend(value.ravel().tolist())
        else:
            proto.tensor_content = np.ascontiguousarray(value, value.dtype.newbyteorder("<")).tobytes()
    return response


def encoded_images(request: input_pb2.Input) -> list[bytes]:
    if request.WhichOneof("kind") != "example_list":
        raise ValidationError("input", "send an example_list of tf.Examples, each with an image_bytes feature")
    images = []
    for i, example in enumerate(request.example_list.examples):
        values = example.features.feature["image_bytes"].bytes_list.value
        if len(values) != 1:
            raise ValidationError(f"input.example_list.examples[{i}]",
                                  "needs one `image_bytes` bytes value (an encoded image)")
        images.append(values[0])
    return images


def classifications(result: Scores) -> classification_pb2.ClassificationResult:
    return classification_pb2.ClassificationResult(classifications=[
        classification_pb2.Classifications(classes=[
            classification_pb2.Class(label=label, score=score) for label, score in zip(result.labels, row.tolist())
        ])
        for row in result.scores
    ])


def metadata(
    model: ServedModel, spec: model_pb2.ModelSpec, fields: list[str]
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    if not fields:
        raise ValidationError("metadata_field", "GetModelMetadataRequest must specify at least one metadata_field")
    for field in fields:
        if field != SIGNATURE_DEF:
            raise ValidationError("metadata_field", f"Metadata field {field} is not supported")
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name, response.model_spec.version.value = spec.name, spec.version.value
    definitions = get_model_metadata_pb2.SignatureDefMap(signature_def=tensors.definitions(model))
    response.metadata[SIGNATURE_DEF].Pack(definitions)
    return response
