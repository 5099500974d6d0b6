"""One resolution per request (docs/repository.md): a request is bound to one model version
at the edge, that version computes the answer, and the answer names it.

One real `bentoml serve` over a repository folder holding two classifier versions trained
with different seeds (so their scores differ, and a wrong choice shows), policy `all`,
labels `one` and `two`, and a 50/50 traffic split. Every protocol (diptych HTTP and gRPC,
TF Serving REST and gRPC, the Open Inference Protocol REST and gRPC) is asked for a pinned
version, a label (the Open Inference Protocol has none) and no version at all; each answer's
scores must be those of the version it names, computed here in-process from that version's
folder. The callers (`X-Caller`, which the split sticks to; a request's id is the server's
own, random) are picked so that the split, keyed by them, would choose the other version
than the one pinned: a second lookup by name would be seen.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2, predict_pb2, prediction_service_pb2_grpc
from tritonclient.grpc import service_pb2 as v2_pb
from tritonclient.grpc import service_pb2_grpc as v2_services

from contract.card import ModelCard
from contract.runtime import SavedModelRuntime
from proto.diptych.v1 import diptych_pb2 as pb
from proto.diptych.v1 import diptych_pb2_grpc
from service import tensors, tfserving, v2
from service.core.repository import ModelConfig
from service.grpc import tfserving as tfserving_grpc
from tests.conftest import ROOT, Server, repository_server
from tests.grpc_clients import png_bytes
from tests.test_repository import add_version, engine_for

pytestmark = pytest.mark.slow
LABELS = {"one": 1, "two": 2}
CONFIG = {"versions": "all", "labels": LABELS, "traffic": {"1": 50, "2": 50}}
PIXELS = np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # at the models' size: no resize
IMAGE = png_bytes(PIXELS)


@pytest.fixture(scope="module")
def versions(tiny_models, tmp_path_factory) -> dict[int, Path]:
    """Version 1: the session's tiny classifier (seed 0); version 2: one trained with seed 1."""
    out = tmp_path_factory.mktemp("second-classifier")
    trained = subprocess.run(
        [sys.executable, "-m", "training.classifier", "--data", "fashion-mnist", "--backbone", "scratch",
         "--per-class", "20", "--image-size", "32", "--epochs", "3", "--seed", "1", "--quick", "--no-evaluate",
         "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    return {1: tiny_models["classifier"], 2: out / "1"}


@pytest.fixture(scope="module")
def expected(versions) -> dict[int, np.ndarray]:
    """Each version's scores for the test image, from its own folder (what the server runs on TensorFlow)."""
    scores = {number: SavedModelRuntime(str(path), ModelCard.read(path).numeric_signature).run(
        {"images": PIXELS[None]})["scores"][0] for number, path in versions.items()}
    assert np.abs(scores[1] - scores[2]).max() > 0.01, scores  # a wrong version would show
    return scores


@pytest.fixture(scope="module")
def server(versions, tmp_path_factory):
    root = tmp_path_factory.mktemp("resolution-repository")
    for number, path in versions.items():
        shutil.copytree(path, root / "classifier" / str(number))
    with repository_server(tmp_path_factory, "resolution", model_root=str(root), classifier="classifier",
                           generator="", repository=json.dumps({"classifier": CONFIG})) as server:
        yield server


def callers(avoid: int | None) -> list[str]:
    """Callers (`X-Caller`, the traffic split's key) for one case: where a version is pinned,
    callers the split sends to the other version; else two it sends to each."""
    config, found = ModelConfig.parse("classifier", CONFIG), {1: [], 2: []}
    for i in range(200):
        found[config.split({1, 2}, f"resolution-{i}")].append(f"resolution-{i}")
    return found[3 - avoid][:3] if avoid else found[1][:2] + found[2][:2]


# -- each protocol: (version named, scores in the model's label order) for a model reference ------


def diptych_http(server: Server, version: int | None, label: str | None, caller: str) -> tuple[int, list]:
    model = "classifier" + (f":{version}" if version else f"@{label}" if label else "")
    answer = server.client.post("/classify", json={"images": [base64.b64encode(IMAGE).decode()], "top_k": 10,
                                                   "model": model}, headers={"x-caller": caller})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"]["version"] == answer.headers["x-model-version"]
    return int(body["model"]["version"]), {item["label"]: item["score"] for item in body["predictions"][0]}


def diptych_grpc(server: Server, version: int | None, label: str | None, caller: str) -> tuple[int, dict]:
    model = "classifier" + (f":{version}" if version else f"@{label}" if label else "")
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = diptych_pb2_grpc.DiptychStub(channel).Classify(
            pb.ClassifyRequest(images=[IMAGE], top_k=10, model=model), metadata=[("x-caller", caller)],
            timeout=30)
    return int(answer.model.version), {item.label: item.score for item in answer.predictions[0].labels}


def tf_serving_rest(server: Server, version: int | None, label: str | None, caller: str) -> tuple[int, list]:
    where = f"/versions/{version}" if version else f"/labels/{label}" if label else ""
    answer = server.client.post(f"/v1/models/classifier{where}:predict", headers={"x-caller": caller},
                                json={"instances": [{"b64": base64.b64encode(IMAGE).decode()}]})
    assert answer.status_code == 200, answer.text
    return int(answer.headers["x-model-version"]), answer.json()["predictions"][0]["scores"]


def tf_serving_grpc(server: Server, version: int | None, label: str | None, caller: str) -> tuple[int, list]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "classifier"
    if version:
        request.model_spec.version.value = version
    elif label:
        request.model_spec.version_label = label
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([IMAGE]))
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, metadata=[("x-caller", caller)], timeout=30)
    return answer.model_spec.version.value, tf.make_ndarray(answer.outputs["scores"])[0].tolist()


def v2_rest(server: Server, version: int | None, label: None, caller: str) -> tuple[int, list]:
    path = f"/v2/models/classifier{f'/versions/{version}' if version else ''}/infer"
    answer = server.client.post(path, headers={"x-caller": caller}, json={
        "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                    "data": [base64.b64encode(IMAGE).decode()], "parameters": {"content_type": "base64"}}],
        "outputs": [{"name": "scores"}]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return int(body["model_version"]), body["outputs"][0]["data"]


def v2_grpc(server: Server, version: int | None, label: None, caller: str) -> tuple[int, list]:
    request = v2_pb.ModelInferRequest(model_name="classifier", model_version=str(version or ""), id="resolution")
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1]).contents.bytes_contents.append(IMAGE)
    request.outputs.add(name="scores")
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = v2_services.GRPCInferenceServiceStub(channel).ModelInfer(
            request, metadata=[("x-caller", caller)], timeout=30)
    return int(answer.model_version), np.frombuffer(answer.raw_output_contents[0], "<f4").tolist()


PROTOCOLS = {"diptych-http": diptych_http, "diptych-grpc": diptych_grpc, "tf-serving-rest": tf_serving_rest,
             "tf-serving-grpc": tf_serving_grpc, "v2-rest": v2_rest, "v2-grpc": v2_grpc}
LABELLED = {"diptych-http", "diptych-grpc", "tf-serving-rest", "tf-serving-grpc"}  # V2 has no labels
CASES = [(protocol, case) for protocol in PROTOCOLS
         for case in ("version 1", "version 2", "label one", "label two", "split") if
         protocol in LABELLED or not case.startswith("label")]


def in_label_order(scores: dict | list, versions: dict[int, Path], number: int) -> np.ndarray:
    """A label → score map (the diptych API's top-k) in the card's label order; a list is already in it."""
    if isinstance(scores, dict):
        scores = [scores[label] for label in ModelCard.read(versions[number]).labels]
    return np.asarray(scores, np.float32)


@pytest.mark.parametrize(("protocol", "case"), CASES)
def test_the_version_named_is_the_version_that_computed(server, versions, expected, protocol, case):
    kind, _, which = case.partition(" ")
    version = int(which) if kind == "version" else None
    label = which if kind == "label" else None
    pinned = version or LABELS.get(label)
    named = set()
    for caller in callers(pinned):
        number, scores = PROTOCOLS[protocol](server, version, label, caller)
        assert number in expected, number
        np.testing.assert_allclose(in_label_order(scores, versions, number), expected[number], atol=1e-5,
                                   err_msg=f"{protocol} {case}: answered as version {number} ({caller})")
        assert pinned in (None, number), (protocol, case, number)
        named.add(number)
    if pinned is None:  # the split sent these callers to both versions, each answered as itself
        assert named == {1, 2}, named


def test_a_version_whose_folder_is_gone_still_answers_the_tensor_protocols(tiny_models, tmp_path):
    """Its signatures are the loaded version's own, read at load: TF Serving's and the Open
    Inference Protocol's infer and metadata answer from it with its folder removed (they read
    saved_model.pb on a first request: a 500), as the diptych API does."""
    root = tmp_path / "models"
    add_version(root, "shoes", 1, tiny_models["classifier"])
    engine = engine_for(root, tiny_models)
    try:
        shutil.rmtree(root / "shoes" / "1")  # no poll (poll_s 0): version 1 keeps serving
        inputs = {"image_bytes": np.array([IMAGE], dtype=object)}
        answer = asyncio.run(v2.infer(engine, v2.Request("shoes", "1", "gone", inputs, [])))
        assert answer.version == "1" and answer.outputs["scores"].shape == (1, 10)
        assert [tensor["name"] for tensor in v2.model_metadata(engine, "shoes", "1")["inputs"]] == ["image_bytes"]
        model = tfserving.servable(engine, "shoes", 1)
        predicted = asyncio.run(tensors.run(model, "serving_default", inputs, ["scores"]))
        assert np.allclose(predicted["scores"], answer.outputs["scores"])
        spec = model_pb2.ModelSpec(name="shoes")
        metadata = tfserving_grpc.metadata(model, spec, [tfserving_grpc.SIGNATURE_DEF])
        definitions = get_model_metadata_pb2.SignatureDefMap()
        assert metadata.metadata[tfserving_grpc.SIGNATURE_DEF].Unpack(definitions)
        assert "serving_default" in definitions.signature_def
    finally:
        engine.close()
