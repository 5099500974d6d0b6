"""The phases of a run: the raw rows in this process, then for each target its service, the
mixed load on each protocol and the pure phases, each phase one load-generator process."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np

from benchmarks.load.sampler import Sampler, memory_report, mib
from benchmarks.serving import ROOT, Service, bench_calls, bench_pool, bench_raw, litert_pool
from contract.card import ModelCard
from service.core.models import ModelInfo

MIXED = {"classify1": 4, "classify8": 2, "generate": 3, "bad": 1}
PURE = {  # phase: (request mix, concurrency: None = --concurrency)
    "classify": ({"classify1": 1, "classify8": 1}, None),
    "generate": ({"generate": 1}, None),
    "classify c1": ({"classify1": 1}, 1),
    "generate c1": ({"generate1": 1}, 1),
}


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    work: Path
    images: list[bytes]
    classifier: ModelInfo
    generator: ModelInfo


def run_target(context: Context, target: str, protocols: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The target's service, idle, then under every phase, then idle again: each phase's result
    and the memory report (with, for diptych, the runtime it serves each model on)."""
    args = context.args
    app = "service.service:Diptych" if target == "diptych" else "benchmarks.naive_service:Naive"
    log = (context.work / f"{target}.log").open("wb")
    service = Service(context.classifier.path, context.generator.path, log, runtime=args.classifier_runtime, app=app)
    sampler = Sampler(service, args.sample_every)
    try:
        service.wait_ready()
        models = httpx.get(service.url + "/models").json() if target == "diptych" else None
        time.sleep(2)
        sampler.sample()  # before: ready, warm, idle
        sampler.start()
        results = run_phases(context, service, sampler, target, protocols)
        sampler.phase = "idle"
        time.sleep(2)
        sampler.stop()
        sampler.sample()  # after: idle again
    finally:
        sampler.stopping.set()
        service.close()
        log.close()
    memory = memory_report(sampler)
    if models is not None:
        memory["runtimes"] = runtimes_of(models)
    return results, memory


def run_phases(context: Context, service: Service, sampler: Sampler, target: str,
               protocols: list[str]) -> list[dict[str, Any]]:
    """Every protocol's mixed load, then every protocol's pure phases."""
    args = context.args
    results = [run_phase(context, service, sampler, target, protocol, "mixed", MIXED, args.concurrency,
                         args.duration) for protocol in protocols]
    for protocol in protocols:
        for phase, (mix, concurrency) in PURE.items():
            results.append(run_phase(context, service, sampler, target, protocol, phase, mix,
                                     concurrency or args.concurrency, args.pure_duration))
    return results


def run_phase(context: Context, service: Service, sampler: Sampler, target: str, protocol: str, phase: str,
              mix: dict[str, float], concurrency: int, duration: float) -> dict[str, Any]:
    """One load-generator process against `service`; the server's CPU from its "start" to its "end"."""
    name = f"{target}-{protocol}-{phase}".replace(" ", "-")
    spec = client_spec(context, service, target, protocol, mix, concurrency, duration)
    spec_path, out_path = context.work / f"{name}.spec.json", context.work / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    client = subprocess.Popen([sys.executable, "-m", "benchmarks.load", "--client", str(spec_path), str(out_path)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    marks, load = follow(client.stdout, sampler, phase)
    if client.wait() != 0 or "end" not in marks:
        raise SystemExit(f"the load generator failed ({name}); spec in {spec_path}")
    result = json.loads(out_path.read_text())
    cpu = marks["end"]["cpu"] - marks["start"]["cpu"]
    loaded = [s for s in sampler.samples if marks["start"]["t"] <= s["t"] <= marks["end"]["t"]]
    result.update({"target": target, "protocol": protocol, "phase": phase, "concurrency": concurrency,
                   "mix": mix, "server cpu s": cpu, "load average": [load[0], os.getloadavg()[0]],
                   "server rss MiB": [mib(sum(loaded[0]["rss"].values())), mib(sum(loaded[-1]["rss"].values()))]})
    done = result["all"]
    result["server cpu ms/request"] = 1000 * cpu / max(done["requests"], 1)
    result["server cpu ms/image"] = 1000 * cpu / done["images"] if done["images"] else None
    print_phase(result)
    return result


def client_spec(context: Context, service: Service, target: str, protocol: str, mix: dict[str, float],
                concurrency: int, duration: float) -> dict[str, Any]:
    """All a load generator needs, as JSON: where to send, what, and what the models can answer."""
    cinfo, ginfo = context.classifier, context.generator
    return {"target": target, "protocol": protocol, "url": service.url, "grpc_target": service.grpc_target,
            "concurrency": concurrency, "duration": duration, "mix": mix, "timeout": context.args.timeout,
            "images": [base64.b64encode(i).decode() for i in context.images], "labels": cinfo.card.labels,
            "classes": ginfo.card.classes, "image_size": list(ginfo.card.image_size),
            "channels": ginfo.card.channels, "max_images": 32, "max_generate": 64}


def follow(stdout: IO[str], sampler: Sampler, phase: str) -> tuple[dict[str, dict[str, Any]], list[float]]:
    """A sample and the load average at the load generator's "start" and "end": the timed load."""
    marks, load = {}, []
    for line in stdout:
        if line.strip() in ("start", "end"):
            sampler.phase = phase if line.strip() == "start" else "between"
            marks[line.strip()] = sampler.sample()
            load.append(os.getloadavg()[0])
    return marks, load


def print_phase(result: dict[str, Any]) -> None:
    done, elapsed = result["all"], result["elapsed s"]
    print(f"  {result['target']} {result['protocol']} {result['phase']}: {done['req/s']:.1f} req/s, "
          f"{done['img/s']:.1f} img/s, p50 {done['p50 ms'] or 0:.1f} ms, p99 {done['p99 ms'] or 0:.1f} ms, 5xx "
          f"{done['5xx']}, mismatches {done['mismatches']}, lost {done['lost']}, transport "
          f"{done['transport errors']}; server CPU {result['server cpu s'] / elapsed:.2f} cores, client CPU "
          f"{result['client cpu s'] / elapsed:.2f} cores, load average {result['load average'][0]:.1f}", flush=True)
    for example in result["examples"][:5]:
        print(f"    ! {example}", flush=True)


def runtimes_of(models: Any) -> dict[str, str]:
    rows = models.get("models", models) if isinstance(models, dict) else models
    found = {}
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict):
            found[row.get("kind") or row.get("name", "?")] = row.get("runtime") or row.get("model", {}).get("runtime")
    return found


def raw_rows(context: Context, runtimes: dict[str, Any]) -> dict[str, dict[str, float]]:
    """benchmarks.serving's raw measurement (classifier), and the generator's `serving_default`
    on batches of seeded latents, alone and with each image encoded to PNG as the service does.
    `runtimes` keeps the loaded models for the second round."""
    seconds, cinfo, ginfo = context.args.raw_seconds, context.classifier, context.generator
    if not runtimes:
        from contract.runtime import SavedModelRuntime

        runtimes.update(classifier=SavedModelRuntime(cinfo.path), generator=SavedModelRuntime(ginfo.path),
                        pool=litert_pool(cinfo))
    rows = {f"classify tensorflow batch {b}": bench_raw(runtimes["classifier"], context.images, b, seconds)
            for b in (1, 8, 32)}
    rows[f"classify litert pool x{runtimes['pool'].interpreters}"] = bench_pool(
        runtimes["pool"], cinfo.card.image_size[0], context.images[0], seconds)
    return {**rows, **generator_rows(runtimes["generator"], ginfo.card, seconds)}


def generator_rows(generator: Any, card: ModelCard, seconds: float) -> dict[str, dict[str, float]]:
    from service.core.images import encode_png

    rows, dim, classes = {}, card.latent_dim, len(card.classes)
    for batch in (1, 4, 32):
        inputs = {"latents": np.random.RandomState(batch).standard_normal((batch, dim)).astype(np.float32),
                  "class_ids": (np.arange(batch) % classes).astype(np.int32)}
        rows[f"generate tensorflow batch {batch}"] = bench_calls(functools.partial(generator.run, inputs), batch, seconds)

        def with_png(inputs: dict[str, np.ndarray] = inputs) -> None:
            for image in generator.run(inputs)["images"]:
                encode_png(image)

        rows[f"generate tensorflow batch {batch} + png"] = bench_calls(with_png, batch, seconds)
    return rows
