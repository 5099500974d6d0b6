"""Serving benchmark: the raw SavedModel in-process against the HTTP service, in one run.

    python -m benchmarks.serving                      # classifier:latest and generator:latest
    python -m benchmarks.serving --classifier models/classifier/1 --generator models/generator/1

1. Raw: the classifier's `serving_default` signature called in this process on batches
   of 1, 8 and 32 encoded Fashion-MNIST test images (32 is the service's batch limit).
2. HTTP: `bentoml serve` on a free loopback port with the same model, driven by the load
   generator `hey` (Debian package `hey`): keep-alive workers, each posting a one-image
   JSON request back to back, at concurrency 1, 8, 32 and 64.

Prints images/s, p50/p99 latency, the mean batch the model ran, and each row's throughput
as a share of the best raw batched throughput. The load generator shares the server's CPUs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from service.core.models import locate
from service.core.runtime import Runtime, SavedModelRuntime

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


class Service:
    """`bentoml serve service.service:Diptych` on a free loopback port, until closed."""

    def __init__(self, classifier: str, generator: str, log: IO[bytes]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "3",
               "DIPTYCH_CLASSIFIER": classifier, "DIPTYCH_GENERATOR": generator, "DIPTYCH_MAX_CONCURRENCY": "256"}
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
    args = parser.parse_args()
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    hey = shutil.which("hey")
    if hey is None:
        raise SystemExit("the load generator `hey` is missing: apt-get install hey")

    path, info = locate(args.classifier)
    images = sample_images()
    work = Path(tempfile.mkdtemp(prefix="diptych-bench-"))
    body = work / "classify.json"
    body.write_text(json.dumps({"images": [base64.b64encode(images[0]).decode()], "top_k": 1}))
    print(f"classifier {info.name}:{info.version} ({info.card.get('backbone')}, {info.card['image_size'][0]} px), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.seconds:g} s per row; log in {work}")
    runtime = SavedModelRuntime(path)
    rows = [("raw", batch, bench_raw(runtime, images, batch, args.seconds)) for batch in map(int, args.batches.split(","))]
    limit = max(result["images/s"] for _, _, result in rows)  # the best raw batch: the bar to reach
    service = Service(args.classifier, args.generator, (work / "service.log").open("wb"))
    try:
        service.wait_ready()
        for concurrency in map(int, args.concurrency.split(",")):
            rows.append(("http", concurrency, load(hey, service.url, body, concurrency, args.seconds)))
    finally:
        service.close()

    print("\n| path | batch / concurrency | images/s | p50 ms | p99 ms | mean batch | of best raw |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind, size, result in rows:
        print(f"| {kind} | {size} | {result['images/s']:.1f} | {result['p50 ms']:.1f} | {result['p99 ms']:.1f} "
              f"| {result['batch']:.1f} | {result['images/s'] / limit:.0%} |")


if __name__ == "__main__":
    main()
