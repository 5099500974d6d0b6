"""`abstain_below`: a top score under it answers abstain, its labels still listed; the model's
table sets it, a request overrides it; a bad value is refused on HTTP and gRPC; the
abstention rate is a metric. On a real `bentoml serve` over a model repository."""

from __future__ import annotations

import base64
import json
import math
import shutil

import grpc
import numpy as np
import pytest
import tensorflow as tf

from proto.diptych.v1 import diptych_pb2 as pb
from proto.diptych.v1 import diptych_pb2_grpc
from service.core.model_settings import ModelConfig
from tests.conftest import Server, repository_server
from tests.grpc_clients import png_bytes
from tests.test_grpc import scrape, total


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan"), True, "0.5"])
def test_a_table_with_a_bad_abstain_below_is_refused(value):
    with pytest.raises(ValueError, match="abstain_below"):
        ModelConfig.parse("classifier", {"abstain_below": value})


def test_the_table_keeps_abstain_below_through_a_round_trip():
    config = ModelConfig.parse("classifier", {"abstain_below": 0.6})
    assert config.abstain_below == 0.6 and ModelConfig.parse("classifier", config.table()) == config
    assert "abstain_below" not in ModelConfig.parse("classifier", {}).table()


@pytest.fixture(scope="module")
def images(tiny_models) -> tuple[list[bytes], float]:
    """Two Fashion-MNIST test images whose top scores differ, and a threshold between them:
    the first abstains under it, the second does not."""
    from training.data import load_dataset

    pixels = load_dataset("fashion-mnist", split="test").images[:40]
    files = [png_bytes(image) for image in pixels]
    scores = tf.saved_model.load(str(tiny_models["classifier"])).signatures["serving_default"](
        image_bytes=tf.constant(files))["scores"].numpy().max(axis=1)
    low, high = int(scores.argmin()), int(np.where(scores < 0.999, scores, 0).argmax())  # under 1: abstain_below 1 sees it
    assert scores[high] - scores[low] > 0.1, scores
    return [files[low], files[high]], float(scores[low] + scores[high]) / 2


@pytest.fixture(scope="module")
def server(tiny_models, images, tmp_path_factory):
    root = tmp_path_factory.mktemp("abstain-repository")
    shutil.copytree(tiny_models["classifier"], root / "classifier" / "1")
    table = {"classifier": {"abstain_below": images[1]}}
    with repository_server(tmp_path_factory, "abstain", model_root=str(root), classifier="classifier",
                           generator="", repository=json.dumps(table)) as server:
        yield server


@pytest.fixture(scope="module")
def diptych(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield diptych_pb2_grpc.DiptychStub(channel)


def over_http(server: Server, files: list[bytes], **fields) -> dict:
    answer = server.client.post("/classify", json={"images": [base64.b64encode(f).decode() for f in files],
                                                   "top_k": 3, **fields})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.parametrize("fields, abstain", [({}, [True, False]),  # the model table's threshold
                                             ({"abstain_below": 0.0}, [False, False]),  # the request's wins
                                             ({"abstain_below": 1.0}, [True, True])])
def test_http_abstains_under_the_threshold_with_the_labels_listed(server, images, fields, abstain):
    body = over_http(server, images[0], **fields)
    assert body["abstain"] == abstain
    assert [len(labels) for labels in body["predictions"]] == [3, 3]


@pytest.mark.parametrize("request_field, abstain", [({}, [True, False]), ({"abstain_below": 0.0}, [False, False]),
                                                    ({"abstain_below": 1.0}, [True, True])])
def test_grpc_abstains_as_http_does(server, diptych, images, request_field, abstain):
    reply = diptych.Classify(pb.ClassifyRequest(images=images[0], top_k=3, **request_field))
    assert [prediction.abstain for prediction in reply.predictions] == abstain
    assert [len(prediction.labels) for prediction in reply.predictions] == [3, 3]
    http = over_http(server, images[0], **request_field)["predictions"]
    assert [[label.label for label in p.labels] for p in reply.predictions] == [[x["label"] for x in p] for p in http]


def test_the_abstention_rate_is_a_metric(server, images):
    before = scrape(server)
    over_http(server, images[0])
    over_http(server, images[0], abstain_below=1.0)
    moved = {answer: total(scrape(server), "diptych_confidence_checks_total", abstained=answer)
             - total(before, "diptych_confidence_checks_total", abstained=answer) for answer in ("true", "false")}
    assert moved == {"true": 3, "false": 1}


@pytest.mark.parametrize("value", [1.5, -0.5, "high", None])
def test_http_refuses_a_bad_abstain_below(server, images, value):
    image = base64.b64encode(images[0][0]).decode()
    if value is None:  # NaN: not JSON, but Python's and pydantic's parsers read it
        answer = server.client.post("/classify", content=f'{{"images": ["{image}"], "abstain_below": NaN}}',
                                    headers={"content-type": "application/json"})
    else:
        answer = server.client.post("/classify", json={"images": [image], "abstain_below": value})
    assert answer.status_code == 400, answer.text
    body = answer.json()  # the core's message, or pydantic's type error with the field in `detail`
    assert "abstain_below" in body["error"] + json.dumps(body.get("detail"))


@pytest.mark.parametrize("value", [1.5, -0.5, math.nan, math.inf])
def test_grpc_refuses_a_bad_abstain_below(diptych, images, value):
    with pytest.raises(grpc.RpcError) as caught:
        diptych.Classify(pb.ClassifyRequest(images=images[0][:1], abstain_below=value))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("abstain_below: ")


def test_multipart_takes_abstain_below_too(server, images):
    files = [("images", ("a.png", images[0][0], "image/png")), ("images", ("b.png", images[0][1], "image/png"))]
    answer = server.client.post("/classify", files=files, data={"abstain_below": "0"})
    assert answer.status_code == 200 and answer.json()["abstain"] == [False, False], answer.text
    refused = server.client.post("/classify", files=files, data={"abstain_below": "2"})
    assert refused.status_code == 400 and "abstain_below" in refused.json()["error"]


def test_scores_are_unchanged_by_abstaining(server, images):
    with_threshold = over_http(server, images[0], abstain_below=1.0)
    assert with_threshold["predictions"] == over_http(server, images[0], abstain_below=0.0)["predictions"]
