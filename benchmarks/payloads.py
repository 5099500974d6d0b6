"""What the payload log costs: one-image /classify throughput and p99 with the log off, at
10% and at 100% of the requests (CloudEvents written to a JSON-lines file).

    python -m benchmarks.payloads --classifier models/classifier/1 --generator models/generator/1

One service per row, each driven for `--seconds` by `--concurrency` clients posting back to
back (benchmarks.rollout's client). The log's writer is a thread with a bounded queue: a
request only puts two events in it, so the cost should be the events' preparation (an
image's sha256, the top-1) and the writer's share of the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.rollout import classify
from benchmarks.serving import Service, sample_images

ROWS = {"off": None, "10%": 0.1, "100%": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.payloads", description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", required=True, help="a classifier version folder")
    parser.add_argument("--generator", required=True, help="a generator version folder")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    print(f"{'payload log':12} {'requests/s':>11} {'p99 ms':>8} {'events':>8}")
    with tempfile.TemporaryDirectory() as scratch:
        for row, sample in ROWS.items():
            print(f"{row:12} " + measure(Path(scratch), row, sample, args))


def measure(scratch: Path, row: str, sample: float | None, args: argparse.Namespace) -> str:
    log_file = scratch / f"payloads-{row.strip('%')}.jsonl"
    settings = {"DIPTYCH_PAYLOAD_LOG": str(log_file)} if sample is not None else {}
    if sample is not None:
        name = json.loads(Path(args.classifier, "model_card.json").read_text())["name"]
        settings["DIPTYCH_REPOSITORY"] = json.dumps({name: {"log_sample": sample}})
    with (scratch / f"service-{row.strip('%')}.log").open("wb") as log:
        service = Service(args.classifier, args.generator, log, settings=settings)
        try:
            service.wait_ready()
            answers = asyncio.run(drive(service.url, args.concurrency, args.seconds))
        finally:
            service.close()
    seconds = [latency for _, latency, status, _ in answers if status == 200]
    events = len(log_file.read_text().splitlines()) if log_file.exists() else 0
    return f"{len(seconds) / args.seconds:11.1f} {1000 * np.percentile(seconds, 99):8.1f} {events:8}"


async def drive(url: str, concurrency: int, seconds: float) -> list:
    body = {"images": [base64.b64encode(sample_images(1)[0]).decode()], "top_k": 1}
    answers: list = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        clients = [asyncio.create_task(classify(client, body, answers, stop)) for _ in range(concurrency)]
        started = time.time()
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*clients)
    return [answer for answer in answers if answer[0] < started + seconds]


if __name__ == "__main__":
    main()
