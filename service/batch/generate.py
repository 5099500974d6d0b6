"""The generate job: a labelled image folder from the generator, one manifest row per image
(the steps `jobs.py` describes, run by both runners)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import hashlib
import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from contract.imagefolder import class_folder
from contract.runtime import cores
from service.core import ServedModel
from service.core.images import encode_pngs_off_loop
from service.kinds import Generator
from service.kinds.generator import Generation, Latents

from .joblog import JobLog
from .jobs import Job, Row
from .writers import write_lines

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
        _in_parallel(lambda row: _write(f"{self.out}/{row['path']}", row.pop("png")), rows)
        return rows

    def line(self, row: Row) -> str:
        """The manifest's line: the latent's numbers written with 9 significant digits (what a
        float32 needs to come back exact) by one format call, 3x faster than json's shortest
        double repr, which took a third of the job's time under the GIL (py-spy, 28-px DCGAN)."""
        latent = row["latent"]
        numbers = ", ".join(["%.9g"] * len(latent)) % tuple(latent)
        return f'{json.dumps({key: value for key, value in row.items() if key != "latent"})[:-1]}, "latent": [{numbers}]}}'

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


def _write(path: str, data: bytes) -> None:
    """A file's bytes in three system calls: Path.write_bytes' file objects cost more than the write."""
    file, left = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), memoryview(data)
    try:
        while left:  # one write takes a small PNG whole; a short write is taken up again
            left = left[os.write(file, left):]
    finally:
        os.close(file)


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
