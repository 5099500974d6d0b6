"""Labels fed back on a real `bentoml serve` (#27): model `shoes` with feedback on, version 1
(`stable`, which answers) and version 2 (another seed's weights) as its shadow. A label is
joined to what each of them answered to the same request, by the answer's `x-request-id`,
on HTTP and gRPC; counts show per version in `GET /models` and on /metrics; unknown ids and
labels are per-item errors; a flood stays within the store's bound, its evictions counted.
API keys are on: labels need a feedback key (or an admin key), since they drive promotion."""

from __future__ import annotations

import base64
import json

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proto.diptych.v1 import diptych_pb2 as pb
from proto.diptych.v1 import diptych_pb2_grpc
from service.http.routes import FEEDBACK_BODY_BYTES
from tests.conftest import eventually, repository_server
from tests.grpc_clients import png_bytes
from tests.test_repository_server import add_version

pytestmark = pytest.mark.slow
MAX_ENTRIES = 200  # answers the store keeps (one per image)
IMAGES = 24
USER, LABELLER, ADMIN = "user-key", "labeller-key", "admin-key"
LABELLING = {"authorization": f"Bearer {LABELLER}"}


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback-repository")
    (root / "shoes").mkdir()
    add_version(root, "shoes", 1, tiny_models["classifier"])
    add_version(root, "shoes", 2, tiny_models["other_classifier"])
    shoes = {"versions": "all", "labels": {"stable": 1}, "traffic": {"stable": 100}, "shadow": "2", "feedback": True}
    with repository_server(tmp_path_factory, "feedback", model_root=str(root), classifier="shoes", generator="",
                           repository=json.dumps({"shoes": shoes}),
                           feedback_max_entries=str(MAX_ENTRIES), api_keys=USER, feedback_keys=LABELLER,
                           admin_keys=ADMIN) as server:
        server.client.headers["authorization"] = f"Bearer {USER}"  # classify, /models: any API key
        yield server


def random_pngs(count: int, seed: int) -> list[str]:
    """`count` random 28-px RGB PNGs, base64: images two classifiers of different weights disagree on."""
    rng = np.random.default_rng(seed)
    return [base64.b64encode(png_bytes(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8))).decode()
            for _ in range(count)]


@pytest.fixture(scope="module")
def images() -> list[str]:
    return random_pngs(IMAGES, seed=7)


def classify(server, images: list[str], model: str = "shoes") -> tuple[str, str, list[str]]:
    """(the version that answered, its request id, each image's top label)."""
    answer = server.client.post("/classify", json={"images": images, "top_k": 1, "model": model})
    assert answer.status_code == 200, answer.text
    return (answer.headers["x-model-version"], answer.headers["x-request-id"],
            [prediction[0]["label"] for prediction in answer.json()["predictions"]])


def feedback(server, *items: dict) -> list[dict]:
    answer = server.client.post("/feedback", json={"items": list(items)}, headers=LABELLING)
    assert answer.status_code == 200, answer.text
    return answer.json()["items"]


def versions(server) -> dict[str, dict]:
    return {entry["version"]: entry for entry in server.client.get("/models").json()["models"]
            if entry["name"] == "shoes"}


def metric(server, name: str, **labels: str) -> float:
    text = server.client.get("/metrics").text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def test_a_label_is_joined_to_the_answering_version_and_its_shadow(server, images):
    version, _, by_shadow = classify(server, images, "shoes:2")  # what version 2 answers to these images
    assert version == "2"
    version, request_id, by_stable = classify(server, images)  # version 1 answers, version 2 shadows it
    assert version == "1"
    differ = [index for index in range(IMAGES) if by_stable[index] != by_shadow[index]]
    assert len(differ) >= 2, (by_stable, by_shadow)  # different weights, different answers
    first, second = differ[:2]
    results = feedback(server, {"request_id": request_id, "index": first, "label": by_stable[first]},
                       {"request_id": request_id, "index": second, "label": by_shadow[second]})
    assert [(each["status"], each["code"], each["replaced"]) for each in results] == [("ok", 200, False)] * 2

    def joined(stable: tuple[int, float], shadow: tuple[int, float]) -> bool:
        listed = versions(server)
        one, two = listed["1"]["feedback"], (listed["2"]["feedback"] or {}).get("shadow")
        return one is not None and two is not None and (one["labelled"], one["accuracy"]) == stable and \
            (two["labelled"], two["accuracy"]) == shadow

    # each version is right on one of the two, wrong on the other (the shadow's answer may come after the label)
    assert eventually(lambda: joined((2, 0.5), (2, 0.5)), 60), versions(server)
    assert versions(server)["2"]["feedback"]["labelled"] == 0  # as the predictor, version 2 has no labels

    # A second label replaces the first (over gRPC): version 1 now wrong on both, the shadow right on both.
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = diptych_pb2_grpc.DiptychStub(channel).Feedback(pb.FeedbackRequest(items=[pb.FeedbackItem(
            request_id=request_id, index=first, label_name=by_shadow[first])]), timeout=30,
            metadata=tuple(LABELLING.items()))
    assert [(each.status, each.replaced) for each in answer.results] == [("ok", True)]
    assert eventually(lambda: joined((2, 0.0), (2, 1.0)), 30), versions(server)
    stable = versions(server)["1"]["feedback"]
    assert sum(map(sum, stable["confusion"])) == 2 and 0.0 <= stable["ece"] <= 1.0
    labels = stable["labels"]
    assert stable["confusion"][labels.index(by_shadow[first])][labels.index(by_stable[first])] >= 1
    assert metric(server, "diptych_feedback_labelled", model="shoes", version="2", role="shadow") == 2
    assert metric(server, "diptych_feedback_accuracy", model="shoes", version="1", role="predictor") == 0.0


def test_unknown_ids_and_labels_are_errors_of_their_own_items(server, images):
    _, request_id, answered = classify(server, images[:1])
    results = feedback(server, {"request_id": "no-such-request", "label": answered[0]},
                       {"request_id": request_id, "label": "Not a label"},
                       {"request_id": request_id, "label": 99},
                       {"request_id": request_id, "index": 1, "label": answered[0]},
                       {"request_id": request_id, "label": answered[0]})
    assert [(each["status"], each["code"]) for each in results] == [
        ("not_found", 404), ("invalid_input", 400), ("invalid_input", 400), ("not_found", 404), ("ok", 200)]
    assert "Not a label" in results[1]["error"] and "no-such-request" in results[0]["error"]
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = diptych_pb2_grpc.DiptychStub(channel).Feedback(pb.FeedbackRequest(items=[
            pb.FeedbackItem(request_id="no-such-request", label_index=0),
            pb.FeedbackItem(request_id=request_id, label_index=10)]), timeout=30, metadata=tuple(LABELLING.items()))
    assert [each.status for each in answer.results] == ["not_found", "invalid_input"]
    for body, status in (({"items": []}, 400), ({"items": "all"}, 400), ({"items": [{"label": 1}]}, 400),
                         ({"items": [{"request_id": "x", "label": 1}] * 1001}, 413)):
        answer = server.client.post("/feedback", json=body, headers=LABELLING)
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["error"]


def test_a_feedback_body_past_its_own_bound_is_refused_before_parsing(server, images):
    """900 items (under the item limit) of long labels: 1.8 MB, under the service's body bound
    but over the route's (FEEDBACK_BODY_BYTES): a 413 naming the body, not a parse of the
    items (which would answer each item's error)."""
    _, request_id, _ = classify(server, images[:1])
    body = {"items": [{"request_id": request_id, "label": "x" * 2000}] * 900}
    answer = server.client.post("/feedback", json=body, headers=LABELLING)
    assert answer.status_code == 413, answer.text[:300]
    assert answer.json()["detail"][0]["loc"] == ["body"] and str(FEEDBACK_BODY_BYTES) in answer.json()["error"]


def test_a_flood_stays_within_the_bound_and_counts_what_falls_out(server, images):
    _, oldest, answered = classify(server, images[:1])
    for _ in range(MAX_ENTRIES // 32 + 2):  # more images than the store keeps, each answered twice
        classify(server, [images[0]] * 32)
    assert eventually(lambda: metric(server, "diptych_feedback_evicted_total", reason="size") >= 2 * 32, 60)
    assert metric(server, "diptych_feedback_entries") <= MAX_ENTRIES
    (result,) = feedback(server, {"request_id": oldest, "label": answered[0]})
    assert (result["status"], result["code"]) == ("not_found", 404)  # it fell out: not found, never a 500


def test_only_a_feedback_or_admin_key_may_label(server, images):
    """Any client could otherwise label its own requests with a canary's answers and promote it."""
    _, request_id, answered = classify(server, images[:1])
    body = {"items": [{"request_id": request_id, "label": answered[0]}]}
    for key, status in ((None, 401), ("not-a-key", 401), (USER, 403), (ADMIN, 200), (LABELLER, 200)):
        answer = server.client.post("/feedback", json=body, headers={"authorization": f"Bearer {key}" if key else ""})
        assert answer.status_code == status, (key, answer.text)
        if status == 403:
            assert "feedback key" in answer.json()["error"]
    request = pb.FeedbackRequest(items=[pb.FeedbackItem(request_id=request_id, label_name=answered[0])])
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = diptych_pb2_grpc.DiptychStub(channel)
        for key, code in ((None, grpc.StatusCode.UNAUTHENTICATED), (USER, grpc.StatusCode.PERMISSION_DENIED)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Feedback(request, timeout=30, metadata=(("authorization", f"Bearer {key}"),) if key else ())
            assert refused.value.code() == code, (key, refused.value.details())
        assert "feedback key" in refused.value.details()
        answer = stub.Feedback(request, timeout=30, metadata=(("authorization", f"Bearer {ADMIN}"),))
        assert [each.status for each in answer.results] == ["ok"]
