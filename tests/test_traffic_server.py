"""Traffic on a real `bentoml serve`: a 50/50 canary split of `shoes` between versions 1
(stable) and 2 (canary), sticky per caller (the `X-Caller` header, else the API key) on HTTP
and gRPC alike; version 3 as the shadow, which gets a copy of every request and never answers
one; and the payload log's HTTP sink POSTing CloudEvents to a receiver the test runs."""

from __future__ import annotations

import base64
import collections
import datetime
import hashlib
import http.server
import json
import threading

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proto.diptych.v1 import diptych_pb2 as pb
from proto.diptych.v1 import diptych_pb2_grpc
from service.core.payloads import REQUEST, RESPONSE
from tests.conftest import Server, eventually
from tests.grpc_clients import png_bytes
from tests.test_repository_server import add_version

pytestmark = pytest.mark.slow
KEYS = [f"traffic-key-{index}" for index in range(40)]
SPLIT = {"1", "2"}  # stable and canary: the versions that answer
SHADOW = "3"


class Receiver(http.server.ThreadingHTTPServer):
    """A CloudEvents sink on loopback: keeps each POST's content type and JSON body."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), ReceiverHandler)

    def received(self) -> list[tuple[str, dict]]:
        with self.lock:
            return list(self.events)


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the sink's client expects

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.events.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:  # quiet: the test reads what it received
        pass


@pytest.fixture(scope="module")
def receiver():
    sink = Receiver()
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.shutdown()
        sink.server_close()


@pytest.fixture(scope="module")
def served(server_env, tiny_models, receiver, tmp_path_factory):
    root = tmp_path_factory.mktemp("traffic-repository")
    (root / "shoes").mkdir()
    for number in (1, 2, 3):
        add_version(root, "shoes", number, tiny_models["classifier"])
    shoes = {"versions": "all", "labels": {"stable": 1, "canary": 2}, "traffic": {"stable": 50, "canary": 50},
             "shadow": SHADOW, "log_sample": 1.0}
    server = Server({**server_env, "BENTOML_HOME": str(tmp_path_factory.mktemp("traffic-home")),
                     "DIPTYCH_MODEL_ROOT": str(root), "DIPTYCH_STORE": "false", "DIPTYCH_CLASSIFIER": "shoes",
                     "DIPTYCH_GENERATOR": str(tiny_models["generator"]), "DIPTYCH_API_KEYS": ",".join(KEYS),
                     "DIPTYCH_CLASSIFIER_RUNTIME": "tensorflow", "DIPTYCH_REPOSITORY": json.dumps({"shoes": shoes}),
                     "DIPTYCH_PAYLOAD_LOG": f"http://127.0.0.1:{receiver.server_port}/events",
                     "DIPTYCH_PAYLOAD_LOG_QUEUE": "100000"},  # room in the queue: only the describer may drop
                    tmp_path_factory.mktemp("traffic-server") / "server.log")
    try:
        server.wait("/readyz")
        with grpc.insecure_channel(server.grpc_target) as channel:
            yield Traffic(server, diptych_pb2_grpc.DiptychStub(channel))
    finally:
        server.stop()


class Traffic:
    """The server and its clients; counts the requests answered, which the shadow must mirror."""

    def __init__(self, server: Server, stub) -> None:
        self.server, self.stub, self.answered = server, stub, 0

    def over_http(self, key: str = KEYS[0], caller: str | None = None, image: bytes | None = None) -> str:
        """The version that answered a classify request."""
        headers = {"authorization": f"Bearer {key}", **({"x-caller": caller} if caller else {})}
        answer = self.server.client.post("/classify", headers=headers, json={
            "images": [base64.b64encode(image or png_bytes()).decode()], "top_k": 1})
        assert answer.status_code == 200, answer.text
        self.answered += 1
        return answer.headers["x-model-version"]

    def over_grpc(self, key: str = KEYS[0], caller: str | None = None) -> str:
        metadata = [("authorization", f"Bearer {key}"), *([("x-caller", caller)] if caller else [])]
        answer = self.stub.Classify(pb.ClassifyRequest(images=[png_bytes()], top_k=1), metadata=metadata, timeout=60)
        self.answered += 1
        return answer.model.version

    def dropped(self) -> float:
        return self.counter("diptych_payload_events_total", outcome="dropped")

    def counter(self, name: str, **labels: str) -> float:
        text = self.server.client.get("/metrics").text
        return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == name and labels.items() <= sample.labels.items())


def test_one_caller_header_always_gets_the_same_version_on_http_and_grpc(served):
    chosen = {}
    for index in range(16):
        caller = f"user-{index}"
        seen = {served.over_http(caller=caller) for _ in range(4)} | {served.over_grpc(caller=caller) for _ in range(2)}
        assert len(seen) == 1, (caller, seen)  # sticky, whatever the protocol
        chosen[caller] = seen.pop()
    assert set(chosen.values()) == SPLIT, chosen  # and callers spread over both
    other_key = {served.over_http(key=KEYS[1], caller="user-0") for _ in range(3)}
    assert other_key == {chosen["user-0"]}  # the header, not the key, names the caller


def test_the_api_key_is_the_caller_without_the_header(served):
    chosen = {}
    for key in KEYS[:16]:
        seen = {served.over_http(key=key) for _ in range(3)} | {served.over_grpc(key=key)}
        assert len(seen) == 1, (key, seen)
        chosen[key] = seen.pop()
    assert set(chosen.values()) == SPLIT, chosen


def test_the_split_shares_requests_between_stable_and_canary(served):
    shares = collections.Counter(served.over_http(caller=f"visitor-{index}") for index in range(200))
    assert set(shares) == SPLIT, shares  # the shadow never answers
    assert max(shares.values()) <= 180, shares  # neither above 90%


def test_the_shadow_gets_a_copy_of_every_request_and_the_sink_gets_every_event(served, receiver):
    for _ in range(5):
        assert served.over_grpc() in SPLIT
    answered = served.answered  # every request of this module so far, each with a shadow copy
    assert eventually(lambda: served.counter("diptych_shadow_requests_total", model="shoes", version=SHADOW,
                                             outcome="ok") == answered, 120)
    # A request never waits for the log: what a busy describer cannot take is dropped and counted
    # (docs/reliability.md). Every event arrives or is counted, and drops stay the exception.
    assert eventually(lambda: len(receiver.received()) + served.dropped() == 4 * answered, 120), \
        (len(receiver.received()), served.dropped(), answered)
    assert served.dropped() < answered, served.dropped()
    by_component = collections.Counter((event["component"], event["type"], event["endpoint"])
                                       for _, event in receiver.received())
    shadow = {key: count for key, count in by_component.items() if key[0] == "shadow"}
    assert set(shadow) == {("shadow", REQUEST, SHADOW), ("shadow", RESPONSE, SHADOW)}
    assert all(count <= answered for count in shadow.values())
    predictor = {key: count for key, count in by_component.items() if key[0] == "predictor"}
    assert {endpoint for _, _, endpoint in predictor} <= SPLIT  # the shadow's answers are never the client's
    assert sum(predictor.values()) <= 2 * answered
    assert served.counter("diptych_payload_events_total", outcome="written") == len(receiver.received())


def test_the_http_sink_posts_structured_cloudevents(served, receiver):
    image = png_bytes(np.full((20, 20, 3), 7, np.uint8))  # an image no other test sends
    served.over_http(image=image)
    sha = hashlib.sha256(image).hexdigest()

    def logged() -> list[dict]:
        return [event for _, event in receiver.received() if event["type"] == REQUEST
                and event["component"] == "predictor" and event["data"]["images"][0]["sha256"] == sha]

    assert eventually(lambda: len(logged()) == 1, 60)
    request = logged()[0]
    assert request["data"] == {"images": [{"sha256": sha, "bytes": len(image)}]}
    assert eventually(lambda: len(receiver.received()) + served.dropped() == 4 * served.answered, 120)
    events = receiver.received()
    assert {content_type for content_type, _ in events} == {"application/cloudevents+json"}  # structured mode
    for _, event in events:
        assert event["specversion"] == "1.0" and event["source"] == "diptych/shoes"
        assert event["datacontenttype"] == "application/json" and event["inferenceservicename"] == "shoes"
        assert isinstance(event["id"], str) and event["id"]
        assert datetime.datetime.fromisoformat(event["time"]).utcoffset() == datetime.timedelta(0)
    requests = [event for _, event in events if event["type"] == REQUEST and event["component"] == "predictor"]
    assert len({event["id"] for _, event in events}) == len(events)  # the server's: one id per event
    assert len({event["requestid"] for event in requests}) == len(requests)  # one request id per request
    for _, event in events:
        if event["type"] == RESPONSE:
            [top1] = event["data"]["top1"]
            assert set(top1) == {"label", "score"} and 0 <= top1["score"] <= 1
