"""Serving benchmark: the raw SavedModel in-process against the HTTP and gRPC APIs, in one run.

    python -m benchmarks.serving                      # classifier:latest and generator:latest
    python -m benchmarks.serving --classifier models/classifier/1 --generator models/generator/1

1. Raw: the classifier's `serving_default` signature called in this process on batches
   of 1, 8 and 32 encoded Fashion-MNIST test images (32 is the service's batch limit);
   then the raw LiteRT pool: one thread per interpreter (one per core), each decoding an
   encoded image as the service does and running it, back to back.
2. HTTP: `bentoml serve` on a free loopback port with the same model, driven by the load
   generator `hey` (Debian package `hey`): keep-alive workers, each posting a one-image
   JSON request back to back, at concurrency 1, 8, 32 and 64: one service with the
   classifier on TensorFlow, one on LiteRT (DIPTYCH_CLASSIFIER_RUNTIME).
3. gRPC, the LiteRT server: diptych.v1 `Classify` and TF Serving `Predict` (serving_default),
   one image a call, driven by `h2load` (Debian package `nghttp2-client`): N HTTP/2
   connections, each sending one gRPC call at a time back to back (as `hey` does), at the
   same concurrencies. h2load sees HTTP statuses only, so the calls answered OK are counted
   from the service's own `diptych_requests_total`.

Every row is measured in several rounds, interleaved with the other rows (both services
run side by side), and keeps its best round: on a machine shared with other jobs, they
only ever slow a round down, and interleaving spreads their load over every row alike.
Prints images/s, p50/p99 latency, the mean batch the model ran, each row's throughput
against the best raw TensorFlow batch and the raw LiteRT pool, and the CPU time one image
cost (the service's processes, from /proc; this process for the raw rows), which other jobs
on the machine do not change: cores / CPU time is what the row would do on cores of its own
(the load generators, which share the server's CPUs here, not counted). Of that CPU time,
"front end" is the workers' event-loop threads: the protocol's own cost (HTTP or gRPC
server, parsing, validation, the response), beside decoding and the model in the batch
workers.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from contract.litert import Conversion, convert_and_verify
from contract.runtime import LITERT, TENSORFLOW, LiteRTRuntime, Runtime, SavedModelRuntime, cores
from service.core.images import decode
from service.core.models import ModelInfo, locate

ROOT = Path(__file__).resolve().parents[1]


def sample_images(count: int = 32) -> list[bytes]:
    from service.core.images import encode_png
    from training.data import load_dataset

    test = load_dataset("fashion-mnist", split="test")
    return [encode_png(image) for image in test.images[:count]]


def summarise(latencies: list[float], images: int, seconds: float) -> dict[str, float]:
    return {"images/s": images / seconds, "p50 ms": 1000 * np.percentile(latencies, 50),
            "p99 ms": 1000 * np.percentile(latencies, 99)}


def bench_raw(runtime: Runtime, images: list[bytes], batch: int, seconds: float) -> dict[str, float]:
    """Back-to-back calls of the loaded signature on `batch` images."""
    inputs = {"image_bytes": np.array(images[:batch], dtype=object)}
    return bench_calls(functools.partial(runtime.run, inputs), batch, seconds)


def bench_calls(call: Callable[[], object], batch: int, seconds: float) -> dict[str, float]:
    """`call` (one call on `batch` items) back to back in this thread, after 5 warm-up calls;
    CPU time is this whole process's (also benchmarks.load's raw generator rows)."""
    for _ in range(5):
        call()
    latencies, start, cpu = [], time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        began = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - began)
    images = batch * len(latencies)
    return {**summarise(latencies, images, time.perf_counter() - start), "batch": batch,
            "cpu ms": 1000 * (time.process_time() - cpu) / images}


def litert_pool(info: ModelInfo) -> LiteRTRuntime:
    """The service's pool for this model: one interpreter per core, from the stored conversion."""
    converted = Conversion.load(info.path) or convert_and_verify(info.path, info.card, cores())
    if not converted.verified:
        raise SystemExit(f"no verified LiteRT conversion: {converted.report['reason']}")
    return LiteRTRuntime(converted.flatbuffer, cores())


def bench_pool(pool: LiteRTRuntime, size: int, image: bytes, seconds: float) -> dict[str, float]:
    """One thread per interpreter, each decoding `image` and running it at batch 1, back to back."""
    latencies: list[float] = []

    def classify_back_to_back(until: float) -> None:
        while (began := time.perf_counter()) < until:
            pool.run({"images": decode(image, size, "image")[None]})
            latencies.append(time.perf_counter() - began)  # list.append is atomic

    classify_back_to_back(time.perf_counter() + 1)  # warm up
    latencies.clear()
    start, cpu = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=classify_back_to_back, args=(start + seconds,))
               for _ in range(pool.interpreters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {**summarise(latencies, len(latencies), time.perf_counter() - start), "batch": 1,
            "cpu ms": 1000 * (time.process_time() - cpu) / len(latencies)}


def load(hey: str, service: Service, body: Path, concurrency: int, seconds: float) -> dict[str, float]:
    """`hey`: `concurrency` keep-alive workers posting a one-image request back to back."""
    url = service.url
    command = [hey, "-c", str(concurrency), "-m", "POST", "-T", "application/json", "-D", str(body), "-o", "csv"]
    subprocess.run([*command, "-z", "2s", url + "/classify"], capture_output=True, check=True)  # warm up
    before = served(service)
    rows = subprocess.run([*command, "-z", f"{seconds:g}s", url + "/classify"], capture_output=True, text=True,
                          check=True).stdout.splitlines()[1:]
    items, calls, cpu, front_end = served(service) - before
    # response-time, DNS+dialup, DNS, request-write, response-delay, response-read, status-code, offset
    done = [(float(row[0]), float(row[7])) for row in map(lambda line: line.split(","), rows) if row[6] == "200"]
    if len(done) < len(rows):
        print(f"  ! {len(rows) - len(done)} of {len(rows)} requests failed at concurrency {concurrency}", file=sys.stderr)
    elapsed = max(offset + latency for latency, offset in done)
    return {**summarise([latency for latency, _ in done], len(done), elapsed), "batch": items / max(calls, 1),
            "cpu ms": 1000 * cpu / max(items, 1), "front-end ms": 1000 * front_end / max(items, 1)}


def batch_sizes(url: str) -> tuple[float, float]:
    """(items, model calls) of the classifier so far, from the service's own /metrics."""
    samples = [sample for family in text_string_to_metric_families(httpx.get(url + "/metrics").text)
               if family.name == "diptych_batch_size" for sample in family.samples
               if sample.labels.get("model") != "generator"]
    return (sum(s.value for s in samples if s.name.endswith("_sum")),
            sum(s.value for s in samples if s.name.endswith("_count")))


def served(service: Service) -> np.ndarray:
    """[items, model calls] of the classifier so far, the CPU seconds the service has used,
    and those of its front end (the workers' event loops)."""
    return np.array([*batch_sizes(service.url), service.cpu_seconds(), service.front_end_cpu_seconds()])


def answered(url: str, method: str) -> float:
    """gRPC calls of `method` answered OK so far, from the service's own /metrics."""
    return sum(sample.value for family in text_string_to_metric_families(httpx.get(url + "/metrics").text)
               if family.name == "diptych_requests" for sample in family.samples
               if sample.name == "diptych_requests_total" and sample.labels.get("method") == method
               and sample.labels.get("code") == "OK")


def load_grpc(h2load: str, service: Service, method: str, body: Path, concurrency: int,
              seconds: float) -> dict[str, float]:
    """`h2load`: `concurrency` HTTP/2 connections, each sending one gRPC call at a time."""
    log = body.with_suffix(".log")
    command = [h2load, "-c", str(concurrency), "-m", "1", "-d", str(body), "-H", "content-type: application/grpc",
               "-H", "te: trailers", f"http://{service.grpc_target}{method}"]
    subprocess.run([*command, "-D", "2"], capture_output=True, check=True)  # warm up
    before, ok_before = served(service), answered(service.url, method)
    log.unlink(missing_ok=True)  # h2load appends to its log file
    subprocess.run([*command, "-D", f"{seconds:g}", "--log-file", str(log)], capture_output=True, check=True)
    items, calls, cpu, front_end = served(service) - before
    # start time (µs since the epoch), HTTP status, duration (µs)
    done = [(int(start), int(micros)) for start, _, micros in (line.split("\t") for line in log.read_text().splitlines())]
    ok = answered(service.url, method) - ok_before
    if ok < len(done):
        print(f"  ! {len(done) - ok:g} of {len(done)} gRPC calls failed at concurrency {concurrency}", file=sys.stderr)
    elapsed = (max(start + micros for start, micros in done) - min(start for start, _ in done)) / 1e6
    return {**summarise([micros / 1e6 for _, micros in done], int(ok), elapsed), "batch": items / max(calls, 1),
            "cpu ms": 1000 * cpu / max(items, 1), "front-end ms": 1000 * front_end / max(items, 1)}


def grpc_message(message: bytes) -> bytes:
    """A gRPC request body: uncompressed, a 4-byte big-endian length, the message."""
    return b"\0" + struct.pack(">I", len(message)) + message


GRPC_CALLS = {"grpc diptych.v1": "/diptych.v1.Diptych/Classify",
              "grpc tf-serving": "/tensorflow.serving.PredictionService/Predict"}


def grpc_bodies(image: bytes, work: Path) -> dict[str, Path]:
    """One-image requests of diptych.v1 Classify and TF Serving Predict, as h2load sends them."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from proto.diptych.v1 import diptych_pb2

    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = "classifier"
    predict.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
    messages = {"grpc diptych.v1": diptych_pb2.ClassifyRequest(images=[image], top_k=1), "grpc tf-serving": predict}
    bodies = {}
    for kind, message in messages.items():
        bodies[kind] = work / f"{kind.split()[-1]}.grpc"
        bodies[kind].write_bytes(grpc_message(message.SerializeToString()))
    return bodies


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def parent_and_ticks(stat: Path) -> tuple[int, int] | None:
    """(parent pid, user + system CPU ticks) from a /proc stat file; None once it is gone."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()  # the fields after "pid (name)"
    except OSError:  # the process exited meanwhile
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12])


class Service:
    """`bentoml serve service.service:Diptych` (or another `app`, e.g. benchmarks.load's naive
    peer, which reads the same DIPTYCH_* model variables) on a free loopback port, until closed."""

    def __init__(self, classifier: str, generator: str, log: IO[bytes], runtime: str = "auto",
                 app: str = "service.service:Diptych", workers: int = 1, settings: dict[str, str] | None = None) -> None:
        port, grpc_port = free_port(), free_port()
        self.url, self.grpc_target = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
        # A BENTOML_HOME of its own: `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir
        # at start, which would wipe the metrics of a service already running from the same home.
        home = Path(log.name).with_suffix(".home")
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "3", "BENTOML_HOME": str(home),
               "DIPTYCH_CLASSIFIER": classifier, "DIPTYCH_GENERATOR": generator, "DIPTYCH_MAX_CONCURRENCY": "256",
               "DIPTYCH_GRPC_PORT": str(grpc_port), "DIPTYCH_GRPC_HOST": "127.0.0.1",
               "DIPTYCH_CLASSIFIER_RUNTIME": runtime, **(settings or {})}
        if workers > 1:  # BentoML worker processes, the cores shared out among their interpreters
            env["BENTOML_CONFIG_OVERRIDES"] = json.dumps({"services": {"diptych": {"workers": workers}}})
            env["DIPTYCH_INTERPRETERS"] = str(max(1, cores() // workers))
        bentoml = Path(sys.executable).with_name("bentoml")
        self.process = subprocess.Popen(
            [str(bentoml), "serve", app, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the service exited during start-up")
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError("the service did not become ready")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the service's processes so far (from /proc; its workers
        run in sessions of their own, so they are found by ancestry): unlike throughput, it
        does not depend on what else the machine is running."""
        processes = {int(stat.parent.name): read for stat in Path("/proc").glob("[0-9]*/stat")
                     if (read := parent_and_ticks(stat))}  # pid: (parent pid, CPU ticks)

        def descends(pid: int) -> bool:
            while pid > 1 and pid != self.process.pid:
                pid = processes.get(pid, (0, 0))[0]
            return pid == self.process.pid

        return sum(ticks for pid, (_, ticks) in processes.items() if descends(pid)) / os.sysconf("SC_CLK_TCK")

    def front_end_cpu_seconds(self) -> float:
        """CPU time so far of the workers' main threads: their event loop runs the HTTP and
        gRPC servers, parsing, validation and responses; decoding and the model run in the
        batch workers' threads. So this is what a protocol costs on top of the model."""
        main_threads = (read for stat in Path("/proc").glob("[0-9]*/task/[0-9]*/stat")
                        if stat.parts[2] == stat.parts[4] and (read := parent_and_ticks(stat)))
        # a worker's main thread: its process is a child of `bentoml serve`
        return sum(ticks for parent, ticks in main_threads if parent == self.process.pid) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


def models_parser(prog: str, doc: str, generator_help: str) -> argparse.ArgumentParser:
    """A benchmark's parser, described by its docstring's first paragraph, with the two models
    every `Service` needs to start (benchmarks.serving and benchmarks.load alike)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--classifier", default="classifier:latest", help="store tag or SavedModel folder")
    parser.add_argument("--generator", default="generator:latest", help=generator_help)
    return parser


def main() -> None:
    parser = models_parser("python -m benchmarks.serving", __doc__, "the service needs one to start")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per row and round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every row, interleaved; each row keeps its best (other jobs only slow one down)")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--runtimes", default=f"{TENSORFLOW},{LITERT}",
                        help="the classifier's runtime in each service; gRPC is measured on the last")
    parser.add_argument("--workers", type=int, default=1,
                        help="BentoML worker processes per service, each with cores/workers interpreters per model")
    args = parser.parse_args()
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    hey, h2load = shutil.which("hey"), shutil.which("h2load")
    if hey is None or h2load is None:
        raise SystemExit("a load generator is missing: apt-get install hey nghttp2-client")

    info = locate(args.classifier)
    path = info.path
    images = sample_images()
    work = Path(tempfile.mkdtemp(prefix="diptych-bench-"))
    body = work / "classify.json"
    body.write_text(json.dumps({"images": [base64.b64encode(images[0]).decode()], "top_k": 1}))
    bodies = grpc_bodies(images[0], work)
    print(f"classifier {info.name}:{info.version} ({info.card.backbone}, {info.card.image_size[0]} px), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, best of {args.rounds} rounds of "
          f"{args.seconds:g} s per row, {args.workers} worker(s) per service; log in {work}")
    batches, concurrencies = [int(n) for n in args.batches.split(",")], [int(n) for n in args.concurrency.split(",")]
    runtime, pool, size = SavedModelRuntime(path), litert_pool(info), info.card.image_size[0]
    measures: dict[tuple[str, int], Callable[[], dict[str, float]]] = {
        **{("raw tensorflow", batch): functools.partial(bench_raw, runtime, images, batch, args.seconds)
           for batch in batches},
        ("raw litert pool", cores()): functools.partial(bench_pool, pool, size, images[0], args.seconds),
    }
    runtimes = args.runtimes.split(",")
    generator = locate(args.generator).path  # folders: each service has a model store (BENTOML_HOME) of its own
    services = {name: Service(path, generator, (work / f"service-{name}.log").open("wb"), name, workers=args.workers)
                for name in runtimes}
    try:
        for name, service in services.items():
            service.wait_ready()
            measures.update({(f"http {name}", concurrency): functools.partial(
                load, hey, service, body, concurrency, args.seconds) for concurrency in concurrencies})
        measures.update({(f"{kind} {runtimes[-1]}", concurrency): functools.partial(
            load_grpc, h2load, services[runtimes[-1]], method, bodies[kind], concurrency, args.seconds)
            for kind, method in GRPC_CALLS.items() for concurrency in concurrencies})
        best: dict[tuple[str, int], dict[str, float]] = {}
        for _ in range(args.rounds):
            for row, measure in measures.items():
                result = measure()
                if row not in best or result["images/s"] > best[row]["images/s"]:
                    best[row] = result
    finally:
        for service in services.values():
            service.close()

    raw_tf = max(result["images/s"] for (kind, _), result in best.items() if kind == "raw tensorflow")
    raw_litert = best[("raw litert pool", cores())]["images/s"]
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    print("| path | batch / concurrency | images/s | p50 ms | p99 ms | mean batch | × raw TF | of raw LiteRT "
          f"| CPU ms / image | of which front end | images/s on {cores()} free cores |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (kind, size), result in best.items():
        front_end = f"{result['front-end ms']:.2f}" if "front-end ms" in result else "—"
        print(f"| {kind} | {size} | {result['images/s']:.1f} | {result['p50 ms']:.1f} | {result['p99 ms']:.1f} "
              f"| {result['batch']:.1f} | {result['images/s'] / raw_tf:.2f}× | {result['images/s'] / raw_litert:.0%} "
              f"| {result['cpu ms']:.1f} | {front_end} | {1000 * cores() / result['cpu ms']:.0f} |")


if __name__ == "__main__":
    main()
