"""Faults against real `bentoml serve` processes: broken models, overload, clients that
disconnect or crawl, a worker killed, SIGTERM under load (docs/reliability.md).

Three servers of their own start at once, for the module: two whose models are broken
(they must never become ready), and one "faults" server with small limits (4 request
slots, a 2 s timeout, a 300 ms batch window that keeps requests in flight, 1 MB bodies)
whose classifier's stored LiteRT flatbuffer was damaged on disk. The destructive tests
run last, in file order: SIGKILL of the worker (the server recovers), then SIGTERM (it
exits).
"""

from __future__ import annotations

import base64
import concurrent.futures
import itertools
import json
import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from proto.diptych.v1 import diptych_pb2 as pb
from proto.diptych.v1 import diptych_pb2_grpc
from tests.conftest import Server, eventually
from tests.grpc_clients import health, png_bytes
from tests.reliability import (
    connect,
    dedicated,
    metric,
    read_response,
    request_head,
    stop,
    worker_processes,
    worker_rss,
)

pytestmark = pytest.mark.slow
# Bodies are held open across several steps here on purpose, and the crawler meets BentoML's
# traffic timeout: the body deadline (body_timeout_s) is far past both (its own test:
# test_fuzz_routes.py::test_a_body_trickling_past_body_timeout_s_is_a_408_and_the_next_is_served).
FAULTS = {"DIPTYCH_MAX_CONCURRENCY": "4", "DIPTYCH_TIMEOUT_S": "2", "DIPTYCH_BATCH_WINDOW_MS": "300",
          "DIPTYCH_MAX_BODY_BYTES": "1000000", "DIPTYCH_CLASSIFIER_RUNTIME": "litert",
          "DIPTYCH_GENERATOR_RUNTIME": "litert", "DIPTYCH_BODY_TIMEOUT_S": "120"}
TRAFFIC_TIMEOUT_S = 2 + 10  # BentoML's own limit on a request: timeout_s + 10 (service.py)


def flip(path: Path, offset: float, count: int = 64) -> None:
    """Damage a file in place: `count` bytes from `offset` (a fraction of its size) inverted."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * offset)
    data[start : start + count] = bytes(byte ^ 0xFF for byte in data[start : start + count])
    path.write_bytes(bytes(data))


def damage_classifier_flatbuffer(models: Path) -> None:
    """Weights damaged, structure intact: LiteRT still loads it and computes garbage."""
    (flatbuffer,) = models.glob("classifier/*/litert/model.tflite")
    flip(flatbuffer, 0.5)


@pytest.fixture(scope="module")
def servers(server_env, tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    truncated, damaged = tmp / "truncated-classifier", tmp / "damaged-generator"
    subprocess.run(["cp", "-r", str(tiny_models["classifier"]), str(truncated)], check=True)
    subprocess.run(["cp", "-r", str(tiny_models["generator"]), str(damaged)], check=True)
    graph = truncated / "saved_model.pb"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    flip(next((damaged / "variables").glob("variables.data-*")), 0.5)
    tensorflow = {"DIPTYCH_CLASSIFIER_RUNTIME": "tensorflow", "DIPTYCH_GENERATOR_RUNTIME": "tensorflow"}
    started = {
        "missing": dedicated(server_env, tmp, "missing", DIPTYCH_CLASSIFIER=str(tmp / "no-such-model"),
                             DIPTYCH_GENERATOR="generator:99", **tensorflow),
        "corrupt": dedicated(server_env, tmp, "corrupt", DIPTYCH_CLASSIFIER=str(truncated),
                             DIPTYCH_GENERATOR=str(damaged), **tensorflow),
        "faults": dedicated(server_env, tmp, "faults", damage_classifier_flatbuffer, **FAULTS),
    }
    started["corrupt"].refs = {"classifier": str(truncated), "generator": str(damaged)}
    started["missing"].refs = {"classifier": str(tmp / "no-such-model"), "generator": "generator:99"}
    try:
        started["faults"].wait("/readyz")
        yield started
    finally:
        stop(*started.values())


@pytest.fixture(scope="module")
def faults(servers) -> Server:
    return servers["faults"]


def status(server: Server, path: str) -> int | None:
    try:
        return server.client.get(path, timeout=5).status_code
    except httpx.TransportError:
        return None


def generate(server: Server, seed: int = 1, **fields) -> httpx.Response:
    return server.client.post("/generate", json={"seed": seed, **fields}, timeout=60)


# -- broken models: never ready, and the log says which model and why -------------------------


@pytest.mark.parametrize(("name", "reasons"), [
    ("missing", {"classifier": "no saved_model.pb", "generator": "generator:99"}),
    ("corrupt", {"classifier": "error parsing message with type 'tensorflow.savedmodel'", "generator": "checksum"}),
])
def test_a_broken_model_keeps_the_service_unready(servers, name, reasons):
    server = servers[name]
    assert eventually(lambda: status(server, "/livez") == 503, 240), server.log.read_text()[-3000:]
    log = server.log.read_text()
    for kind, reason in reasons.items():
        line = next((line for line in log.splitlines() if f"the {kind} could not be loaded from " in line), None)
        assert line is not None, f"no log line names the {kind}:\n{log[-3000:]}"
        assert server.refs[kind] in line and reason in line.lower(), line
    assert status(server, "/readyz") == 503  # for good: /livez fails only once both models were tried
    answer = server.client.post("/classify", json={"images": [base64.b64encode(png_bytes()).decode()]})
    assert answer.status_code == 503 and answer.json()["detail"][0]["type"] == "not_ready"
    assert answer.json()["error"] == "the models failed to load" and answer.headers["Retry-After"]
    with grpc.insecure_channel(server.grpc_target) as channel:
        assert health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            diptych_pb2_grpc.DiptychStub(channel).Generate(pb.GenerateRequest(seed=1), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "failed to load" in refused.value.details()


def test_a_damaged_litert_flatbuffer_is_never_served(faults, server_env):
    """The flatbuffer's sha256 no longer matches the verified one: TensorFlow serves the
    classifier, and its scores are the intact flatbuffer's (verified to agree within 1e-4)."""
    from contract.runtime import LiteRTRuntime
    from service.core.images import decode

    files = [png_bytes(np.random.default_rng(i).integers(0, 255, (28, 28), dtype=np.uint8)) for i in range(4)]
    answer = faults.client.post("/classify", json={"images": [base64.b64encode(f).decode() for f in files],
                                                   "top_k": 10})
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Model-Runtime"] == "tensorflow"
    (intact,) = Path(server_env["BENTOML_HOME"]).glob("models/classifier/*/litert/model.tflite")
    card = faults.client.get("/models/classifier").json()["card"]
    pixels = np.stack([decode(f, card["image_size"][0], "image") for f in files])
    expected = LiteRTRuntime(intact.read_bytes(), 1).run({"images": pixels})["scores"]
    for row, scores in zip(answer.json()["predictions"], expected):
        served = {item["label"]: item["score"] for item in row}
        np.testing.assert_allclose([served[label] for label in card["labels"]], scores, atol=2e-4)
    assert generate(faults).headers["X-Model-Runtime"] == "litert"  # the generator's is intact
    warning = next(line for line in faults.log.read_text().splitlines() if "LiteRT conversion is not used" in line)
    assert "classifier" in warning and "not the flatbuffer that was verified" in warning


# -- overload: refused at once, memory bounded ------------------------------------------------


def test_overload_is_refused_at_once_and_memory_stays_bounded(faults):
    """Bursts far over the 4 request slots, over HTTP (some with ~700 KB bodies) and gRPC at once."""
    big = {"images": [base64.b64encode(os.urandom(500_000)).decode()]}  # read, then refused (no slot left)
    before, peak, done = worker_rss(faults), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], worker_rss(faults))
            time.sleep(0.05)

    def post(i: int) -> int:
        with httpx.Client(base_url=faults.url, timeout=60) as client:
            start.wait()
            answer = client.post("/classify", json=big) if i % 2 else client.post("/generate", json={"seed": i})
            if answer.status_code == 503:
                assert answer.headers["Retry-After"] == "1" and answer.json()["detail"][0]["type"] == "overloaded"
            return answer.status_code

    http_codes, grpc_codes = [], []
    sampler = threading.Thread(target=sample)
    sampler.start()
    with grpc.insecure_channel(faults.grpc_target) as channel, concurrent.futures.ThreadPoolExecutor(48) as pool:
        stub = diptych_pb2_grpc.DiptychStub(channel)
        for _ in range(2):
            start = threading.Barrier(48)
            answers = [pool.submit(post, i) for i in range(48)]
            calls = [stub.Generate.future(pb.GenerateRequest(seed=i), timeout=60) for i in range(24)]
            http_codes += [answer.result() for answer in answers]
            for call in calls:
                try:
                    call.result()
                    grpc_codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    grpc_codes.append(error.code())
    done.set()
    sampler.join()
    assert set(http_codes) <= {200, 400, 503} and 503 in http_codes and 200 in http_codes, http_codes
    assert set(grpc_codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, grpc_codes
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in grpc_codes
    assert eventually(lambda: metric(faults, "diptych_requests_in_flight") == 0)
    assert peak[0] - before < 512 * 2**20, f"worker RSS {before >> 20} MiB grew to {peak[0] >> 20} MiB"
    assert generate(faults).status_code == 200


# -- clients that leave or crawl: bounded, no slot held, nothing run for nobody -----------------


def test_a_request_cut_off_mid_body_is_never_run(faults):
    before = {code: metric(faults, "diptych_requests_total", method="POST /generate", code=code)
              for code in ("200", "400", "499")}
    generated = metric(faults, "diptych_images_generated_total")
    body = json.dumps({"seed": 3, "count": 2, "format": "grid"}).encode()
    sock = connect(faults)
    sock.sendall(request_head("/generate", len(body) + 10) + body)  # 10 bytes short: then gone
    assert eventually(lambda: metric(faults, "diptych_requests_receiving") == 1)  # no slot while it arrives
    sock.close()

    def moved(code: str) -> float:
        return metric(faults, "diptych_requests_total", method="POST /generate", code=code) - before[code]

    assert eventually(lambda: moved("499") == 1)
    assert moved("200") == moved("400") == 0
    assert metric(faults, "diptych_images_generated_total") == generated
    assert metric(faults, "diptych_requests_in_flight") == 0
    assert eventually(lambda: metric(faults, "diptych_requests_receiving") == 0)
    assert generate(faults).status_code == 200


def test_a_client_gone_mid_response_frees_its_slot(faults):
    body = json.dumps({"seed": 4, "count": 8, "format": "json"}).encode()
    for read in (0, 100):
        sock = connect(faults)
        sock.sendall(request_head("/generate", len(body)) + body)
        if read:
            sock.recv(read)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        sock.close()
    assert eventually(lambda: metric(faults, "diptych_requests_in_flight") == 0)
    assert generate(faults, count=8, format="json").status_code == 200


def test_as_many_slow_bodies_as_slots_refuse_nobody(faults):
    """max_concurrency (4) bodies still arriving hold no request slot: a request from anyone
    else is served, not refused; each slow body, once whole, is served too."""
    body = json.dumps({"seed": 6, "format": "json"}).encode()
    slow = [connect(faults) for _ in range(4)]
    try:
        for sock in slow:
            sock.sendall(request_head("/generate", len(body)) + body[:5])
        assert eventually(lambda: metric(faults, "diptych_requests_receiving") == 4)
        assert generate(faults).status_code == 200
        for sock in slow:
            sock.sendall(body[5:])
        answers = [read_response(sock)[0] for sock in slow]
    finally:
        for sock in slow:
            sock.close()
    assert answers == [200] * 4
    assert eventually(lambda: metric(faults, "diptych_requests_in_flight") == 0)


def test_slow_clients_are_bounded_and_the_rest_is_served(faults):
    """A body sent a byte at a time holds no slot, only its connection, until BentoML's
    traffic timeout answers 504; meanwhile half-sent request heads, a client that reads its answer late, and
    ordinary requests are all served."""
    before_504 = metric(faults, "diptych_requests_total", method="POST /generate", code="504")
    crawler = connect(faults)
    crawler.sendall(request_head("/generate", 100_000) + b"{")
    started = time.monotonic()
    idlers = [connect(faults) for _ in range(20)]
    for sock in idlers:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: test\r\nContent-Le")  # and nothing more
    late_reader = connect(faults)
    body = json.dumps({"seed": 5, "format": "grid", "count": 4}).encode()
    late_reader.sendall(request_head("/generate", len(body)) + body)
    served = [generate(faults, seed=i).status_code for i in range(5)]
    answer = b""
    while time.monotonic() - started < TRAFFIC_TIMEOUT_S + 60:
        readable, _, _ = select.select([crawler], [], [], 0.5)
        if readable:
            answer = crawler.recv(65536)
            break
        crawler.sendall(b" ")
    elapsed = time.monotonic() - started
    time.sleep(2)
    code, png = read_response(late_reader)
    for sock in (crawler, late_reader, *idlers):
        sock.close()
    assert served == [200] * 5
    assert answer.startswith(b"HTTP/1.1 504"), (answer, elapsed)
    assert code == 200 and png.startswith(b"\x89PNG")
    assert eventually(lambda: metric(faults, "diptych_requests_in_flight") == 0)
    assert metric(faults, "diptych_requests_total", method="POST /generate", code="504") == before_504 + 1


def test_an_oversized_body_streamed_slowly_is_cut_off(faults):
    """1 MB limit: a 4 MB chunked upload at ~1 MB/s is answered 413 long before its end;
    a declared Content-Length over the limit is answered before any body is sent."""
    sock = connect(faults)
    sock.sendall(request_head("/classify", chunked=True))
    sent, chunk = 0, b"%x\r\n%s\r\n" % (100_000, b" " * 100_000)
    while sent < 4_000_000 and not select.select([sock], [], [], 0.1)[0]:  # until an answer can be read
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += 100_000
    code, body = read_response(sock)
    sock.close()
    assert code == 413 and json.loads(body)["detail"][0]["type"] == "limit_exceeded", body
    assert sent < 4_000_000
    sock = connect(faults)
    sock.sendall(request_head("/classify", 5_000_000))
    code, body = read_response(sock)
    sock.close()
    assert code == 413 and json.loads(body)["detail"][0]["loc"] == ["body"]


# -- destructive: the worker killed (it comes back), then SIGTERM (the server exits) ----------


def test_a_killed_worker_is_restarted_and_serves_again(faults):
    (worker,) = worker_processes(faults)
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    faults.wait("/readyz", timeout=240)
    (restarted,) = worker_processes(faults)
    assert restarted.pid != worker.pid
    assert generate(faults).status_code == 200
    with grpc.insecure_channel(faults.grpc_target) as channel:
        assert eventually(lambda: health(channel) == health_pb2.HealthCheckResponse.SERVING)
        assert len(diptych_pb2_grpc.DiptychStub(channel).Generate(pb.GenerateRequest(seed=1, count=2),
                                                                  timeout=30).images) == 2


def test_sigterm_under_load_drains_then_exits(faults):
    """SIGTERM while the server holds requests (two still sending their bodies, which hold no
    slot yet, and one of a steady load, in a slot): each is answered 200; what arrives after is answered or
    refused (a 503, or a closed connection: never a hang past the exit); gRPC keeps serving
    while HTTP drains and stops with the process; the process exits 0, within the grace
    period (the traffic timeout, then `timeout_s` for gRPC; generous margins here)."""
    held = []
    for seed in (11, 12):
        body = json.dumps({"seed": seed, "count": 2, "format": "json"}).encode()
        sock = connect(faults)
        sock.sendall(request_head("/generate", len(body)) + body[:5])
        held.append((sock, body))
    assert eventually(lambda: metric(faults, "diptych_requests_receiving") == 2)
    stopping, counting, results, pending = threading.Event(), threading.Lock(), [], set()

    def load() -> None:
        with httpx.Client(base_url=faults.url, timeout=60) as client:
            for number in itertools.count():
                if stopping.is_set():
                    return
                with counting:
                    pending.add(number)
                try:
                    outcome = client.post("/generate", json={"seed": number}).status_code
                except httpx.TransportError as error:
                    outcome = type(error).__name__
                with counting:
                    pending.discard(number)
                    results.append((number, outcome))

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        assert eventually(lambda: len(results) >= 2)  # the load is steady
        at_signal = {}

        def signal_while_the_load_holds_a_slot() -> bool:
            with counting:  # no request of the load starts or ends until the signal is sent
                idle = connect(faults)  # a keep-alive connection, idle: the worker closes it as its drain begins
                idle.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n")
                assert read_response(idle)[0] == 200
                if (metric(faults, "diptych_requests_receiving"), metric(faults, "diptych_requests_in_flight")) != (2, 1):
                    idle.close()
                    return False
                os.kill(faults.process.pid, signal.SIGTERM)
                at_signal.update(idle=idle, taken=set(pending), answered=len(results))
                return True

        assert eventually(signal_while_the_load_holds_a_slot)
        terminated = time.monotonic()
        assert at_signal["idle"].recv(1) == b""  # the drain has begun (a 60 s socket timeout, else)
        at_signal["idle"].close()
        with grpc.insecure_channel(faults.grpc_target) as channel:  # HTTP still drains: the held bodies are not in
            late = diptych_pb2_grpc.DiptychStub(channel).Generate(pb.GenerateRequest(seed=1), timeout=60)
        assert len(late.images) == 1
        answers = []
        for sock, body in held:
            sock.sendall(body[5:])
            answers.append(read_response(sock))
            sock.close()
        code = faults.process.wait(timeout=TRAFFIC_TIMEOUT_S + 60)
        exited = time.monotonic()
    finally:  # a failure above must not leave the load running, or the held sockets open
        stopping.set()
        for sock, _ in held:
            sock.close()
    loader.join(timeout=120)
    with grpc.insecure_channel(faults.grpc_target) as channel, pytest.raises(grpc.RpcError) as stopped:
        diptych_pb2_grpc.DiptychStub(channel).Generate(pb.GenerateRequest(seed=1), timeout=30)
    assert code == 0
    for status_code, body in answers:
        assert status_code == 200 and len(json.loads(body)["images"]) == 2
    assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not loader.is_alive(), "a request hung past the exit"
    # Answered before the signal, or in the server when it came: 200. Sent after: answered,
    # or refused. A refusal is a closed connection, when the process exits: new connections
    # wait in the listening socket's backlog until then (the arbiter holds it).
    outcomes = dict(results)
    (taken,) = at_signal["taken"]
    assert {outcome for _, outcome in results[: at_signal["answered"]]} == {200} and outcomes[taken] == 200, results
    assert set(outcomes.values()) <= {200, 503, "ReadError", "RemoteProtocolError", "ConnectError"}, results
    assert exited - terminated < TRAFFIC_TIMEOUT_S + 60
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{faults.url}/livez", timeout=5)
