"""The load generator, a process of its own (`python -m benchmarks.load --client SPEC OUT`), so
its CPU is not the orchestrator's: `concurrency` asyncio workers, each picking a request kind
by weight and sending it as soon as its last one is answered. It prints "start" and "end"
around the timed load, when the orchestrator reads the server's CPU time."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.load.checks import GENERATE_CLASSES, SEEDS, Checks
from benchmarks.load.protocols import Answer, GrpcTarget, HttpTarget, Lost

EXAMPLES = 20  # wrong answers kept word for word per phase; the rest are only counted
Outcome = tuple[Answer, str | None, int] | str  # (answer, what is wrong, images), or what went wrong instead


@dataclasses.dataclass
class Request:
    kind: str
    bad: str | None = None  # which bad request
    images: list[int] = dataclasses.field(default_factory=list)  # indices into the sample images
    top_k: int | None = None
    seed: int = 0
    count: int = 1
    class_: str | None = None


class Client:
    """One phase's load on one target: the workers, and what each kind of request got."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.images = [base64.b64decode(i) for i in spec["images"]]
        self.max_images, self.max_generate = spec["max_images"], spec["max_generate"]
        self.checks = Checks(spec)
        self.garbage = random.Random(7).randbytes(512)
        self.target: HttpTarget | GrpcTarget  # made in `run`, on its event loop
        self.stats: dict[str, dict[str, Any]] = {}
        self.examples: list[str] = []
        self.runtimes: Counter[str] = Counter()

    def make(self, kind: str, rng: random.Random) -> Request:
        n = len(self.images)
        if kind == "classify1":
            return Request(kind, images=[rng.randrange(n)], top_k=rng.choice((None, 1, 3, 10)))
        if kind == "classify8":
            return Request(kind, images=rng.sample(range(n), 8), top_k=rng.choice((None, 1, 3, 10)))
        if kind in ("generate", "generate1"):
            return Request(kind, seed=rng.randrange(SEEDS), count=1 if kind == "generate1" else rng.randint(1, 4),
                           class_=rng.choice(GENERATE_CLASSES))
        return Request(kind, bad=rng.choice(sorted(self.checks.bad)))

    async def send(self, request: Request) -> tuple[Answer, str | None, int]:
        """The answer, what is wrong with it (None: right), and the images it carried."""
        if request.kind.startswith("classify"):
            return await self.classify(request)
        if request.kind.startswith("generate"):
            return await self.generate(request)
        answer = await self.send_bad(request.bad)
        return answer, self.checks.check_rejected(answer, request.bad), 0

    async def classify(self, request: Request) -> tuple[Answer, str | None, int]:
        answer = await self.target.classify([self.images[i] for i in request.images], request.top_k)
        if not answer.ok:
            return answer, f"{answer.code}: {answer.message[:160]}", 0
        if answer.runtime:  # HTTP says it; diptych.v1's ModelRef has no runtime
            self.runtimes[f"classifier {answer.runtime}"] += 1
        top_k = 5 if request.top_k is None else request.top_k
        return answer, self.checks.check_predictions(answer, request.images, top_k), len(request.images)

    async def generate(self, request: Request) -> tuple[Answer, str | None, int]:
        answer = await self.target.generate(request.seed, request.count, request.class_)
        if not answer.ok:
            return answer, f"{answer.code}: {answer.message[:160]}", 0
        if answer.runtime:
            self.runtimes[f"generator {answer.runtime}"] += 1
        return answer, self.checks.check_generated(answer, request.seed, request.count, request.class_), request.count

    async def send_bad(self, bad: str) -> Answer:
        target = self.target
        if bad == "bad base64":
            return await target.classify([], None, raw=["@@@ not base64 @@@"])
        if bad == "garbage image":
            return await target.classify([self.garbage], None)
        if bad == "too many images":
            return await target.classify([self.images[0]] * (self.max_images + 1), 1)
        if bad == "count over limit":
            return await target.generate(1, self.max_generate + 1, None)
        if bad == "unknown class":
            return await target.generate(1, 1, "Spaceship")
        return await target.classify([self.images[0]], len(self.checks.labels) + 1)  # top_k out of range

    def note(self, example: str) -> None:
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)

    def record(self, request: Request, latency: float, outcome: Outcome) -> None:
        entry = self.stats.setdefault(request.kind, {"counts": Counter(), "codes": Counter(), "latencies": []})
        counts = entry["counts"]
        counts["requests"] += 1
        if isinstance(outcome, str):  # lost, transport error, malformed answer
            counts[outcome] += 1
            return
        answer, problem, images = outcome
        entry["latencies"].append(latency)
        entry["codes"][str(answer.code)] += 1
        if answer.server_error:
            counts["5xx"] += 1
        elif problem:
            counts["mismatches"] += 1
        else:
            counts["ok"] += 1
            counts["images"] += images
        if answer.server_error or problem:
            self.note(f"{request.kind} {request.bad or ''}: {problem or answer.code}".replace("  ", " "))

    async def worker(self, number: int, mix: dict[str, float], deadline: float) -> None:
        rng = random.Random(1000 + number)
        kinds, weights = list(mix), list(mix.values())
        while time.perf_counter() < deadline:
            request = self.make(rng.choices(kinds, weights)[0], rng)
            began = time.perf_counter()
            try:
                outcome: Outcome = await self.send(request)
            except Lost:
                outcome = "lost"
            except (httpx.TransportError, OSError) as error:
                outcome = "transport errors"
                self.note(f"{request.kind}: transport {type(error).__name__}: {error}")
            except Exception as error:  # a malformed answer: unreadable JSON, missing fields, ...
                outcome = "mismatches"
                self.note(f"{request.kind}: malformed answer: {type(error).__name__}: {error}")
            self.record(request, time.perf_counter() - began, outcome)

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        grpc_protocol = spec["protocol"] == "grpc"
        self.target = (GrpcTarget if grpc_protocol else HttpTarget)(
            spec["grpc_target"] if grpc_protocol else spec["url"], spec["concurrency"], spec["timeout"])
        try:
            reference = await self.checks.references(self.target, self.images)
            print("start", flush=True)  # the parent reads the server's CPU time now, and at "end"
            start, cpu = time.perf_counter(), time.process_time()
            deadline = start + spec["duration"]
            await asyncio.gather(*(self.worker(i, spec["mix"], deadline) for i in range(spec["concurrency"])))
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            print("end", flush=True)
        finally:
            await self.target.close()
        return self.results(elapsed, cpu, reference)

    def results(self, elapsed: float, cpu: float, reference: dict[str, Any]) -> dict[str, Any]:
        kinds = {kind: summary(entry, elapsed) for kind, entry in sorted(self.stats.items())}
        everything = {"counts": sum((e["counts"] for e in self.stats.values()), Counter()),
                      "codes": sum((e["codes"] for e in self.stats.values()), Counter()),
                      "latencies": [x for e in self.stats.values() for x in e["latencies"]]}
        return {"elapsed s": elapsed, "client cpu s": cpu, "kinds": kinds, "all": summary(everything, elapsed),
                "examples": self.examples, "runtimes": dict(self.runtimes), "reference": reference,
                "pixel-identical, bytes differ": self.checks.byte_differences}


def summary(entry: dict[str, Any], elapsed: float) -> dict[str, Any]:
    counts, latencies = entry["counts"], entry["latencies"]
    return {**{key: counts.get(key, 0) for key in ("requests", "ok", "images", "5xx", "mismatches", "lost",
                                                    "transport errors")},
            "req/s": counts.get("requests", 0) / elapsed, "img/s": counts.get("images", 0) / elapsed,
            "p50 ms": 1000 * float(np.percentile(latencies, 50)) if latencies else None,
            "p99 ms": 1000 * float(np.percentile(latencies, 99)) if latencies else None,
            "codes": dict(entry["codes"])}


def client_main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = asyncio.run(Client(spec).run())
    Path(out_path).write_text(json.dumps(result))
