"""The two bulk jobs: what each computes on a loaded model, and what it writes.

A job is plain data (its arguments; picklable, so each Ray actor gets the same object)
with the steps both runners (`local.py`, `ray_runner.py`) call:

- `items(model)`: the work, in output order (JSON-able; the job log keeps its digest), and
  how many of the source's files are not part of it (skipped: not images);
- `start(model, items)`: submit one part to the model's batcher and return at once, so the
  in-process runner queues the next part while this one runs;
- `finish(model, started)`: wait for the results (bounded) and make the part's rows;
- `store(rows)`: what the driver does with a finished part before logging it (generate
  writes the PNGs there, so actors on other machines need no shared disk to write to);
- `write(log, parts)`: the final output from the logged parts, streamed part by part.

Everything model-specific goes through the kinds, as the service does: the classifier's
request checks (`checked`, `check_top_k`) and batcher, the generator's `plan` and
`render_plan`. No model code is copied here.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import hashlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from contract.imagefolder import class_folder
from contract.runtime import cores
from service.core import ServedModel, ValidationError
from service.core.images import encode_pngs_off_loop
from service.kinds import Classifier, Generator
from service.kinds.classifier import TOP_K
from service.kinds.generator import Generation, Latents

from .joblog import JobLog
from .sources import list_files, read_bytes
from .writers import check_format, write_lines, write_rows

Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Job:
    out: Path
    shard: tuple[int, int] = (0, 1)  # (index, count): this run takes every count-th part from index-th
    kind: ClassVar[type[ServedModel]]
    command: ClassVar[str]  # its subcommand of `python -m service.batch`
    help: ClassVar[str]

    @staticmethod
    def arguments(command: argparse.ArgumentParser) -> None:
        """Add this job's own arguments (the runner's are common to every job)."""

    @classmethod
    def of(cls, args: argparse.Namespace, shard: tuple[int, int]) -> Job:
        """The job the parsed arguments describe."""
        raise NotImplementedError

    @property
    def suffix(self) -> str:
        """What a shard adds to its output's and log's names, so shards never collide."""
        index, count = self.shard
        return "" if count == 1 else f"-{index}-of-{count}"

    def model_spec(self, model: ServedModel) -> dict[str, Any]:
        return {"model": model.info.name, "version": model.info.version, "shard": list(self.shard)}

    def store(self, rows: list[Row]) -> list[Row]:
        return rows


@dataclasses.dataclass(frozen=True)
class Classify(Job):
    """Every file SOURCE names → a row: path, label, score, top-k, model, version, error."""

    source: str = ""
    top_k: int = TOP_K
    kind: ClassVar[type[ServedModel]] = Classifier
    command: ClassVar[str] = "classify"
    help: ClassVar[str] = "classify every image SOURCE names"

    @staticmethod
    def arguments(command: argparse.ArgumentParser) -> None:
        command.add_argument("source", metavar="SOURCE",
                             help="a folder (recursive), a glob, or a .txt/.csv list of paths")
        command.add_argument("--out", required=True, type=Path, help="results: .parquet, .csv or .jsonl")
        command.add_argument("--top-k", type=int, default=TOP_K,
                             help=f"labels kept per image, best first (default: {TOP_K})")

    @classmethod
    def of(cls, args: argparse.Namespace, shard: tuple[int, int]) -> Classify:
        check_format(args.out)
        return cls(args.out, shard, source=args.source, top_k=args.top_k)

    @property
    def output(self) -> Path:
        return self.out.with_name(f"{self.out.stem}{self.suffix}{self.out.suffix}")

    @property
    def log_folder(self) -> Path:
        return self.output.with_name(self.output.name + ".job")

    def spec(self, model: Classifier) -> dict[str, Any]:
        return {"job": "classify", "source": self.source, "top_k": self.top_k, **self.model_spec(model)}

    def check(self, model: Classifier) -> None:
        """Refuse the job before it starts (a subclass for another image kind checks its own)."""
        model.check_top_k(self.top_k)

    def items(self, model: Classifier) -> tuple[list[Row], int]:
        self.check(model)
        listing = list_files(self.source)
        return [{"path": path} | ({"error": listing.errors[path]} if path in listing.errors else {})
                for path in listing.files], listing.skipped

    def start(self, model: Classifier, items: list[Row]) -> list[tuple[str, Future | str]]:
        """Each file read and checked as a request's image is; the good ones join the batcher's queue."""
        checked = [item.get("error") or _checked(model, item["path"]) for item in items]
        futures = iter(model.batcher.submit([image for image in checked if not isinstance(image, str)]))
        return [(item["path"], image if isinstance(image, str) else next(futures))
                for item, image in zip(items, checked)]

    def finish(self, model: Classifier, started: list[tuple[str, Future | str]]) -> list[Row]:
        identity = {"model": model.info.name, "version": model.info.version}
        rows = []
        for path, pending in started:
            result = pending if isinstance(pending, str) else _result(pending, model.settings.timeout_s)
            rows.append(_classified(path, result, model.labels, self.top_k) | identity)
        return rows

    def write(self, log: JobLog, parts: list[int]) -> dict[str, int]:
        return write_rows(self.output, log.rows(parts))


def _checked(model: Classifier, path: str) -> tuple | str:
    """The classifier's own item for this file, or why there is none (the service's limits apply)."""
    try:
        (item,) = model.checked([read_bytes(path, model.settings.max_body_bytes)])
    except OSError as error:
        return f"unreadable: {error.strerror or error}"
    except ValidationError as error:
        return error.problem
    return item


def _result(future: Future, timeout_s: float) -> np.ndarray | str:
    """A result, or the item's own error. Each wait is bounded by the service's `timeout_s`:
    items finish in order of submission, so a longer wait means a stuck model."""
    error = future.exception(timeout=timeout_s)
    if error is None:
        return future.result()
    if isinstance(error, ValidationError):
        return error.problem
    raise error


def _classified(path: str, result: np.ndarray | str, labels: list[str], top_k: int) -> Row:
    if isinstance(result, str):
        return {"path": path, "label": None, "score": None, "top_k": [], "error": result}
    best = np.argsort(-result)[:top_k]  # as Classifier.classify ranks them
    top = [{"label": labels[i], "score": float(result[i])} for i in best.tolist()]
    return {"path": path, "label": top[0]["label"], "score": top[0]["score"], "top_k": top, "error": None}


# Latents are drawn 64 at a time, one seed per block of 64 indices of a class: 64 is the
# service's default `max_generate`, so one /generate call gives any block back, and one
# draw per image cost more than rendering the image (numpy seeds a Mersenne Twister each time).
SEED_BLOCK = 64


@dataclasses.dataclass(frozen=True)
class Generate(Job):
    """`per_class` images of each class → `out/<class>/<index>.png` and a manifest row each.

    Image `index` of class `c` is row `index % 64` of the generator's latents for the seed
    `block_seed(seed, c, index // 64)`: the same image however the work is split, resumed
    or sharded, and the service gives it back (`/generate {"seed": s, "count": 64, "class": c}`)."""

    per_class: int = 1
    seed: int = 0
    classes: tuple[str, ...] = ()  # names or ids, as --class gives them; empty: every class
    kind: ClassVar[type[ServedModel]] = Generator
    command: ClassVar[str] = "generate"
    help: ClassVar[str] = "generate a labelled image folder: OUT/<class>/<index>.png"

    @staticmethod
    def arguments(command: argparse.ArgumentParser) -> None:
        add = command.add_argument
        add("--per-class", type=int, required=True, help="images of each class")
        add("--class", dest="classes", action="extend", nargs="+", default=[], metavar="CLASS",
            help="class names or ids (default: every class)")
        add("--seed", type=int, default=0, help="the job's seed; image i of class c is the same "
                                                "for the same seed, however the work is split")
        add("--out", required=True, type=Path, help="the image folder (and its manifest.jsonl)")

    @classmethod
    def of(cls, args: argparse.Namespace, shard: tuple[int, int]) -> Generate:
        if args.per_class < 1:
            raise ValueError("--per-class must be at least 1")
        return cls(args.out, shard, per_class=args.per_class, seed=args.seed, classes=tuple(args.classes))

    @property
    def output(self) -> Path:
        return self.out / f"manifest{self.suffix}.jsonl"

    @property
    def log_folder(self) -> Path:
        return self.out / f".job{self.suffix}"  # hidden: an image folder's subfolders are its classes

    def spec(self, model: Generator) -> dict[str, Any]:
        return {"job": "generate", "per_class": self.per_class, "seed": self.seed, "classes": list(self.classes),
                **self.model_spec(model)}

    def items(self, model: Generator) -> tuple[list[Row], int]:
        class_ids = [model.class_id(value, "--class") for value in self.classes]
        every = range(len(model.classes)) if model.conditional else range(1)
        return [{"class_id": class_id, "index": index}
                for class_id in (class_ids or every) for index in range(self.per_class)], 0

    def start(self, model: Generator, items: list[Row]) -> tuple[list[Row], list[int], Latents, Future]:
        seeds, plan = _plan(model, self.seed, items)
        return items, seeds, plan, asyncio.run_coroutine_threadsafe(_rendered(model, plan), _event_loop())

    def finish(self, model: Generator, started: tuple[list[Row], list[int], Latents, Future]) -> list[Row]:
        items, seeds, plan, future = started
        # render_plan's own bound comes first; the encoding after it is bounded by the same again
        generation, pngs = future.result(timeout=2 * model.settings.timeout_s + 1)
        identity = {"model": model.info.name, "version": model.info.version, "job_seed": self.seed}
        return [_generated(item, name, png, latent, seed) | identity for item, name, png, latent, seed in
                zip(items, generation.class_names, pngs, plan.latents, seeds)]

    def store(self, rows: list[Row]) -> list[Row]:
        """Write the part's PNGs (a rerun writes the same bytes, so a killed part just runs again)."""
        for folder in {Path(row["path"]).parent for row in rows}:
            (self.out / folder).mkdir(parents=True, exist_ok=True)
        _in_parallel(lambda row: (self.out / row["path"]).write_bytes(row.pop("png")), rows)
        return rows

    def write(self, log: JobLog, parts: list[int]) -> dict[str, int]:
        return write_lines(self.output, log.lines(parts))  # the manifest is the log's own JSON Lines


async def _rendered(model: Generator, plan: Latents) -> tuple[Generation, list[bytes]]:
    """A part's images and their PNGs, encoded on the encoder threads the moment the model
    returns them: while this thread writes the part before and the model renders the one after."""
    generation = await model.render_plan(plan)
    return generation, await encode_pngs_off_loop(generation.images)


def block_seed(seed: int, class_id: int, block: int) -> int:
    """The seed of one block of a class: a 32-bit hash of (job seed, class, block), numpy's SeedSequence."""
    return int(np.random.SeedSequence([seed, class_id, block]).generate_state(1)[0])


def _plan(model: Generator, seed: int, items: list[Row]) -> tuple[list[int], Latents]:
    """Each image's block seed, and its latent row from the generator's own `latents_for_seed`:
    the one place that asks the generator for latents."""
    blocks = {(item["class_id"], item["index"] // SEED_BLOCK) for item in items}
    seeds = {block: block_seed(seed, *block) for block in blocks}
    drawn = {block: model.latents_for_seed(seeds[block], SEED_BLOCK) for block in blocks}
    keys = [(item["class_id"], item["index"] // SEED_BLOCK) for item in items]
    latents = np.stack([drawn[key][item["index"] % SEED_BLOCK] for key, item in zip(keys, items)])
    class_ids = np.array([item["class_id"] for item in items], np.int32)
    return [seeds[key] for key in keys], Latents(latents, class_ids, None)


def _generated(item: Row, name: str | None, png: bytes, latent: np.ndarray, seed: int) -> Row:
    path = f"{class_folder(name or 'generated')}/{item['index']}.png"
    return {"path": path, "class": name, "class_id": item["class_id"], "index": item["index"], "seed": seed,
            "seed_row": item["index"] % SEED_BLOCK, "latent": latent.tolist(),
            "sha256": hashlib.sha256(png).hexdigest(), "png": png}


def _in_parallel(function, items: list) -> list:
    """`function` over `items`, in order, one chunk per core: file writes release the GIL,
    and alone in this thread they took longer than the generator itself (a 28 px DCGAN); a
    future per item cost more than a small file."""
    size = -(-len(items) // cores()) or 1
    chunks = [items[start:start + size] for start in range(0, len(items), size)]
    return [result for done in _threads().map(lambda chunk: [function(item) for item in chunk], chunks)
            for result in done]


@functools.cache
def _threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(cores(), thread_name_prefix="batch-io")


@functools.cache
def _event_loop() -> asyncio.AbstractEventLoop:
    """One loop in a daemon thread for the generator's async `render_plan`: the runner's
    thread stays free to queue the next part and to write this one."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="batch-loop", daemon=True).start()
    return loop
