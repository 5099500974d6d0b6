"""Fuzzing (docs/reliability.md): bad input always gets a clear client error, never a crash,
a hang or a 5xx.

- In process, thousands of examples (hypothesis, derandomized): image decoding (random
  bytes, mutated real images of six formats, extreme dimensions) and request parsing (the
  HTTP bodies, the Open Inference Protocol's REST and gRPC requests), through the same core
  checks the engine runs.
- Over real HTTP against `bentoml serve` (the session's open server): schemathesis against
  the service's own OpenAPI (`/docs.json`), every check but positive_data_acceptance (valid
  per the schema is not valid per the models: a latent's width, a class name); and a smaller
  hypothesis run of raw bodies, content types and multipart uploads.
- Over real gRPC: valid requests of every method of every servicer, mutated byte by byte and
  field by field, sent as raw bytes; the answer is OK or a client error, and the server
  still answers afterwards.
- The paths and bodies of TF Serving's REST API, the Open Inference Protocol's REST routes
  and the model repository's control routes: tests/test_fuzz_routes.py.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import grpc
import httpx
import numpy as np
import pydantic
import pytest
import skimage.data
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

# The Open Inference Protocol's messages as tritonclient ships them (wire-compatible with
# proto/inference): ours would clash with them in protobuf's one descriptor pool (the same
# `inference` package), and tests/test_v2.py imports tritonclient into this process.
from tritonclient.grpc import service_pb2 as v2_pb

from proto.diptych.v1 import diptych_pb2 as pb
from service import http, v2
from service.core import LimitExceeded, ServiceError, Settings, ValidationError
from service.core.images import decode, prepare
from service.http import errors as http_errors
from service.kinds import Classifier, Generator
from tests.conftest import Server, eventually, toy_model
from tests.grpc_clients import health
from tests.reliability import metric

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning:PIL")]  # Pillow on broken files
Code = grpc.StatusCode
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
DEFAULTS = Settings()
# The kinds' own request checks, over a runtime that computes nothing (daemon batch threads).
GENERATOR = toy_model(Generator, latent_dim=8, classes=[f"class {i}" for i in range(10)] + ["7x"], conditional=True)
CLASSIFIER = toy_model(Classifier, labels=GENERATOR.classes)


@pytest.fixture(scope="module")
def server(grpc_servers) -> Server:
    return grpc_servers[0]


def encoded(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


PHOTO = skimage.data.chelsea()[::6, ::6]
IMAGES = [encoded(PHOTO, fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")] + [
    encoded(PHOTO[..., 0], "PNG"), encoded(PHOTO, "JPEG", progressive=True), encoded(PHOTO, "PNG", optimize=True)]


@st.composite
def mutated_images(draw) -> bytes:
    """A real image file with bytes flipped, overwritten, inserted, deleted, or truncated."""
    data = bytearray(draw(st.sampled_from(IMAGES)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(["set", "truncate", "insert", "delete"]))
        if operation == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif operation == "truncate":
            del data[at:]
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 256))]
    return bytes(data)


def check_image(data: bytes, max_pixels: int = DEFAULTS.max_pixels) -> str:
    """The service's two steps for one image: a ValidationError, or the model's pixels."""
    try:
        prepare(data, "images[0]", max_pixels)
        pixels = decode(data, 32, "images[0]")
    except ValidationError as error:
        assert error.field == "images[0]" and error.problem
        return "refused"
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    return "decoded"


# -- in process: image bytes ------------------------------------------------------------------


@settings(FUZZ, max_examples=1000)
@given(st.one_of(st.binary(max_size=512), mutated_images()))
def test_image_bytes_decode_or_are_refused(data):
    check_image(data)


def png(width: int, height: int, pixels: bytes) -> bytes:
    """A PNG whose header declares any size (8-bit grey), with `pixels` compressed as its data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixels))
            + chunk(b"IEND", b""))


@settings(FUZZ, max_examples=200)
@given(width=st.integers(0, 2**31 - 1), height=st.integers(0, 2**31 - 1), pixels=st.sampled_from([b"", bytes(64)]))
def test_extreme_declared_dimensions_are_refused_before_decoding(width, height, pixels):
    """Bombs and nonsense sizes: over the limit is LimitExceeded, from the header alone."""
    data = png(width, height, pixels)
    if width * height > DEFAULTS.max_pixels:
        with pytest.raises(LimitExceeded):
            prepare(data, "images[0]", DEFAULTS.max_pixels)
    else:
        check_image(data)


# Every mode crossed with every format: Pillow stores each of these pairs (converting where
# the format needs it, as GIF does RGB), so none may be skipped.
SAVABLE = [(mode, fmt) for mode in ("1", "L", "RGB", "RGBA", "P", "I;16") for fmt in ("PNG", "TIFF", "GIF")]


@pytest.mark.parametrize(("mode", "fmt"), SAVABLE)
@settings(FUZZ, max_examples=3)
@given(long=st.integers(1, 40_000), short=st.integers(1, 3), tall=st.booleans())
def test_extreme_aspect_ratios_decode(mode, fmt, long, short, tall):
    size = (short, long) if tall else (long, short)
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=fmt)
    assert check_image(buffer.getvalue()) == "decoded"


def test_checking_a_broken_file_says_nothing_on_the_side():
    """Regression: `prepare` let Pillow's warnings about a broken file through, to the worker's log."""
    tiff = IMAGES[5]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_image(tiff[:8] + tiff[4008:]) == "refused"
    assert not caught, [str(warning.message) for warning in caught]


# -- in process: request parsing, then the core's checks ---------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
FIELDS = ["images", "top_k", "count", "seed", "class", "latents", "format", "seeds", "steps", "class_"]
GOOD_VALUES = st.sampled_from([
    0, 1, 2, 5, 7, 11, 64, 65, -1, 2**32 - 1, 2**32, "7", " 7 ", "\u00b2", "\u0661", "7x", "class 3", "png", "grid",
    "json", [1, 2], [[0.5] * 8], [[0.5] * 8, [1.0] * 8], [[float("nan")] * 8], [[0.5] * 7], [], [""],
    [base64.b64encode(IMAGES[0]).decode()], ["not base64!"], None,
])


@st.composite
def bodies(draw) -> bytes:
    """Request bodies: JSON objects of the APIs' field names with odd values, or any JSON, or bytes."""
    kind = draw(st.sampled_from(["fields", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    names = draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True))
    return json.dumps({name: draw(st.one_of(GOOD_VALUES, JSON)) for name in names}, allow_nan=True).encode()


@settings(FUZZ, max_examples=600)
@given(model=st.sampled_from([http.ClassifyRequest, http.GenerateRequest, http.InterpolateRequest]), body=bodies())
def test_request_bodies_parse_and_check_or_are_refused(model, body):
    """What `Body.from_http_request` parses, then what the engine checks before any model runs."""
    try:
        request = model.model_validate_json(body)
    except pydantic.ValidationError:
        return  # BentoML answers 400 with pydantic's errors
    try:
        if isinstance(request, http.ClassifyRequest):
            CLASSIFIER.check_top_k(request.top_k)
            items = CLASSIFIER.checked(request.images)
            assert len(items) == len(request.images)
        elif isinstance(request, http.GenerateRequest):
            request.check_format()
            plan = GENERATOR.plan(request.count, request.seed, request.class_, request.latents)
            assert plan.latents.shape == (len(plan.class_ids), GENERATOR.latent_dim) and np.isfinite(plan.latents).all()
            assert 1 <= len(plan.class_ids) <= DEFAULTS.max_generate
        else:
            plan = GENERATOR.plan_interpolation(request.seeds, request.latents, request.steps, request.class_)
            assert plan.latents.shape == (request.steps, GENERATOR.latent_dim) and np.isfinite(plan.latents).all()
    except ServiceError as error:  # a client error only: Unavailable or DeadlineExceeded (5xx) would be a bug here
        assert 400 <= http_status(error) < 500 and str(error), (type(error).__name__, str(error))


def http_status(error: ServiceError) -> int:
    """The status the HTTP adapter answers `error` with (its one table)."""
    return next(code for kind, code in http_errors.STATUS.items() if isinstance(error, kind))


V2_DATATYPES = ["BYTES", "FP32", "INT32", "UINT8", "FP16", "BOOL", "INT64", "FP64", "bogus", ""]


@st.composite
def v2_tensors(draw) -> dict:
    tensor = {"name": draw(st.sampled_from(["image_bytes", "latents", "class_ids", "x"])),
              "datatype": draw(st.sampled_from(V2_DATATYPES)),
              "shape": draw(st.lists(st.one_of(st.integers(-2, 3), st.integers(-2**63, 2**63 - 1)), max_size=4))}
    if draw(st.booleans()):
        tensor["data"] = draw(st.one_of(JSON, st.lists(st.one_of(st.floats(), st.integers(-2**70, 2**70)), max_size=8)))
    if draw(st.booleans()):
        tensor["parameters"] = draw(st.dictionaries(
            st.sampled_from(["binary_data_size", "content_type", "other"]),
            st.one_of(st.integers(-5, 100), st.sampled_from(["base64", True, None]), JSON), max_size=2))
    return tensor


@settings(FUZZ, max_examples=500)
@given(head=st.one_of(st.fixed_dictionaries({"inputs": st.lists(v2_tensors(), max_size=3)},
                                            optional={"id": JSON, "parameters": JSON, "outputs": JSON}), JSON),
       binary=st.binary(max_size=40), length=st.one_of(st.none(), st.sampled_from(["", "0", "5", "\u00b2", "x", "99"])),
       split=st.booleans())
def test_v2_rest_requests_parse_or_are_refused(head, binary, length, split):
    body = json.dumps(head).encode()
    header = str(len(body)) if split and length is None else length
    try:
        request, binary_output = http.v2_request(body + binary, header, "classifier")
    except ValidationError as error:
        assert error.field and error.problem
        return
    for array in request.inputs.values():
        assert isinstance(array, np.ndarray)
    assert all(isinstance(binary_output(name), bool) for name in ("scores", "classes"))


# -- field-level protobuf mutation (in process and over the wire) ------------------------------

EDGE_INTS = [0, 1, -1, 2, 7, 255, 256, 65535, 2**31 - 1, -2**31, 2**32 - 1, 2**53, 2**63 - 1, -2**63, 10**9, 10**12]
EDGE_FLOATS = [0.0, -0.0, 1.0, -1.0, 3.4e38, -3.4e38, float("nan"), float("inf"), float("-inf"), 1e-45]
EDGE_STRINGS = ["", "classifier", "generator", "serving_default", "generate_seeded", "classify_pixels",
                "image_bytes", "images", "latents", "class_ids", "seed", "count", "class_id", "scores", "signature_def",
                "BYTES", "FP32", "INT32", "UINT8", "FP16", "1", "-1", "Sneaker", "\u00b2", "x" * 300]
RANGES = {
    FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-2**63, 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def edge_value(rng: random.Random, field: FieldDescriptor):
    if field.type in RANGES:
        low, high = RANGES[field.type]
        return min(high, max(low, rng.choice(EDGE_INTS)))
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return rng.choice(EDGE_FLOATS)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if field.type == FieldDescriptor.TYPE_ENUM:
        return rng.choice([value.number for value in field.enum_type.values] + [rng.randrange(-3, 200)])
    if field.type == FieldDescriptor.TYPE_STRING:
        return rng.choice(EDGE_STRINGS)
    return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 4, 8, 64])))


def mutate_fields(rng: random.Random, message, depth: int = 0) -> None:
    """Change one to three fields somewhere in `message`, in place: edge values, repeated
    fields grown, shrunk or emptied, map entries changed or dropped, nested messages."""
    fields = message.DESCRIPTOR.fields
    for _ in range(rng.randint(1, 3) if fields else 0):
        field = rng.choice(fields)
        value = getattr(message, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name["value"]
            if value and rng.random() < 0.7:
                key = rng.choice(list(value))
                if entry.type == FieldDescriptor.TYPE_MESSAGE:
                    mutate_fields(rng, value[key], depth + 1) if depth < 6 else None
                else:
                    value[key] = edge_value(rng, entry)
            elif value:
                del value[rng.choice(list(value))]
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.is_repeated:
            if len(value) and rng.random() < 0.6 and depth < 6:
                mutate_fields(rng, value[rng.randrange(len(value))], depth + 1)
            elif len(value) and rng.random() < 0.5:
                del value[rng.randrange(len(value))]
            else:
                added = value.add()
                if len(value) > 1:
                    added.CopyFrom(value[0])
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth < 6:
                mutate_fields(rng, value, depth + 1)
        elif field.is_repeated:
            roll = rng.random()
            if roll < 0.3 and len(value):
                value[rng.randrange(len(value))] = edge_value(rng, field)
            elif roll < 0.5 and len(value):
                del value[rng.randrange(len(value)):]
            elif roll < 0.8:
                value.extend(edge_value(rng, field) for _ in range(rng.choice([1, 2, 5])))
            else:
                del value[:]
        else:
            setattr(message, field.name, edge_value(rng, field))


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """Bits flipped, bytes overwritten, inserted, deleted, duplicated, or the tail cut."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data) + 1)
        operation = rng.randrange(6)
        if operation == 0 and at < len(data):
            data[at] ^= 1 << rng.randrange(8)
        elif operation == 1 and at < len(data):
            data[at] = rng.randrange(256)
        elif operation == 2:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif operation == 3:
            del data[at : at + rng.randint(1, 16)]
        elif operation == 4:
            del data[at:]
        elif data:
            start = rng.randrange(len(data))
            data[at:at] = data[start : start + rng.randint(1, 32)]
    return bytes(data)


PNG = IMAGES[0]


def tensor(dtype: int, shape: list[int], **values) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **values)
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape)
    return proto


def predict_request(model: str, signature: str = "", **inputs: tensor_pb2.TensorProto) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model, signature
    for name, proto in inputs.items():
        request.inputs[name].CopyFrom(proto)
    return request


def classification_request() -> classification_pb2.ClassificationRequest:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "classifier"
    request.input.example_list.examples.add().features.feature["image_bytes"].bytes_list.value.append(PNG)
    return request


def multi_inference_request() -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest(input=classification_request().input)
    request.tasks.add(method_name="tensorflow/serving/classify").model_spec.name = "classifier"
    return request


def metadata_request(name: str) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = name
    return request


def infer_requests() -> list[v2_pb.ModelInferRequest]:
    encoded_images = v2_pb.ModelInferRequest(model_name="classifier", id="1")
    encoded_images.inputs.add(name="image_bytes", datatype="BYTES", shape=[1]).contents.bytes_contents.append(PNG)
    latents = v2_pb.ModelInferRequest(model_name="generator", model_version="1")
    latents.inputs.add(name="latents", datatype="FP32", shape=[2, 64])
    latents.inputs.add(name="class_ids", datatype="INT32", shape=[2])
    latents.raw_input_contents.extend([np.zeros((2, 64), "<f4").tobytes(), np.array([3, 9], "<i4").tobytes()])
    latents.outputs.add(name="images")
    typed = v2_pb.ModelInferRequest(model_name="generator")
    typed.inputs.add(name="latents", datatype="FP32", shape=[1, 64]).contents.fp32_contents.extend([0.5] * 64)
    typed.inputs.add(name="class_ids", datatype="INT32", shape=[1]).contents.int_contents.append(7)
    return [encoded_images, latents, typed]


VALID = {  # every unary method of every servicer: valid requests to mutate
    "/diptych.v1.Diptych/Classify": [pb.ClassifyRequest(images=[PNG, IMAGES[1]], top_k=3)],
    "/diptych.v1.Diptych/Generate": [
        pb.GenerateRequest(seed=7, count=2, class_name="Sneaker", format=pb.FORMAT_GRID),
        pb.GenerateRequest(latents=[pb.Latent(values=[0.5] * 64)], class_id=2)],
    "/diptych.v1.Diptych/ListModels": [pb.ListModelsRequest()],
    "/tensorflow.serving.PredictionService/Predict": [
        predict_request("classifier", image_bytes=tensor(types_pb2.DT_STRING, [1], string_val=[PNG])),
        predict_request("classifier", "classify_pixels",
                        images=tensor(types_pb2.DT_UINT8, [1, 28, 28, 1], tensor_content=bytes(784))),
        predict_request("generator", latents=tensor(types_pb2.DT_FLOAT, [2, 64], float_val=[0.5] * 128),
                        class_ids=tensor(types_pb2.DT_INT32, [2], int_val=[1, 2])),
        predict_request("generator", "generate_seeded", seed=tensor(types_pb2.DT_INT64, [], int64_val=[3]),
                        count=tensor(types_pb2.DT_INT32, [], int_val=[2]),
                        class_id=tensor(types_pb2.DT_INT32, [], int_val=[-1]))],
    "/tensorflow.serving.PredictionService/Classify": [classification_request()],
    "/tensorflow.serving.PredictionService/GetModelMetadata": [metadata_request("classifier"),
                                                               metadata_request("generator")],
    "/tensorflow.serving.PredictionService/Regress": [regression_pb2.RegressionRequest()],
    "/tensorflow.serving.PredictionService/MultiInference": [multi_inference_request()],
    "/inference.GRPCInferenceService/ServerLive": [v2_pb.ServerLiveRequest()],
    "/inference.GRPCInferenceService/ServerReady": [v2_pb.ServerReadyRequest()],
    "/inference.GRPCInferenceService/ModelReady": [v2_pb.ModelReadyRequest(name="classifier", version="1")],
    "/inference.GRPCInferenceService/ServerMetadata": [v2_pb.ServerMetadataRequest()],
    "/inference.GRPCInferenceService/ModelMetadata": [v2_pb.ModelMetadataRequest(name="generator")],
    "/inference.GRPCInferenceService/ModelInfer": infer_requests(),
    "/grpc.health.v1.Health/Check": [health_pb2.HealthCheckRequest(service="diptych.v1.Diptych")],
}
# What a mutant of each method may be answered: OK or a client error that method gives
# (docs/serving.md). FAILED_PRECONDITION is TF Serving's answer to an unknown signature,
# which only Predict names; UNIMPLEMENTED is Regress's one answer to a parsed request (no
# model regresses), and no other method's. A valid request is OK, but for Regress.
ANSWERS = {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND}
REGRESS, PREDICT = "/tensorflow.serving.PredictionService/Regress", "/tensorflow.serving.PredictionService/Predict"
ACCEPTED = {method: ANSWERS for method in VALID} | {PREDICT: ANSWERS | {Code.FAILED_PRECONDITION},
                                                    REGRESS: {Code.INVALID_ARGUMENT, Code.UNIMPLEMENTED}}
VALID_ANSWER = {REGRESS: Code.UNIMPLEMENTED}  # else OK
MUTANTS = 250  # per method, byte-level and field-level each


def mutants(method: str) -> list[tuple[str, bytes]]:
    """MUTANTS byte-level and MUTANTS field-level mutants of the method's valid requests, seeded."""
    seeds, rng, found = VALID[method], random.Random(method), []
    for i in range(MUTANTS):
        original = seeds[i % len(seeds)]
        found.append((f"bytes #{i}", mutate_bytes(rng, original.SerializeToString())))
        message = type(original)()
        message.CopyFrom(original)
        mutate_fields(rng, message)
        found.append((f"fields #{i}", message.SerializeToString()))
    return found


@pytest.mark.parametrize("method", list(VALID))
def test_mutated_grpc_requests_get_ok_or_a_client_error(server, method):
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary(method)  # raw bytes in and out: no serializer
        wrong = []
        for name, data in mutants(method):
            code, details = grpc_answer(call, data)
            if code not in ACCEPTED[method]:
                wrong.append(f"{name} ({len(data)} bytes: {data[:48].hex()}...): {code.name} {details}")
            elif code == Code.INVALID_ARGUMENT:
                assert details, f"{name}: INVALID_ARGUMENT without a message"
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING
        for original in VALID[method]:
            assert grpc_answer(call, original.SerializeToString())[0] == VALID_ANSWER.get(method, Code.OK), original
    assert not wrong, "\n".join(wrong[:10])


def grpc_answer(call: grpc.UnaryUnaryMultiCallable, data: bytes) -> tuple[grpc.StatusCode, str]:
    try:
        call(data, timeout=30)
        return Code.OK, ""
    except grpc.RpcError as error:
        return error.code(), error.details()


@pytest.mark.parametrize("proto", [
    tensor(121, [1], string_val=[PNG]),  # no such DataType
    tensor(types_pb2.DT_INT16, [2], int_val=[2**31 - 1, 1]),  # out of the dtype's range
    tensor(types_pb2.DT_FLOAT, [10**12], float_val=[1.0]),  # 40 bytes declaring 4 TB
], ids=["unknown-dtype", "int16-overflow", "huge-shape"])
def test_tf_serving_refuses_tensor_protos_it_cannot_read(server, proto):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(predict_request("classifier", image_bytes=proto), timeout=30)
    assert refused.value.code() == Code.INVALID_ARGUMENT, refused.value.details()


def test_corrupt_protobuf_is_invalid_argument_on_every_method(server):
    """Regression: bytes that are no protobuf message used to get UNKNOWN ("Unexpected DecodeError")."""
    with grpc.insecure_channel(server.grpc_target) as channel:
        for method in VALID:
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary(method)(b"\xff\xff\xff", timeout=30)
            error = refused.value
            assert error.code() == Code.INVALID_ARGUMENT, (method, error.code(), error.details())
            assert error.details().startswith("request: not a valid protobuf message"), error.details()


# -- regressions: what the fuzzing found, over the wire -----------------------------------------


def test_digits_int_cannot_read_are_a_client_error(server):
    """Regression: "²" passes `str.isdigit()`, then `int()` raised: HTTP 500, gRPC UNKNOWN."""
    answers = [
        server.client.post("/generate", json={"class": "\u00b2"}),
        server.client.post("/interpolate", json={"seeds": [1, 2], "class": "\u00b2"}),
        server.client.post("/classify", files=[("images", ("a.png", PNG))], data={"top_k": "\u00b2"}),
        server.client.post("/v2/models/classifier/infer", content=b'{"inputs": []}',
                           headers={"inference-header-content-length": b"\xb2"}),
    ]
    for answer, field in zip(answers, ("class", "class", "top_k", "inputs")):
        assert answer.status_code == 400, answer.text
        assert answer.json()["detail"][0]["loc"][0] == field, answer.text
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary("/diptych.v1.Diptych/Generate")(
                pb.GenerateRequest(class_name="\u00b2").SerializeToString(), timeout=30)
    assert refused.value.code() == Code.INVALID_ARGUMENT and refused.value.details().startswith("class: unknown class")


def test_a_tensor_of_no_values_with_a_huge_dimension_is_refused(server):
    """Regression: shape [0, 2**62] has the 0 values it declares, then numpy refused the reshape: 500 / UNKNOWN."""
    body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [0, 2**62], "data": []}]}
    answer = server.client.post("/v2/models/classifier/infer", json=body)
    assert answer.status_code == 400 and answer.json()["error"].startswith("inputs[0].shape: "), answer.text
    request = v2_pb.ModelInferRequest(model_name="generator")
    request.inputs.add(name="latents", datatype="FP32", shape=[0, 2**62])
    request.inputs.add(name="class_ids", datatype="INT32", shape=[0])
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(request.SerializeToString(), timeout=30)
    assert refused.value.code() == Code.INVALID_ARGUMENT, refused.value.details()
    assert refused.value.details().startswith("inputs[0].shape: ")


# -- over HTTP: schemathesis against /docs.json, and hypothesis --------------------------------


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server, tmp_path):
    """Every operation of the OpenAPI: coverage (boundary and invalid values) and fuzzing
    phases, deterministic; checks: no 5xx, status codes, content types, headers and bodies
    as documented, schema-invalid requests refused."""
    report = tmp_path / "junit.xml"
    run = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run", f"{server.url}/docs.json",
         "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--max-examples", "40",
         "--phases", "coverage,fuzzing", "--generation-deterministic", "--workers", "1", "--request-timeout", "30",
         "--continue-on-failure", "--no-color", "--report", "junit", "--report-junit-path", str(report)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its cache too: every run starts afresh
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert generated and generated.group(1) == generated.group(2) and int(generated.group(1)) > 300, run.stdout[-2000:]
    assert 'failures="0"' in report.read_text() and 'errors="0"' in report.read_text()


def test_the_openapi_documents_what_the_service_answers(server):
    """Regression: BentoML's document said errors carry a string `detail`, /generate answers
    JSON only and `seed` is never null; the service's answers said otherwise."""
    spec = server.client.get("/docs.json").json()
    generate = spec["paths"]["/generate"]["post"]
    assert set(generate["responses"]["200"]["content"]) == {"application/json", "image/png"}
    assert {"400", "401", "413", "503", "504"} <= set(generate["responses"])
    assert spec["components"]["schemas"]["Error"]["properties"]["detail"]["type"] == "array"
    assert spec["components"]["schemas"]["GenerateResponse"]["properties"]["seed"]["nullable"] is True
    assert "multipart/form-data" in spec["paths"]["/classify"]["post"]["requestBody"]["content"]
    assert {"/models", "/models/{name}", "/v2/models/{name}/infer"} <= set(spec["paths"])


CONTENT_TYPES = ["application/json", "text/plain", "", "multipart/form-data; boundary=xyz", "multipart/form-data",
                 "application/json; charset=latin-1", "application/x-www-form-urlencoded"]
ROUTES = ["/classify", "/generate", "/interpolate", "/v2/models/classifier/infer", "/v2/models/generator/infer"]


def assert_client_error(answer: httpx.Response) -> None:
    assert answer.status_code < 500, (answer.status_code, answer.text[:500])
    if answer.status_code >= 400:
        assert answer.headers["content-type"].startswith("application/json"), answer.headers
        assert answer.json()["error"], answer.text


@settings(FUZZ, max_examples=400)
@given(route=st.sampled_from(ROUTES), body=st.one_of(bodies(), mutated_images()),
       content_type=st.sampled_from(CONTENT_TYPES),
       header_length=st.one_of(st.none(), st.sampled_from(["0", "7", "\u00b2", "99999999999999999999"])))
def test_raw_http_bodies_get_a_client_error(server, route, body, content_type, header_length):
    headers = {"content-type": content_type}
    if header_length is not None:
        headers["inference-header-content-length"] = header_length
    answer = server.client.post(route, content=body, headers={k: v.encode("latin-1") for k, v in headers.items()},
                                timeout=30)
    assert_client_error(answer)


@settings(FUZZ, max_examples=200)
@given(parts=st.lists(st.tuples(st.sampled_from(["images", "top_k", "images", "other", ""]),
                                st.one_of(st.none(), st.sampled_from(["a.png", "", "x" * 200, "\u00e9.jpg"])),
                                st.one_of(mutated_images(), st.sampled_from(IMAGES), st.binary(max_size=64),
                                          st.sampled_from([b"3", b"\xc2\xb2", b" 10 ", b"-1", b"99"]))),
                      max_size=4))
def test_multipart_uploads_get_an_answer_or_a_client_error(server, parts):
    files = [(name, (filename, data)) for name, filename, data in parts if filename is not None]
    fields: dict[str, list[str]] = {}
    for name, filename, data in parts:
        if filename is None:
            fields.setdefault(name, []).append(data.decode("utf-8", "replace"))
    if not files:  # httpx sends a multipart body only with at least one file
        files = [("images", ("empty.png", b""))]
    answer = server.client.post("/classify", files=files, data=fields, timeout=30)
    assert_client_error(answer)


def test_the_server_is_sound_after_the_fuzzing(server):
    assert eventually(lambda: metric(server, "diptych_requests_in_flight") == 0)
    assert server.client.get("/readyz").status_code == 200
    assert server.client.post("/generate", json={"seed": 1}).status_code == 200


@pytest.mark.parametrize("datatype, data", [
    ("INT32", [1.7]),  # was read as 1
    ("INT8", [300]),  # was read as 44
    ("UINT8", [-1]),  # was read as 255
    ("BOOL", [2]),
    ("FP16", [1e10]),  # was read as inf
])
def test_v2_json_values_the_datatype_cannot_hold_are_refused(datatype, data):
    """Regression: JSON tensor values were cast to the datatype whatever they were."""
    with pytest.raises(ValidationError, match="out of the datatype's range") as refused:
        v2.tensor("inputs[0]", datatype, [1], data)
    assert refused.value.field == "inputs[0].data"
    assert v2.tensor("inputs[0]", datatype, [1], [1]).tolist() == [1]  # what the datatype holds still passes
