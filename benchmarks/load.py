"""Sustained mixed load: diptych over HTTP and gRPC, a naive peer and the raw limit, in one run.

    python -m benchmarks.load                                   # classifier:latest, generator:latest
    python -m benchmarks.load --duration 20 --pure-duration 10 --raw-seconds 3   # a quick look
    python -m benchmarks.load --classifier models/classifier/1 --generator models/generator/1

Phases, one after the other, each driven by a load-generator process of its own (asyncio:
httpx.AsyncClient for HTTP, grpc.aio diptych.v1 stubs for gRPC) with `--concurrency`
workers, each sending its next request as soon as the last one is answered:

1. Raw, in this process (`benchmarks.serving`'s measurement): the classifier's
   `serving_default` on 1, 8 and 32 encoded images per call and the LiteRT pool (one
   single-threaded interpreter per core); the generator's `serving_default` on 1, 4 and 32
   latents per call (and the same with the PNG encoding of every image). The best row of
   each model is its raw limit. Measured again after the services, keeping the best.
2. diptych (`bentoml serve service.service:Diptych`), for each protocol: the **mixed** load
   for `--duration` — classify 1 image, classify 8, generate 1-4 images from a seed (with and
   without a class), bad requests (bad base64, garbage image, too many images, count over
   the limit, unknown class, top_k out of range) — then **pure** phases of
   `--pure-duration`: classify only (1 and 8 images) and generate only at `--concurrency`
   (throughput), and one-image classify / generate at concurrency 1 (latency).
3. The naive peer (`benchmarks/naive_service.py`: the same SavedModels behind a plain
   BentoML service, one eager signature call per image, no batching, no LiteRT), HTTP only
   (BentoML's new-style services serve no gRPC), the same phases.

Every response is checked against its request: classify — one prediction per image, top_k
distinct known labels, scores in [0, 1] and sorted, and every score within 1e-3 of what the
same image got alone at the start (so an answer given to the wrong request or image shows);
generate — `count` PNGs, the seed echoed, byte-identical to the reference that the same
seed, count and class gave at the start (which decoded to the model's image size and mode);
bad requests — the documented 4xx (or INVALID_ARGUMENT) with a message. Counted apart: 5xx
(and gRPC INTERNAL/UNKNOWN/UNAVAILABLE/RESOURCE_EXHAUSTED/server DEADLINE_EXCEEDED),
mismatches, lost (no answer within `--timeout`), transport errors.

Meanwhile the service's processes (`bentoml serve` and its workers) are sampled every
`--sample-every` seconds from /proc: RSS per process, and CPU time, so each phase reports
the server's CPU per request and image. Memory must flatten: the growth in the last third
of the time under load is compared with the first third. The load generator's own CPU is
reported too (it shares the two cores with the server). Results go to `--out` as JSON.
Exits 1 when diptych answered any 5xx, mismatch, lost or transport error, or its memory
kept climbing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import functools
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.serving import (ROOT, Service, bench_calls, bench_pool, bench_raw, litert_pool, models_parser,
                                sample_images)

TOLERANCE = 1e-3  # classify scores against the reference: batching may change rounding, never a label
SEEDS = 8  # generate draws its seeds from this many, so every answer has a reference
GENERATE_CLASSES = (None, "Sneaker")
MIXED = {"classify1": 4, "classify8": 2, "generate": 3, "bad": 1}
PURE = {  # phase: (request mix, concurrency: None = --concurrency)
    "classify": ({"classify1": 1, "classify8": 1}, None),
    "generate": ({"generate": 1}, None),
    "classify c1": ({"classify1": 1}, 1),
    "generate c1": ({"generate1": 1}, 1),
}
SERVER_ERRORS = {"INTERNAL", "UNKNOWN", "DATA_LOSS", "UNIMPLEMENTED", "UNAVAILABLE", "RESOURCE_EXHAUSTED",
                 "DEADLINE_EXCEEDED"}


# -- the load generator (runs as a process of its own: python -m benchmarks.load --client SPEC OUT) --------


@dataclasses.dataclass
class Answer:
    """A response, normalised across protocols: `code` is 200 / the HTTP status / a gRPC code name."""

    code: int | str
    message: str = ""
    predictions: list[list[tuple[str, float]]] | None = None
    pngs: list[bytes] | None = None
    class_ids: list[int] | None = None
    seed: int | None = None
    runtime: str | None = None

    @property
    def ok(self) -> bool:
        return self.code in (200, "OK")

    @property
    def server_error(self) -> bool:
        return (isinstance(self.code, int) and self.code >= 500) or self.code in SERVER_ERRORS


class Lost(Exception):
    """No answer within the timeout."""


class HttpTarget:
    def __init__(self, url: str, concurrency: int, timeout: float) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits)

    async def post(self, route: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self.client.post(route, content=json.dumps(body),
                                          headers={"content-type": "application/json"})
        except httpx.TimeoutException as error:
            raise Lost(str(error)) from None

    @staticmethod
    def error(response: httpx.Response) -> Answer:
        try:
            body = response.json()
            body = body[0] if isinstance(body, list) and body else body  # BentoML's own errors: a list
            message = body.get("error", "") if isinstance(body, dict) else ""
        except ValueError:
            message = ""
        return Answer(response.status_code, str(message) or response.text[:200])

    async def classify(self, images: list[bytes], top_k: int | None, raw: list[str] | None = None) -> Answer:
        body: dict[str, Any] = {"images": raw if raw is not None else [base64.b64encode(i).decode() for i in images]}
        if top_k is not None:
            body["top_k"] = top_k
        response = await self.post("/classify", body)
        if response.status_code != 200:
            return self.error(response)
        data = response.json()
        return Answer(200, predictions=[[(p["label"], p["score"]) for p in row] for row in data["predictions"]],
                      runtime=data.get("model", {}).get("runtime"))

    async def generate(self, seed: int, count: int, class_: str | None) -> Answer:
        body: dict[str, Any] = {"seed": seed, "count": count, "format": "png" if count == 1 else "json"}
        if class_ is not None:
            body["class"] = class_
        response = await self.post("/generate", body)
        if response.status_code != 200:
            return self.error(response)
        runtime = response.headers.get("x-model-runtime")
        if count == 1:  # one image/png, the seed in a header
            if response.headers.get("content-type") != "image/png":
                return Answer(200, message=f"content-type {response.headers.get('content-type')}", pngs=[])
            return Answer(200, pngs=[response.content], seed=int(response.headers.get("x-seed", -1)), runtime=runtime)
        data = response.json()
        return Answer(200, pngs=[base64.b64decode(i["png"]) for i in data["images"]],
                      class_ids=[i["class_id"] for i in data["images"]], seed=data["seed"], runtime=runtime)

    async def close(self) -> None:
        await self.client.aclose()


class GrpcTarget:
    def __init__(self, target: str, concurrency: int, timeout: float) -> None:
        import grpc

        from proto.diptych.v1 import diptych_pb2, diptych_pb2_grpc

        self.grpc, self.pb, self.timeout = grpc, diptych_pb2, timeout
        self.channel = grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 * 2**20)])
        self.stub = diptych_pb2_grpc.DiptychStub(self.channel)

    async def call(self, method: Any, request: Any) -> Any:
        began = time.perf_counter()
        try:
            return await method(request, timeout=self.timeout)
        except self.grpc.aio.AioRpcError as error:
            if error.code() == self.grpc.StatusCode.DEADLINE_EXCEEDED and time.perf_counter() - began >= self.timeout:
                raise Lost(error.details()) from None
            return Answer(error.code().name, error.details() or "")

    async def classify(self, images: list[bytes], top_k: int | None, raw: list[str] | None = None) -> Answer:
        request = self.pb.ClassifyRequest(images=images)
        if top_k is not None:
            request.top_k = top_k
        reply = await self.call(self.stub.Classify, request)
        if isinstance(reply, Answer):
            return reply
        return Answer("OK", predictions=[[(label.label, label.score) for label in p.labels] for p in reply.predictions])

    async def generate(self, seed: int, count: int, class_: str | None) -> Answer:
        request = self.pb.GenerateRequest(seed=seed, count=count)
        if class_ is not None:
            request.class_name = class_
        reply = await self.call(self.stub.Generate, request)
        if isinstance(reply, Answer):
            return reply
        return Answer("OK", pngs=[i.png for i in reply.images], class_ids=[i.class_id for i in reply.images],
                      seed=reply.seed if reply.HasField("seed") else None)

    async def close(self) -> None:
        await self.channel.close()


@dataclasses.dataclass
class Request:
    kind: str
    bad: str | None = None  # which bad request
    images: list[int] = dataclasses.field(default_factory=list)  # indices into the sample images
    top_k: int | None = None
    seed: int = 0
    count: int = 1
    class_: str | None = None


BAD_HTTP = {  # bad request: the status diptych documents for it
    "bad base64": 400, "garbage image": 400, "too many images": 413, "count over limit": 400,
    "unknown class": 400, "top_k out of range": 400,
}
BAD_GRPC = {name: "INVALID_ARGUMENT" for name in BAD_HTTP if name != "bad base64"}  # gRPC bytes are bytes


class Client:
    """The load generator: `concurrency` asyncio workers, each picking a request kind by weight."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.images = [base64.b64decode(i) for i in spec["images"]]
        self.labels = set(spec["labels"])
        self.classes, self.image_size, self.channels = spec["classes"], spec["image_size"], spec["channels"]
        self.max_images, self.max_generate = spec["max_images"], spec["max_generate"]
        grpc_protocol = spec["protocol"] == "grpc"
        self.bad = BAD_GRPC if grpc_protocol else BAD_HTTP
        self.strict = spec["target"] == "diptych"  # the naive peer: any 4xx with a message will do
        self.garbage = random.Random(7).randbytes(512)
        self.target: HttpTarget | GrpcTarget  # made in `run`, on its event loop
        self.classify_ref: list[dict[str, float]] = []
        self.generate_ref: dict[tuple[int, int, str | None], tuple[list[bytes], list[int]]] = {}
        self.stats: dict[str, dict[str, Any]] = {}
        self.examples: list[str] = []
        self.runtimes: Counter[str] = Counter()
        self.byte_differences = 0  # generated images with the reference's pixels in other PNG bytes

    # -- references, taken before the clock starts -----------------------------------------------

    async def references(self) -> dict[str, Any]:
        """Each sample image classified alone (all labels), and every (seed, count, class) the
        load will ask for generated once and checked by decoding: what every later answer must match."""
        for index, image in enumerate(self.images):
            answer = await self.target.classify([image], len(self.labels))
            if not answer.ok:
                raise SystemExit(f"reference classify of image {index}: {answer.code} {answer.message}")
            problem = self.check_predictions(answer, [index], len(self.labels), reference=True)
            if problem:
                raise SystemExit(f"reference classify of image {index}: {problem}")
            self.classify_ref.append(dict(answer.predictions[0]))
        pixels = {}
        for seed in range(SEEDS):
            for count in range(1, 5):
                for class_ in GENERATE_CLASSES:
                    answer = await self.target.generate(seed, count, class_)
                    problem = None if answer.ok else f"{answer.code} {answer.message}"
                    problem = problem or self.check_generated(answer, seed, count, class_, reference=True)
                    if problem:
                        raise SystemExit(f"reference generate seed {seed} count {count} class {class_}: {problem}")
                    self.generate_ref[seed, count, class_] = (answer.pngs, self.expected_classes(count, class_))
                    pixels[f"{seed}/{count}/{class_}"] = [pixel_digest(png) for png in answer.pngs]
        return {"classify_top1": [max(ref, key=ref.get) for ref in self.classify_ref], "generate_pixels": pixels}

    def expected_classes(self, count: int, class_: str | None) -> list[int]:
        if class_ is None:
            return [i % len(self.classes) for i in range(count)]
        return [self.classes.index(class_)] * count

    # -- checks: None when the answer is right, else what is wrong ------------------------------

    def check_predictions(self, answer: Answer, images: list[int], top_k: int, reference: bool = False) -> str | None:
        if answer.predictions is None or len(answer.predictions) != len(images):
            return f"{len(answer.predictions or [])} predictions for {len(images)} images"
        for position, (index, row) in enumerate(zip(images, answer.predictions)):
            labels, scores = [label for label, _ in row], [score for _, score in row]
            if len(row) != top_k:
                return f"image {position}: {len(row)} labels, top_k {top_k}"
            if len(set(labels)) != len(labels) or not set(labels) <= self.labels:
                return f"image {position}: labels {labels}"
            if any(not 0 <= s <= 1 for s in scores) or any(a < b for a, b in zip(scores, scores[1:])):
                return f"image {position}: scores {scores} not sorted in [0, 1]"
            if reference:
                continue
            expected = self.classify_ref[index]
            for label, score in row:
                if abs(expected[label] - score) > TOLERANCE:
                    best = max(expected, key=expected.get)
                    return (f"image {position} (sample {index}): {label} {score:.4f}, alone it scored {expected[label]:.4f} "
                            f"(its top-1 alone: {best} {expected[best]:.4f}); answer top-1 {labels[0]}")
        return None

    def check_generated(self, answer: Answer, seed: int, count: int, class_: str | None,
                        reference: bool = False) -> str | None:
        if answer.message:
            return answer.message
        if answer.pngs is None or len(answer.pngs) != count:
            return f"{len(answer.pngs or [])} images for count {count}"
        if answer.seed != seed:
            return f"seed {answer.seed} for seed {seed}"
        expected_ids = self.expected_classes(count, class_)
        if answer.class_ids is not None and list(answer.class_ids) != expected_ids:
            return f"class ids {answer.class_ids}, expected {expected_ids}"
        if reference:
            from PIL import Image

            for png in answer.pngs:
                image = Image.open(io.BytesIO(png))
                mode = "L" if self.channels == 1 else "RGB"
                if image.format != "PNG" or list(image.size) != self.image_size[::-1] or image.mode != mode:
                    return f"{image.format} {image.size} {image.mode}, expected PNG {self.image_size} {mode}"
            return None
        reference_pngs, _ = self.generate_ref[seed, count, class_]
        for i, (png, expected) in enumerate(zip(answer.pngs, reference_pngs)):
            if png != expected:
                if pixel_digest(png) == pixel_digest(expected):
                    self.byte_differences += 1
                    continue
                return f"image {i} of seed {seed} count {count} class {class_}: pixels differ from the reference"
        return None

    def check_rejected(self, answer: Answer, bad: str) -> str | None:
        if answer.ok:
            return f"{bad}: accepted (200)"
        if not answer.message:
            return f"{bad}: {answer.code} without a message"
        if self.strict and answer.code != self.bad[bad]:
            return f"{bad}: {answer.code} ({answer.message[:120]}), expected {self.bad[bad]}"
        if not self.strict and not (isinstance(answer.code, int) and 400 <= answer.code < 500
                                    or answer.code == "INVALID_ARGUMENT"):
            return f"{bad}: {answer.code} ({answer.message[:120]}), expected a 4xx"
        return None

    # -- the load ------------------------------------------------------------------------------

    def make(self, kind: str, rng: random.Random) -> Request:
        n = len(self.images)
        if kind == "classify1":
            return Request(kind, images=[rng.randrange(n)], top_k=rng.choice((None, 1, 3, 10)))
        if kind == "classify8":
            return Request(kind, images=rng.sample(range(n), 8), top_k=rng.choice((None, 1, 3, 10)))
        if kind in ("generate", "generate1"):
            return Request(kind, seed=rng.randrange(SEEDS), count=1 if kind == "generate1" else rng.randint(1, 4),
                           class_=rng.choice(GENERATE_CLASSES))
        return Request(kind, bad=rng.choice(sorted(self.bad)))

    async def send(self, request: Request) -> tuple[Answer, str | None, int]:
        """The answer, what is wrong with it (None: right), and the images it carried."""
        target = self.target
        if request.kind.startswith("classify"):
            answer = await target.classify([self.images[i] for i in request.images], request.top_k)
            if not answer.ok:
                return answer, f"{answer.code}: {answer.message[:160]}", 0
            if answer.runtime:  # HTTP says it; diptych.v1's ModelRef has no runtime
                self.runtimes[f"classifier {answer.runtime}"] += 1
            top_k = 5 if request.top_k is None else request.top_k
            return answer, self.check_predictions(answer, request.images, top_k), len(request.images)
        if request.kind.startswith("generate"):
            answer = await target.generate(request.seed, request.count, request.class_)
            if not answer.ok:
                return answer, f"{answer.code}: {answer.message[:160]}", 0
            if answer.runtime:
                self.runtimes[f"generator {answer.runtime}"] += 1
            return answer, self.check_generated(answer, request.seed, request.count, request.class_), request.count
        bad = request.bad
        if bad == "bad base64":
            answer = await target.classify([], None, raw=["@@@ not base64 @@@"])
        elif bad == "garbage image":
            answer = await target.classify([self.garbage], None)
        elif bad == "too many images":
            answer = await target.classify([self.images[0]] * (self.max_images + 1), 1)
        elif bad == "count over limit":
            answer = await target.generate(1, self.max_generate + 1, None)
        elif bad == "unknown class":
            answer = await target.generate(1, 1, "Spaceship")
        else:  # top_k out of range
            answer = await target.classify([self.images[0]], len(self.labels) + 1)
        return answer, self.check_rejected(answer, bad), 0

    def stat(self, kind: str) -> Counter:
        if kind not in self.stats:
            self.stats[kind] = {"counts": Counter(), "codes": Counter(), "latencies": []}
        return self.stats[kind]["counts"]

    def record(self, request: Request, latency: float, outcome: tuple[Answer, str | None, int] | str) -> None:
        counts = self.stat(request.kind)
        entry = self.stats[request.kind]
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
        if (answer.server_error or problem) and len(self.examples) < 20:
            self.examples.append(f"{request.kind} {request.bad or ''}: {problem or answer.code}".replace("  ", " "))

    async def worker(self, number: int, mix: dict[str, float], deadline: float) -> None:
        rng = random.Random(1000 + number)
        kinds, weights = list(mix), list(mix.values())
        while time.perf_counter() < deadline:
            request = self.make(rng.choices(kinds, weights)[0], rng)
            began = time.perf_counter()
            try:
                outcome: tuple[Answer, str | None, int] | str = await self.send(request)
            except Lost:
                outcome = "lost"
            except (httpx.TransportError, OSError) as error:
                outcome = "transport errors"
                if len(self.examples) < 20:
                    self.examples.append(f"{request.kind}: transport {type(error).__name__}: {error}")
            except Exception as error:  # a malformed answer: unreadable JSON, missing fields, ...
                outcome = "mismatches"
                if len(self.examples) < 20:
                    self.examples.append(f"{request.kind}: malformed answer: {type(error).__name__}: {error}")
            self.record(request, time.perf_counter() - began, outcome)

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        grpc_protocol = spec["protocol"] == "grpc"
        self.target = (GrpcTarget if grpc_protocol else HttpTarget)(
            spec["grpc_target"] if grpc_protocol else spec["url"], spec["concurrency"], spec["timeout"])
        try:
            reference = await self.references()
            print("start", flush=True)  # the parent reads the server's CPU time now, and at "end"
            start, cpu = time.perf_counter(), time.process_time()
            deadline = start + spec["duration"]
            await asyncio.gather(*(self.worker(i, spec["mix"], deadline) for i in range(spec["concurrency"])))
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            print("end", flush=True)
        finally:
            await self.target.close()
        kinds = {kind: summary(entry, elapsed) for kind, entry in sorted(self.stats.items())}
        everything = {"counts": sum((e["counts"] for e in self.stats.values()), Counter()),
                      "codes": sum((e["codes"] for e in self.stats.values()), Counter()),
                      "latencies": [x for e in self.stats.values() for x in e["latencies"]]}
        return {"elapsed s": elapsed, "client cpu s": cpu, "kinds": kinds, "all": summary(everything, elapsed),
                "examples": self.examples, "runtimes": dict(self.runtimes), "reference": reference,
                "pixel-identical, bytes differ": self.byte_differences}


def summary(entry: dict[str, Any], elapsed: float) -> dict[str, Any]:
    counts, latencies = entry["counts"], entry["latencies"]
    return {**{key: counts.get(key, 0) for key in ("requests", "ok", "images", "5xx", "mismatches", "lost",
                                                    "transport errors")},
            "req/s": counts.get("requests", 0) / elapsed, "img/s": counts.get("images", 0) / elapsed,
            "p50 ms": 1000 * float(np.percentile(latencies, 50)) if latencies else None,
            "p99 ms": 1000 * float(np.percentile(latencies, 99)) if latencies else None,
            "codes": dict(entry["codes"])}


def pixel_digest(png: bytes) -> str:
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    return hashlib.sha256(f"{image.size}{image.mode}".encode() + image.tobytes()).hexdigest()[:16]


def client_main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = asyncio.run(Client(spec).run())
    Path(out_path).write_text(json.dumps(result))


# -- the orchestrator: raw rows, servers, phases, memory ----------------------------------------------


class Sampler(threading.Thread):
    """Every `every` seconds: RSS of each process of the service (the `bentoml serve` parent and
    its descendants, found through /proc like `Service.cpu_seconds`) and the CPU they used."""

    def __init__(self, service: Service, every: float) -> None:
        super().__init__(daemon=True)
        self.service, self.every = service, every
        self.samples: list[dict[str, Any]] = []  # {"t", "phase", "cpu", "rss": {pid: bytes}}
        self.roles: dict[int, str] = {}
        self.phase = "idle"
        self.stopping = threading.Event()

    def sample(self) -> dict[str, Any]:
        import psutil

        root = psutil.Process(self.service.process.pid)
        rss = {}
        for process in [root, *root.children(recursive=True)]:
            try:
                rss[process.pid] = process.memory_info().rss
                if process.pid not in self.roles:
                    self.roles[process.pid] = role(process, root.pid)
            except psutil.Error:
                continue
        entry = {"t": time.monotonic(), "phase": self.phase, "cpu": self.service.cpu_seconds(), "rss": rss}
        self.samples.append(entry)
        return entry

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def role(process: Any, root: int) -> str:
    cmdline = " ".join(process.cmdline())
    if process.pid == root:
        return "bentoml serve (parent)"
    if "worker" in cmdline:
        worker = cmdline.split("--worker-id", 1)[1].split()[0] if "--worker-id" in cmdline else "?"
        return f"worker {worker}"
    return process.name()


def memory_report(sampler: Sampler) -> dict[str, Any]:
    """RSS before the first phase and after the last, the peak, and the growth in the first and
    the last third of the time under the sustained mixed load (the pure phases after it are
    lighter): flat when the last third grows by at most half the first third's growth, or by
    under 2% (noise)."""
    loaded = [s for s in sampler.samples if s["phase"] != "idle"]
    mixed = [s for s in loaded if s["phase"] == "mixed"]
    before = next((s for s in sampler.samples if s["phase"] == "idle"), sampler.samples[0])
    after = sampler.samples[-1]
    processes = {}
    for pid, name in sampler.roles.items():
        series = [s["rss"].get(pid) for s in loaded if pid in s["rss"]]
        processes[f"{name} (pid {pid})"] = {
            "before MiB": mib(before["rss"].get(pid)), "after MiB": mib(after["rss"].get(pid)),
            "peak MiB": mib(max(series) if series else None),
        }
    peak = max((sum(s["rss"].values()) for s in loaded), default=None)
    total = [(s["t"], sum(s["rss"].values())) for s in mixed]
    report: dict[str, Any] = {"processes": processes, "samples": len(total),
                              "total before MiB": mib(sum(before["rss"].values())),
                              "total after MiB": mib(sum(after["rss"].values())), "total peak MiB": mib(peak),
                              "mixed-load series MiB": [[round(t - total[0][0]), mib(v)] for t, v in total]}
    if len(total) >= 6:
        span = total[-1][0] - total[0][0]
        first = [v for t, v in total if t <= total[0][0] + span / 3]
        last = [v for t, v in total if t >= total[-1][0] - span / 3]
        growth_first, growth_last = first[-1] - first[0], last[-1] - last[0]
        flat = growth_last <= max(growth_first / 2, 0.02 * last[0])
        report.update({"growth first third MiB": mib(growth_first), "growth last third MiB": mib(growth_last),
                       "minutes under load": span / 60, "flat": flat})
    return report


def mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    work: Path
    images: list[bytes]
    classifier: tuple[str, Any]  # (path, ModelInfo)
    generator: tuple[str, Any]


def run_phase(context: Context, service: Service, sampler: Sampler, target: str, protocol: str, phase: str,
              mix: dict[str, float], concurrency: int, duration: float) -> dict[str, Any]:
    """One load-generator process against `service`; the server's CPU from its "start" to its "end"."""
    args, (_, cinfo), (_, ginfo) = context.args, context.classifier, context.generator
    name = f"{target}-{protocol}-{phase}".replace(" ", "-")
    spec = {"target": target, "protocol": protocol, "url": service.url, "grpc_target": service.grpc_target,
            "concurrency": concurrency, "duration": duration, "mix": mix, "timeout": args.timeout,
            "images": [base64.b64encode(i).decode() for i in context.images], "labels": cinfo.card["labels"],
            "classes": ginfo.card["classes"], "image_size": ginfo.card["image_size"],
            "channels": ginfo.card.get("channels", 1), "max_images": 32, "max_generate": 64}
    spec_path, out_path = context.work / f"{name}.spec.json", context.work / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    client = subprocess.Popen([sys.executable, "-m", "benchmarks.load", "--client", str(spec_path), str(out_path)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    marks, load = {}, []
    for line in client.stdout:
        if line.strip() in ("start", "end"):
            sampler.phase = phase if line.strip() == "start" else "between"
            marks[line.strip()] = sampler.sample()
            load.append(os.getloadavg()[0])
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
    elapsed = result["elapsed s"]
    print(f"  {target} {protocol} {phase}: {done['req/s']:.1f} req/s, {done['img/s']:.1f} img/s, p50 "
          f"{done['p50 ms'] or 0:.1f} ms, p99 {done['p99 ms'] or 0:.1f} ms, 5xx {done['5xx']}, mismatches "
          f"{done['mismatches']}, lost {done['lost']}, transport {done['transport errors']}; server CPU "
          f"{cpu / elapsed:.2f} cores, client CPU {result['client cpu s'] / elapsed:.2f} cores, load average "
          f"{load[0]:.1f}", flush=True)
    for example in result["examples"][:5]:
        print(f"    ! {example}", flush=True)
    return result


def run_target(context: Context, target: str, protocols: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    args = context.args
    app = "service.service:Diptych" if target == "diptych" else "benchmarks.naive_service:Naive"
    log = (context.work / f"{target}.log").open("wb")
    service = Service(context.classifier[0], context.generator[0], log, runtime=args.classifier_runtime, app=app)
    sampler = Sampler(service, args.sample_every)
    results: list[dict[str, Any]] = []
    try:
        service.wait_ready()
        models = httpx.get(service.url + "/models").json() if target == "diptych" else None
        time.sleep(2)
        sampler.sample()  # before: ready, warm, idle
        sampler.start()
        for protocol in protocols:
            results.append(run_phase(context, service, sampler, target, protocol, "mixed", MIXED,
                                     args.concurrency, args.duration))
        for protocol in protocols:
            for phase, (mix, concurrency) in PURE.items():
                results.append(run_phase(context, service, sampler, target, protocol, phase, mix,
                                         concurrency or args.concurrency, args.pure_duration))
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


def runtimes_of(models: Any) -> dict[str, str]:
    rows = models.get("models", models) if isinstance(models, dict) else models
    found = {}
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict):
            found[row.get("kind") or row.get("name", "?")] = row.get("runtime") or row.get("model", {}).get("runtime")
    return found


def raw_rows(context: Context, runtimes: dict[str, Any]) -> dict[str, dict[str, float]]:
    """benchmarks.serving's raw measurement (classifier), and the generator's `serving_default`
    on batches of seeded latents, alone and with each image encoded to PNG as the service does."""
    from service.core.images import encode_png

    seconds, (cpath, cinfo), (gpath, ginfo) = context.args.raw_seconds, context.classifier, context.generator
    if not runtimes:
        from service.core.runtime import SavedModelRuntime

        runtimes.update(classifier=SavedModelRuntime(cpath), generator=SavedModelRuntime(gpath),
                        pool=litert_pool(cpath, cinfo))
    rows = {f"classify tensorflow batch {b}": bench_raw(runtimes["classifier"], context.images, b, seconds)
            for b in (1, 8, 32)}
    rows[f"classify litert pool x{runtimes['pool'].interpreters}"] = bench_pool(
        runtimes["pool"], cinfo.card["image_size"][0], context.images[0], seconds)
    generator, dim, classes = runtimes["generator"], int(ginfo.card["latent_dim"]), len(ginfo.card["classes"])
    for batch in (1, 4, 32):
        inputs = {"latents": np.random.RandomState(batch).standard_normal((batch, dim)).astype(np.float32),
                  "class_ids": (np.arange(batch) % classes).astype(np.int32)}
        rows[f"generate tensorflow batch {batch}"] = bench_calls(functools.partial(generator.run, inputs), batch, seconds)

        def with_png(inputs: dict[str, np.ndarray] = inputs) -> None:
            for image in generator.run(inputs)["images"]:
                encode_png(image)

        rows[f"generate tensorflow batch {batch} + png"] = bench_calls(with_png, batch, seconds)
    return rows


def best_raw(rows: dict[str, dict[str, float]], prefix: str) -> tuple[str, dict[str, float]]:
    """The fastest raw row whose name starts with `prefix` (model only: not the + png rows)."""
    return max(((name, row) for name, row in rows.items() if name.startswith(prefix) and "+ png" not in name),
               key=lambda item: item[1]["images/s"])


def raw_call(rows: dict[str, dict[str, float]], prefix: str) -> dict[str, float]:
    """The lowest p50 of one image through the model (batch 1) among the rows starting with `prefix`."""
    return min((row for name, row in rows.items() if name.startswith(prefix) and row["batch"] == 1
                and "+ png" not in name), key=lambda row: row["p50 ms"])


def find(results: list[dict[str, Any]], target: str, protocol: str, phase: str) -> dict[str, Any] | None:
    return next((r for r in results if (r["target"], r["protocol"], r["phase"]) == (target, protocol, phase)), None)


def ratios(results: list[dict[str, Any]], raw: dict[str, dict[str, float]], served: dict[str, str]) -> list[dict[str, Any]]:
    """For classify and generate, per diptych protocol, from the pure phases: throughput (img/s
    at --concurrency) and CPU per image against the raw limit (the best raw row of any runtime),
    against the raw rows of the runtime diptych serves the model with (`served`, from its
    /models), and against the naive peer; the p50 of one request at a time against one raw
    call of that runtime and against the naive peer; p50/p99 at saturation against the naive peer."""
    rows = []
    for kind, model in (("classify", "classifier"), ("generate", "generator")):
        limit_name, limit = best_raw(raw, kind)
        runtime = served.get(model, "tensorflow")
        prefix = f"{kind} {runtime}" if any(name.startswith(f"{kind} {runtime}") for name in raw) else kind
        same_name, same = best_raw(raw, prefix)
        one = raw_call(raw, prefix)
        naive, naive_one = find(results, "naive", "http", kind), find(results, "naive", "http", f"{kind} c1")
        for protocol in ("http", "grpc"):
            ours, ours_one = find(results, "diptych", protocol, kind), find(results, "diptych", protocol, f"{kind} c1")
            if ours is None or not ours["all"]["images"]:
                continue
            speed, cpu = ours["all"]["img/s"], ours["server cpu ms/image"]
            row: dict[str, Any] = {
                "kind": kind, "protocol": protocol, "runtime": runtime, "img/s": speed, "cpu ms/img": cpu,
                "raw limit": limit_name, "raw img/s": limit["images/s"], "x raw": speed / limit["images/s"],
                "raw cpu / ours": limit["cpu ms"] / cpu,
                "raw same runtime": same_name, "raw same runtime img/s": same["images/s"],
                "x raw same runtime": speed / same["images/s"], "raw same runtime cpu / ours": same["cpu ms"] / cpu,
            }
            if ours_one:
                row.update({"p50 c1 ms": ours_one["all"]["p50 ms"], "raw call p50 ms": one["p50 ms"],
                            "p50 c1 / raw call": ours_one["all"]["p50 ms"] / one["p50 ms"]})
            if naive and naive["all"]["images"]:
                row.update({"naive img/s": naive["all"]["img/s"], "x naive": speed / naive["all"]["img/s"],
                            "naive cpu ms/img": naive["server cpu ms/image"],
                            "naive cpu / ours": naive["server cpu ms/image"] / cpu,
                            "p50 / naive": ours["all"]["p50 ms"] / naive["all"]["p50 ms"],
                            "p99 / naive": ours["all"]["p99 ms"] / naive["all"]["p99 ms"]})
            if naive_one and ours_one:
                row["p50 c1 / naive"] = ours_one["all"]["p50 ms"] / naive_one["all"]["p50 ms"]
            rows.append(row)
    return rows


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_tables(report: dict[str, Any]) -> None:
    print("\n## Load: per target, protocol, phase and request kind\n")
    print("| target | protocol | phase | conc. | kind | requests | req/s | img/s | p50 ms | p99 ms | 5xx | mismatches "
          "| lost | transport | server CPU ms/req | server CPU cores | client CPU cores | load avg |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for result in report["phases"]:
        elapsed = result["elapsed s"]
        for kind, row in [*result["kinds"].items(), ("all", result["all"])]:
            extra = ((fmt(result["server cpu ms/request"]), fmt(result["server cpu s"] / elapsed, 2),
                      fmt(result["client cpu s"] / elapsed, 2), fmt(result["load average"][0]))
                     if kind == "all" else ("", "", "", ""))
            print(f"| {result['target']} | {result['protocol']} | {result['phase']} | {result['concurrency']} | {kind} "
                  f"| {row['requests']} | {fmt(row['req/s'])} | {fmt(row['img/s'])} | {fmt(row['p50 ms'])} "
                  f"| {fmt(row['p99 ms'])} | {row['5xx']} | {row['mismatches']} | {row['lost']} "
                  f"| {row['transport errors']} | {' | '.join(extra)} |")
    print("\n## Raw in-process limit (this process, best of the runs before and after the services)\n")
    print("| raw | images/s | p50 ms | p99 ms | CPU ms/image |")
    print("|---|---:|---:|---:|---:|")
    for name, row in report["raw"].items():
        print(f"| {name} | {row['images/s']:.1f} | {row['p50 ms']:.2f} | {row['p99 ms']:.2f} | {row['cpu ms']:.2f} |")
    print("\n## Memory (RSS of the service's processes)\n")
    print("| target | process | before MiB | after MiB | peak MiB |")
    print("|---|---|---:|---:|---:|")
    for target, memory in report["memory"].items():
        for name, row in memory["processes"].items():
            print(f"| {target} | {name} | {fmt(row['before MiB'])} | {fmt(row['after MiB'])} | {fmt(row['peak MiB'])} |")
        print(f"| {target} | **all** | {fmt(memory['total before MiB'])} | {fmt(memory['total after MiB'])} "
              f"| {fmt(memory['total peak MiB'])} |")
    for target, memory in report["memory"].items():
        if "flat" not in memory:
            print(f"\n{target}: {memory['samples']} memory samples under the mixed load: too few to judge the trend")
        else:
            print(f"\n{target}: {memory['minutes under load']:.1f} min of mixed load, {memory['samples']} samples; RSS grew "
                  f"{memory['growth first third MiB']} MiB in the first third, {memory['growth last third MiB']} MiB "
                  f"in the last third: {'flat' if memory['flat'] else 'STILL CLIMBING'}")
    print("\n## Ratios, from the pure phases (img/s at the load's concurrency; c1: one request at a time)\n")
    print("Throughput: diptych's images/s ÷ the other's (higher is better for diptych); CPU: the other's CPU ms "
          "per image ÷ diptych's (higher: diptych cheaper); latency: diptych's ÷ the other's (lower is better).\n")
    print("| kind | protocol | diptych runtime | img/s | × raw limit | × raw same runtime | × naive "
          "| CPU: raw limit ÷ | raw same runtime ÷ | naive ÷ | p50 c1 ms | ÷ raw call | ÷ naive c1 "
          "| p50 ÷ naive | p99 ÷ naive |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in report["ratios"]:
        print(f"| {row['kind']} | {row['protocol']} | {row['runtime']} | {fmt(row['img/s'])} | {fmt(row['x raw'], 2)} "
              f"| {fmt(row['x raw same runtime'], 2)} | {fmt(row.get('x naive'), 2)} | {fmt(row['raw cpu / ours'], 2)} "
              f"| {fmt(row['raw same runtime cpu / ours'], 2)} | {fmt(row.get('naive cpu / ours'), 2)} "
              f"| {fmt(row.get('p50 c1 ms'))} | {fmt(row.get('p50 c1 / raw call'), 2)} | {fmt(row.get('p50 c1 / naive'), 2)} "
              f"| {fmt(row.get('p50 / naive'), 2)} | {fmt(row.get('p99 / naive'), 2)} |")
    names = {(row["kind"], row["raw limit"], row["raw same runtime"]) for row in report["ratios"]}
    for kind, limit, same in sorted(names):
        print(f"\n{kind}: raw limit = {limit} ({report['raw'][limit]['images/s']:.1f} img/s); raw same runtime = "
              f"{same} ({report['raw'][same]['images/s']:.1f} img/s)", end="")
    print()


def consistency(results: list[dict[str, Any]]) -> list[str]:
    """The references of every phase against the first diptych one: same pixels per seed,
    same top-1 per image (the naive peer runs TensorFlow on the graph's own decoder)."""
    notes, first = [], next((r for r in results if r["target"] == "diptych"), None)
    if first is None:
        return notes
    for result in results:
        name = f"{result['target']} {result['protocol']} {result['phase']}"
        pixels, top1 = result["reference"]["generate_pixels"], result["reference"]["classify_top1"]
        differ = [key for key, digests in pixels.items() if digests != first["reference"]["generate_pixels"].get(key)]
        if differ:
            notes.append(f"{name}: generated pixels differ from diptych {first['protocol']}'s for {len(differ)} of "
                         f"{len(pixels)} (seed/count/class): {differ[:4]}")
        labels = [i for i, (a, b) in enumerate(zip(top1, first["reference"]["classify_top1"])) if a != b]
        if labels:
            notes.append(f"{name}: top-1 differs on sample images {labels}")
    return notes


def main() -> None:
    parser = models_parser("python -m benchmarks.load", __doc__, "store tag or SavedModel folder")
    parser.add_argument("--duration", type=float, default=180, help="seconds of mixed load per target and protocol")
    parser.add_argument("--pure-duration", type=float, default=30,
                        help="seconds of each pure phase (classify, generate; at --concurrency and at 1)")
    parser.add_argument("--raw-seconds", type=float, default=8, help="seconds per raw row (twice: before and after)")
    parser.add_argument("--concurrency", type=int, default=32, help="load-generator workers (saturation)")
    parser.add_argument("--classifier-runtime", default="auto", choices=("auto", "litert", "tensorflow"),
                        help="diptych's DIPTYCH_CLASSIFIER_RUNTIME")
    parser.add_argument("--targets", default="diptych,naive")
    parser.add_argument("--protocols", default="http,grpc", help="diptych's; the naive peer serves HTTP only")
    parser.add_argument("--timeout", type=float, default=60, help="seconds before a request counts as lost")
    parser.add_argument("--sample-every", type=float, default=3, help="seconds between memory samples")
    parser.add_argument("--out", default=str(ROOT / "docs" / "load_results.json"))
    parser.add_argument("--report", metavar="JSON", help="print the tables of an earlier run's --out file, and exit")
    parser.add_argument("--client", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(*args.client)
    if args.report:
        report = json.loads(Path(args.report).read_text())
        print(f"{report['command']}: {report['started']}, {report['minutes']:.1f} minutes, load average "
              f"{report['load average']['start'][0]:.1f} at the start, {report['load average']['end'][0]:.1f} at the end")
        return print_tables(report)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from service.core.models import locate

    targets, protocols = args.targets.split(","), args.protocols.split(",")
    work = Path(tempfile.mkdtemp(prefix="diptych-load-"))
    context = Context(args, work, sample_images(), locate(args.classifier), locate(args.generator))
    cinfo, ginfo = context.classifier[1], context.generator[1]
    began, load_start = time.time(), os.getloadavg()
    print(f"classifier {cinfo.name}:{cinfo.version} ({cinfo.card.get('backbone')}, {cinfo.card['image_size'][0]} px), "
          f"generator {ginfo.name}:{ginfo.version}; {os.cpu_count()} CPUs, load average {load_start[0]:.1f}; "
          f"concurrency {args.concurrency}, mixed {args.duration:g} s, pure {args.pure_duration:g} s; logs in {work}",
          flush=True)
    runtimes: dict[str, Any] = {}
    raw = raw_rows(context, runtimes)
    print("  raw: " + ", ".join(f"{name} {row['images/s']:.0f}/s" for name, row in raw.items()), flush=True)
    results, memory = [], {}
    for target in targets:
        found, memory[target] = run_target(context, target, protocols if target == "diptych" else ["http"])
        results += found
    for name, row in raw_rows(context, runtimes).items():  # again, keeping the better round
        if row["images/s"] > raw[name]["images/s"]:
            raw[name] = row
    report = {"command": " ".join(["python -m benchmarks.load", *sys.argv[1:]]),
              "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(began)),
              "minutes": (time.time() - began) / 60, "cpus": os.cpu_count(),
              "load average": {"start": load_start, "end": os.getloadavg()},
              "classifier": {"model": f"{cinfo.name}:{cinfo.version}", "backbone": cinfo.card.get("backbone"),
                             "image size": cinfo.card["image_size"]},
              "generator": {"model": f"{ginfo.name}:{ginfo.version}", "image size": ginfo.card["image_size"]},
              "settings": {k: v for k, v in vars(args).items() if k not in ("client", "out")},
              "raw": raw, "phases": results, "memory": memory,
              "ratios": ratios(results, raw, memory.get("diptych", {}).get("runtimes", {})),
              "consistency": consistency(results)}
    for result in results:  # the references served their purpose (`consistency`); keep the file small
        result["reference"] = {key: len(value) for key, value in result["reference"].items()}
    print_tables(report)
    for note in report["consistency"]:
        print(f"  note: {note}")
    Path(args.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nload average: start {load_start[0]:.1f}, end {os.getloadavg()[0]:.1f} (1-minute), {report['minutes']:.1f} "
          f"minutes; results in {args.out}")
    failures = [f"{r['target']} {r['protocol']} {r['phase']}: {key} {r['all'][key]}" for r in results
                if r["target"] == "diptych" for key in ("5xx", "mismatches", "lost", "transport errors") if r["all"][key]]
    if memory.get("diptych", {}).get("flat") is False:
        failures.append("diptych: RSS still climbing in the last third")
    for failure in failures:
        print(f"FAILED: {failure}")
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
