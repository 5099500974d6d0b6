"""Serving benchmark: the raw SavedModel in-process against the HTTP service, in one run.

    python -m benchmarks.serving                      # classifier:latest and generator:latest
    python -m benchmarks.serving --classifier models/classifier/1 --generator models/generator/1

1. Raw: the classifier's `serving_default` signature called in this process on batches
   of 1, 8 and 32 encoded Fashion-MNIST test images (32 is the service's batch limit).
2. HTTP: `bentoml serve` on a free loopback port with the same model, driven by an
   asyncio load generator (keep-alive connections, each sending one-image JSON requests
   back to back) at concurrency 1, 8, 32 and 64.

Prints images/s, p50/p99 latency and the HTTP throughput as a share of the raw batched
throughput at the limit. The load generator runs on the same CPUs as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def sample_images(count: int = 256) -> list[bytes]:
    from service.core.images import encode_png
    from training.data import load_dataset

    test = load_dataset("fashion-mnist", split="test")
    return [encode_png(image) for image in test.images[:count]]


def summarise(latencies: list[float], images: int, seconds: float) -> dict[str, float]:
    return {"images/s": images / seconds, "p50 ms": 1000 * np.percentile(latencies, 50),
            "p99 ms": 1000 * np.percentile(latencies, 99)}


def bench_raw(path: str, images: list[bytes], batch: int, seconds: float) -> dict[str, float]:
    """Back-to-back calls of the loaded signature on `batch` images."""
    from service.core.runtime import SavedModelRuntime

    runtime = SavedModelRuntime(path)
    inputs = {"image_bytes": np.array(images[:batch], dtype=object)}
    for _ in range(5):
        runtime.run(inputs)
    latencies, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        began = time.perf_counter()
        runtime.run(inputs)
        latencies.append(time.perf_counter() - began)
    return summarise(latencies, batch * len(latencies), time.perf_counter() - start)


async def load(url: str, images: list[bytes], concurrency: int, seconds: float) -> dict[str, float]:
    """`concurrency` clients, each posting one image at a time for `seconds`."""
    import httpx

    bodies = [{"images": [base64.b64encode(image).decode()], "top_k": 1} for image in images]
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def client_loop(offset: int, stop: float) -> None:
            nonlocal failures
            index = offset
            while time.perf_counter() < stop:
                began = time.perf_counter()
                try:
                    response = await client.post("/classify", json=bodies[index % len(bodies)])
                    response.raise_for_status()
                    latencies.append(time.perf_counter() - began)
                except httpx.HTTPError as error:
                    failures += 1
                    print(f"  ! {type(error).__name__}: {error}", file=sys.stderr)
                index += concurrency

        warm_stop = time.perf_counter() + min(2.0, seconds / 4)
        await asyncio.gather(*(client_loop(i, warm_stop) for i in range(concurrency)))
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(i, start + seconds) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    if failures:
        print(f"  ! {failures} requests failed at concurrency {concurrency}", file=sys.stderr)
    return summarise(latencies, len(latencies), elapsed)


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
        import httpx

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

    from service.core.models import locate

    path, info = locate(args.classifier)
    images = sample_images()
    print(f"classifier {info.name}:{info.version} ({info.card.get('backbone')}, "
          f"{info.card['image_size'][0]} px), {os.cpu_count()} CPUs, {args.seconds:g} s per row")
    rows = [("raw", batch, bench_raw(path, images, batch, args.seconds)) for batch in map(int, args.batches.split(","))]
    limit = rows[-1][2]["images/s"]
    log = tempfile.NamedTemporaryFile(prefix="diptych-serve-", suffix=".log", delete=False)
    print(f"service log: {log.name}")
    service = Service(args.classifier, args.generator, log)
    try:
        service.wait_ready()
        for concurrency in map(int, args.concurrency.split(",")):
            rows.append(("http", concurrency, asyncio.run(load(service.url, images, concurrency, args.seconds))))
    finally:
        service.close()

    print(f"\n| path | batch / concurrency | images/s | p50 ms | p99 ms | of raw batch {rows[len(args.batches.split(',')) - 1][1]} |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, size, result in rows:
        print(f"| {kind} | {size} | {result['images/s']:.1f} | {result['p50 ms']:.1f} | {result['p99 ms']:.1f} "
              f"| {result['images/s'] / limit:.0%} |")


if __name__ == "__main__":
    main()
