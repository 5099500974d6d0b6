"""The payload log (service/core/payloads.py) on the tiny real models: CloudEvents that make
each logged generation again; ids and sampling that are the server's, whatever the client
sends; thumbnails made on the log's own thread, for sampled requests only; a stuck
collector (a real HTTP server on loopback, held on an Event) that neither blocks a `log()`
call nor shutdown; rotation by size."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import prometheus_client
from PIL import Image

from service.core import Engine, Settings, context, payloads
from service.core.payloads import PayloadLog
from service.kinds import KINDS, Classifier, Generator
from tests.conftest import eventually

FAST = dict(classifier_runtime="tensorflow", generator_runtime="tensorflow", warmup_rounds=0, interpreters=1,
            poll_s=0, store=False)
REQUESTS = 40


def engine_logging(tiny_models, log: Path, model: str, **sampling) -> Engine:
    engine = Engine(Settings(classifier=str(tiny_models["classifier"]), generator=str(tiny_models["generator"]),
                             payload_log=str(log), repository={model: sampling}, **FAST), KINDS)
    engine.load()
    return engine


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def dropped() -> float:
    return prometheus_client.REGISTRY.get_sample_value("diptych_payload_events_total", {"outcome": "dropped"}) or 0.0


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((28, 28), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_payload_log_holds_cloudevents_that_reproduce_each_generation(tmp_path, tiny_models):
    log = tmp_path / "payloads.jsonl"
    engine = engine_logging(tiny_models, log, "generator", log_sample=1.0)
    try:
        generated = asyncio.run(engine.get(Generator).generate(2, 7, None, None))
        assert eventually(lambda: len(events(log)) == 2)
        request, response = events(log)
        assert request["type"] == "org.kubeflow.serving.inference.request" and request["specversion"] == "1.0"
        assert response["type"] == "org.kubeflow.serving.inference.response"
        assert (request["inferenceservicename"], request["endpoint"]) == ("generator", generated.model.version)
        assert request["data"]["seed"] == 7
        again = asyncio.run(engine.get(Generator).render(np.array(request["data"]["latents"], np.float32),
                                                          np.array(request["data"]["class_ids"], np.int32)))
        np.testing.assert_array_equal(again.images, generated.images)  # the log makes the images again
        assert [image["sha256"] for image in response["data"]["images"]] == [
            hashlib.sha256(image.tobytes()).hexdigest() for image in generated.images]
    finally:
        engine.close()


def test_ids_and_sampling_are_the_servers_and_the_clients_id_is_kept(tmp_path, tiny_models):
    """Every request sends the same X-Request-Id: were it the sampling key, all or none would
    be logged, and were it the event id, every event would share it."""
    log = tmp_path / "payloads.jsonl"
    engine = engine_logging(tiny_models, log, "classifier", log_sample=0.5)
    requests = []
    try:
        for _ in range(REQUESTS):
            requests.append(context.begin("client-7").id)
            asyncio.run(engine.get(Classifier).classify([png(128)], 1))
    finally:
        engine.close()  # closing the log writes what it holds
    assert len(set(requests)) == REQUESTS  # the server makes its own id for each request
    written = events(log)
    assert 0 < len(written) < 2 * REQUESTS  # some sampled, some not, for one client id (P(wrong) = 2^-39)
    assert len({event["id"] for event in written}) == len(written)  # an id of its own for each event
    assert {event["clientrequestid"] for event in written} == {"client-7"}
    by_request: dict[str, list[str]] = {}
    for event in written:
        by_request.setdefault(event["requestid"], []).append(event["type"].rsplit(".", 1)[1])
    assert set(by_request) <= set(requests) and all(sorted(kinds) == ["request", "response"]
                                                    for kinds in by_request.values())
    assert all(name.isascii() and name.isalnum() and name.islower() for name in written[0])  # CloudEvents names


def test_thumbnails_are_made_on_the_logs_thread_for_sampled_requests_only(tmp_path, tiny_models, monkeypatch):
    log = tmp_path / "payloads.jsonl"
    engine = engine_logging(tiny_models, log, "classifier", log_sample=0.5, log_thumbnails=True)
    described = []  # (thread, image) of each thumbnail made
    make = Classifier._described
    monkeypatch.setattr(Classifier, "_described",
                        lambda self, image: described.append((threading.current_thread().name, image))
                        or make(self, image))
    try:
        for index in range(REQUESTS):
            context.begin()  # a new request, as the adapters begin one
            asyncio.run(engine.get(Classifier).classify([png(index), png(255 - index)], 1))
    finally:
        engine.close()  # closing the log writes what it holds
    logged = [image for event in events(log) if "images" in event["data"] for image in event["data"]["images"]]
    assert 0 < len(logged) < 4 * REQUESTS and all(image["thumbnail"] for image in logged)  # 2 images a request
    assert {thread for thread, _ in described} == {"diptych-payloads"}  # never the caller's (the event loop)
    assert sorted(hashlib.sha256(image).hexdigest() for _, image in described) == sorted(
        image["sha256"] for image in logged)  # only the sampled requests' images were decoded again


class StuckCollector(BaseHTTPRequestHandler):
    """A CloudEvents receiver that holds each POST until the test sets `release`."""

    entered: threading.Event
    release: threading.Event
    answered: threading.Event

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.entered.set()
        self.release.wait()
        self.send_response(202)
        self.end_headers()
        self.answered.set()

    def log_message(self, *args) -> None:
        pass


def returns(call) -> bool:
    """Whether `call` returns: run on a thread of its own, so a call that blocks fails the
    test (after a minute: a bound on a hang, not a measure of speed) instead of hanging it."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(60)
    return not thread.is_alive()


def test_a_stuck_sink_neither_blocks_log_calls_nor_close(monkeypatch):
    monkeypatch.setattr(payloads, "SEND_TIMEOUT_S", None)  # stuck means stuck: held until released, however long
    handler = type("Collector", (StuckCollector,), {"entered": threading.Event(), "release": threading.Event(),
                                                     "answered": threading.Event()})
    collector = HTTPServer(("127.0.0.1", 0), handler)  # one request at a time: the held one holds the rest
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    sink = PayloadLog(f"http://127.0.0.1:{collector.server_port}/events", queue_size=2)
    try:
        sink.log("first", "shoes", "1", {"n": 0}, {"n": 0})
        assert handler.entered.wait(60)  # the writer is inside a POST that the collector holds
        before = dropped()
        assert returns(lambda: [sink.log(f"id-{index}", "shoes", "1", {"n": index}, {"n": index})
                                for index in range(20)])
        assert not handler.answered.is_set()  # all 20 returned while the sink was held
        assert dropped() == before + 39  # the queue had room for one more event (the first's response waits)
        assert returns(lambda: sink.close(grace_s=0.5))
        assert not handler.answered.is_set()  # close returned while the sink was still held ...
        assert dropped() == before + 41  # ... dropping, and counting, the two it left queued
        sink.log("late", "shoes", "1", {}, {})
        assert dropped() == before + 43  # a closed log queues nothing
    finally:
        handler.release.set()
        collector.shutdown()
        collector.server_close()
    assert handler.answered.is_set()  # the held POST was answered, so the writer ends on the marker


def test_the_payload_log_rotates_by_size(tmp_path):
    rotating = PayloadLog(str(tmp_path / "payloads.jsonl"), max_bytes=2000, files=3)
    for index in range(60):
        rotating.log(f"id-{index}", "shoes", "1", {"n": index}, {"n": index})
    rotating.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["payloads.jsonl", "payloads.jsonl.1",
                                                                "payloads.jsonl.2"]
