"""Serving benchmark: the raw SavedModel in-process against the HTTP and gRPC APIs, in one run.

    python -m benchmarks.serving                      # classifier:latest and generator:latest
    python -m benchmarks.serving --classifier models/classifier/1 --generator models/generator/1

1. Raw: the classifier's `serving_default` signature called in this process on batches
   of 1, 8 and 32 encoded Fashion-MNIST test images (32 is the service's batch limit);
   then the raw LiteRT pool: one thread per interpreter (one per core), each decoding an
   encoded image as the service does and running it, back to back.
2. HTTP: `bentoml serve` on a free loopback port with the same model, driven by the load
   generator `hey` (Debian package `hey`): keep-alive workers, each posting a one-image
   JSON request back to back, at concurrency 1, 8, 32 and 64: once with the classifier on
   TensorFlow, once on LiteRT (DIPTYCH_CLASSIFIER_RUNTIME).
3. gRPC, the same server: diptych.v1 `Classify` and TF Serving `Predict` (serving_default),
   one image a call, driven by `h2load` (Debian package `nghttp2-client`): N HTTP/2
   connections, each sending one gRPC call at a time back to back (as `hey` does), at the
   same concurrencies. h2load sees HTTP statuses only, so the calls answered OK are counted
   from the service's own `diptych_requests_total`.

Prints images/s, p50/p99 latency, the mean batch the model ran, and each row's throughput
against the best raw TensorFlow batch and the raw LiteRT pool. The load generators share the server's CPUs.
"""

from __future__ import annotations

import argparse
import base64
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
from pathlib import Path
from typing import IO

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from service.core.conversion import Conversion, convert_and_verify
from service.core.images import decode
from service.core.models import ModelInfo, locate
from service.core.runtime import LITERT, TENSORFLOW, LiteRTRuntime, Runtime, SavedModelRuntime, cores

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
    for _ in range(5):
        runtime.run(inputs)
    latencies, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        began = time.perf_counter()
        runtime.run(inputs)
        latencies.append(time.perf_counter() - began)
    return {**summarise(latencies, batch * len(latencies), time.perf_counter() - start), "batch": batch}


def bench_pool(path: str, info: ModelInfo, image: bytes, seconds: float) -> dict[str, float]:
    """One thread per interpreter, each decoding `image` and running it at batch 1, back to back."""
    interpreters = cores()
    converted = Conversion.load(path) or convert_and_verify(path, info.card, interpreters)
    if not converted.verified:
        raise SystemExit(f"no verified LiteRT conversion: {converted.report['reason']}")
    pool, size = LiteRTRuntime(converted.flatbuffer, interpreters), info.card["image_size"][0]
    latencies: list[float] = []

    def classify_back_to_back(until: float) -> None:
        while (began := time.perf_counter()) < until:
            pool.run({"images": decode(image, size, "image")[None]})
            latencies.append(time.perf_counter() - began)  # list.append is atomic

    classify_back_to_back(time.perf_counter() + 1)  # warm up
    latencies.clear()
    start = time.perf_counter()
    threads = [threading.Thread(target=classify_back_to_back, args=(start + seconds,)) for _ in range(interpreters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {**summarise(latencies, len(latencies), time.perf_counter() - start), "batch": 1}


def load(hey: str, url: str, body: Path, concurrency: int, seconds: float) -> dict[str, float]:
    """`hey`: `concurrency` keep-alive workers posting a one-image request back to back."""
    command = [hey, "-c", str(concurrency), "-m", "POST", "-T", "application/json", "-D", str(body), "-o", "csv"]
    subprocess.run([*command, "-z", "2s", url + "/classify"], capture_output=True, check=True)  # warm up
    before = batch_sizes(url)
    rows = subprocess.run([*command, "-z", f"{seconds:g}s", url + "/classify"], capture_output=True, text=True,
                          check=True).stdout.splitlines()[1:]
    items, calls = (after - was for was, after in zip(before, batch_sizes(url)))
    # response-time, DNS+dialup, DNS, request-write, response-delay, response-read, status-code, offset
    done = [(float(row[0]), float(row[7])) for row in map(lambda line: line.split(","), rows) if row[6] == "200"]
    if len(done) < len(rows):
        print(f"  ! {len(rows) - len(done)} of {len(rows)} requests failed at concurrency {concurrency}", file=sys.stderr)
    elapsed = max(offset + latency for latency, offset in done)
    return {**summarise([latency for latency, _ in done], len(done), elapsed), "batch": items / max(calls, 1)}


def batch_sizes(url: str) -> tuple[float, float]:
    """(items, model calls) of the classifier so far, from the service's own /metrics."""
    samples = [sample for family in text_string_to_metric_families(httpx.get(url + "/metrics").text)
               if family.name == "diptych_batch_size" for sample in family.samples
               if sample.labels.get("model") != "generator"]
    return (sum(s.value for s in samples if s.name.endswith("_sum")),
            sum(s.value for s in samples if s.name.endswith("_count")))


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
    before, ok_before = batch_sizes(service.url), answered(service.url, method)
    subprocess.run([*command, "-D", f"{seconds:g}", "--log-file", str(log)], capture_output=True, check=True)
    items, calls = (after - was for was, after in zip(before, batch_sizes(service.url)))
    # start time (µs since the epoch), HTTP status, duration (µs)
    done = [(int(start), int(micros)) for start, _, micros in (line.split("\t") for line in log.read_text().splitlines())]
    ok = answered(service.url, method) - ok_before
    if ok < len(done):
        print(f"  ! {len(done) - ok:g} of {len(done)} gRPC calls failed at concurrency {concurrency}", file=sys.stderr)
    elapsed = (max(start + micros for start, micros in done) - min(start for start, _ in done)) / 1e6
    return {**summarise([micros / 1e6 for _, micros in done], int(ok), elapsed), "batch": items / max(calls, 1)}


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


class Service:
    """`bentoml serve service.service:Diptych` on a free loopback port, until closed."""

    def __init__(self, classifier: str, generator: str, log: IO[bytes], runtime: str = "auto") -> None:
        port, grpc_port = free_port(), free_port()
        self.url, self.grpc_target = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "3",
               "DIPTYCH_CLASSIFIER": classifier, "DIPTYCH_GENERATOR": generator, "DIPTYCH_MAX_CONCURRENCY": "256",
               "DIPTYCH_GRPC_PORT": str(grpc_port), "DIPTYCH_GRPC_HOST": "127.0.0.1",
               "DIPTYCH_CLASSIFIER_RUNTIME": runtime}
        bentoml = Path(sys.executable).with_name("bentoml")
        self.process = subprocess.Popen(
            [str(bentoml), "serve", "service.service:Diptych", "--host", "127.0.0.1", "--port", str(port)],
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

    def close(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", default="classifier:latest", help="store tag or SavedModel folder")
    parser.add_argument("--generator", default="generator:latest", help="the service needs one to start")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per row")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--runtimes", default=f"{TENSORFLOW},{LITERT}",
                        help="the classifier's runtime in each service run; gRPC is measured on the last")
    args = parser.parse_args()
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    hey, h2load = shutil.which("hey"), shutil.which("h2load")
    if hey is None or h2load is None:
        raise SystemExit("a load generator is missing: apt-get install hey nghttp2-client")

    path, info = locate(args.classifier)
    images = sample_images()
    work = Path(tempfile.mkdtemp(prefix="diptych-bench-"))
    body = work / "classify.json"
    body.write_text(json.dumps({"images": [base64.b64encode(images[0]).decode()], "top_k": 1}))
    bodies = grpc_bodies(images[0], work)
    print(f"classifier {info.name}:{info.version} ({info.card.get('backbone')}, {info.card['image_size'][0]} px), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.seconds:g} s per row; log in {work}")
    runtime = SavedModelRuntime(path)
    rows = [("raw tensorflow", batch, bench_raw(runtime, images, batch, args.seconds))
            for batch in map(int, args.batches.split(","))]
    raw_tf = max(result["images/s"] for _, _, result in rows)  # the best raw TF batch
    rows.append(("raw litert pool", cores(), bench_pool(path, info, images[0], args.seconds)))
    raw_litert = rows[-1][2]["images/s"]
    runtimes = args.runtimes.split(",")
    for runtime_name in runtimes:
        service = Service(args.classifier, args.generator, (work / f"service-{runtime_name}.log").open("wb"),
                          runtime_name)
        try:
            service.wait_ready()
            for concurrency in map(int, args.concurrency.split(",")):
                rows.append((f"http {runtime_name}", concurrency, load(hey, service.url, body, concurrency, args.seconds)))
            for kind, method in GRPC_CALLS.items() if runtime_name == runtimes[-1] else ():
                for concurrency in map(int, args.concurrency.split(",")):
                    rows.append((f"{kind} {runtime_name}", concurrency,
                                 load_grpc(h2load, service, method, bodies[kind], concurrency, args.seconds)))
        finally:
            service.close()

    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    print("| path | batch / concurrency | images/s | p50 ms | p99 ms | mean batch | × raw TF | of raw LiteRT |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind, size, result in rows:
        print(f"| {kind} | {size} | {result['images/s']:.1f} | {result['p50 ms']:.1f} | {result['p99 ms']:.1f} "
              f"| {result['batch']:.1f} | {result['images/s'] / raw_tf:.2f}× | {result['images/s'] / raw_litert:.0%} |")


if __name__ == "__main__":
    main()
