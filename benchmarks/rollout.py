"""Hot reload under load: a new classifier version, then a broken one, copied into the
model repository of a serving `bentoml serve` while clients keep classifying.

    python -m benchmarks.rollout --classifier models/classifier/1 --generator models/generator/1

The classifier export is copied in as version 1 of a scratch repository (`model_root`,
polled every second; the store is off). `--concurrency` clients post one-image /classify
requests back to back for the whole run; each answer is recorded with its time, latency,
status and `X-Model-Version`. Phases:

1. steady: `--seconds` with version 1;
2. switch: version 2 (the same export, copied in as a user rolls out: into a hidden folder,
   then renamed) until version 1 is unloaded, and `--seconds` more;
3. broken: version 3, whose saved_model.pb is garbage, for `--seconds`.

Reported, and checked (exit 1 when one fails): no request failed; every answer names a
version that was available when it was served (1 or 2; never 3, never 2 before it was
available); p99 during the switch within 2x the steady p99; the worker's RSS after version
1's unload back within 10% of one version's footprint of what it was with version 1 alone
(the footprint: RSS with both loaded minus RSS with one); the broken version reported as
failed in /models, with the load failure counted in the metrics and the log.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from benchmarks.serving import Service, sample_images


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", required=True, help="a classifier version folder (models/classifier/1)")
    parser.add_argument("--generator", required=True, help="a generator version folder")
    parser.add_argument("--concurrency", type=int, default=8, help="clients, each one request at a time")
    parser.add_argument("--seconds", type=float, default=20, help="length of the steady and broken phases")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        failures = run(args, Path(scratch))
    raise SystemExit(1 if failures else 0)


def run(args: argparse.Namespace, scratch: Path) -> list[str]:
    root = scratch / "models"
    add_version(root, 1, Path(args.classifier))
    log = (scratch / "service.log").open("wb")
    service = Service("classifier", args.generator, log, settings={
        "DIPTYCH_MODEL_ROOT": str(root), "DIPTYCH_STORE": "false", "DIPTYCH_POLL_S": "1"})
    try:
        service.wait_ready()
        return asyncio.run(drive(service, root, Path(args.classifier), args))
    finally:
        service.close()
        log.close()


async def drive(service: Service, root: Path, export: Path, args: argparse.Namespace) -> list[str]:
    body = {"images": [base64.b64encode(sample_images(1)[0]).decode()], "top_k": 1}
    answers: list[tuple[float, float, int, str]] = []  # (start, seconds, status, version); Unix time
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        clients = [asyncio.create_task(classify(client, body, answers, stop)) for _ in range(args.concurrency)]
        marks = await phases(client, service, root, export, args.seconds)
        stop.set()
        await asyncio.gather(*clients)
        status = (await client.get("/models")).json()
        metrics = (await client.get("/metrics")).text
    return report(answers, marks, status, metrics)


async def classify(client: httpx.AsyncClient, body: dict, answers: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        start = time.time()
        try:
            response = await client.post("/classify", json=body)
            answers.append((start, time.time() - start, response.status_code,
                            response.headers.get("x-model-version", "")))
        except httpx.TransportError:
            answers.append((start, time.time() - start, 0, ""))


async def phases(client: httpx.AsyncClient, service: Service, root: Path, export: Path,
                 seconds: float) -> dict[str, float]:
    marks = {"start": time.time()}
    await asyncio.sleep(seconds)
    marks["rss one"] = rss(service)
    marks["copied 2"] = time.time()
    add_version(root, 2, export)
    marks["available 2"] = await until(client, "2", "available")  # the server's own time of the switch
    marks["rss two"] = rss(service)
    await until(client, "1", None)
    marks["unloaded 1"] = time.time()
    await asyncio.sleep(seconds)
    marks["rss after"] = rss(service)
    marks["switch end"] = time.time()
    broken = add_version(root, 3, export)
    for part in ("saved_model.pb", "litert/model.tflite"):  # a published export carries its conversion
        if (broken / part).is_file():
            (broken / part).write_bytes(b"garbage")
    marks["failed 3"] = await until(client, "3", "failed")
    await asyncio.sleep(seconds)
    marks["end"] = time.time()
    return marks


async def until(client: httpx.AsyncClient, version: str, state: str | None, timeout: float = 300) -> float:
    """When the classifier's `version` entered `state` (None: gone), by /models' `since`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        models = (await client.get("/models")).json()["models"]
        found = next((entry for entry in models if entry["name"] == "classifier" and entry["version"] == version), None)
        if (found is None and state is None) or (found is not None and found["state"] == state):
            return found["since"] if found else time.time()
        await asyncio.sleep(0.1)
    raise TimeoutError("the repository never reached the expected state")


def add_version(root: Path, number: int, export: Path) -> Path:
    staging = root / "classifier" / f".{number}.partial"
    shutil.copytree(export, staging)
    return staging.rename(root / "classifier" / str(number))


def rss(service: Service) -> int:
    return sum(child.memory_info().rss for child in psutil.Process(service.process.pid).children(recursive=True))


def report(answers: list, marks: dict[str, float], status: dict, metrics: str) -> list[str]:
    steady = [seconds for start, seconds, *_ in answers if start < marks["copied 2"]]
    switch = [seconds for start, seconds, *_ in answers if marks["copied 2"] <= start < marks["switch end"]]
    failed = [answer for answer in answers if answer[2] != 200]
    early = [answer for answer in answers if answer[3] == "2" and answer[0] + answer[1] < marks["available 2"]]
    wrong = [answer for answer in answers if answer[3] not in ("1", "2")]
    footprint = marks["rss two"] - marks["rss one"]
    rows = {
        "requests": len(answers), "failed": len(failed), "answers naming an unavailable version": len(early) + len(wrong),
        "p99 steady (ms)": 1000 * np.percentile(steady, 99), "p99 switch (ms)": 1000 * np.percentile(switch, 99),
        "load to available (s)": marks["available 2"] - marks["copied 2"],
        "available to unloaded (s)": marks["unloaded 1"] - marks["available 2"],
        "RSS one version (MiB)": marks["rss one"] / 2**20, "RSS two versions (MiB)": marks["rss two"] / 2**20,
        "RSS after unload (MiB)": marks["rss after"] / 2**20,
    }
    for name, value in rows.items():
        print(f"{name:40} {value:10.1f}" if isinstance(value, float) else f"{name:40} {value:10}")
    broken = [entry for entry in status["models"] if entry["name"] == "classifier" and entry["version"] == "3"]
    checks = {
        "no request failed": not failed,
        "every answer names an available version": not early and not wrong,
        "p99 during the switch within 2x steady": rows["p99 switch (ms)"] <= 2 * rows["p99 steady (ms)"],
        "RSS back within 10% of a version's footprint": marks["rss after"] - marks["rss one"] <= 0.1 * footprint,
        "the broken version is reported": bool(broken) and broken[0]["state"] == "failed",
        "its failure is counted": 'diptych_model_loads_total{model="classifier",outcome="failed"}' in metrics,
    }
    for name, passed in checks.items():
        print(f"{'ok' if passed else 'FAILED':6} {name}")
    return [name for name, passed in checks.items() if not passed]


if __name__ == "__main__":
    main()
