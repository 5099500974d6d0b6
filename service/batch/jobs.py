"""The bulk jobs: what each computes on a loaded model, and what it writes (classify here,
generate in `generate.py`).

A job is plain data (its arguments; picklable, so each Ray actor gets the same object)
with the steps both runners (`local.py`, `ray_runner.py`) call:

- `items(model)`: the work, in output order (JSON-able; the job log keeps its digest), and
  how many of the source's files are not part of it (skipped: not images);
- `start(model, items)`: submit one part to the model's batcher and return at once, so the
  in-process runner queues the next part while this one runs;
- `finish(model, started)`: wait for the results (bounded) and make the part's rows;
- `store(rows)`: what the driver does with a finished part before logging it (generate
  writes the PNGs there, so actors on other machines need no shared disk to write to);
- `line(row)`: a row as the job log's line of JSON;
- `write(log, parts)`: the final output from the logged parts, streamed part by part.

Everything model-specific goes through the kinds, as the service does: the classifier's
request checks (`checked`, `check_top_k`) and batcher, the generator's `plan` and
`render_plan`. No model code is copied here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from service.core import ServedModel, ValidationError
from service.kinds import Classifier
from service.kinds.classifier import TOP_K

from .budget import in_flight
from .joblog import JobLog
from .sources import list_files, read_bytes
from .writers import check_format, write_rows

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

    def line(self, row: Row) -> str:
        """A row as the job log's line of JSON."""
        return json.dumps(row)


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
        """Each file read and checked as a request's image is; the good ones join the batcher's
        queue one by one, each file's bytes taken from the in-flight budget before it is read
        and given back when the model has decoded it."""
        return [(item["path"], item.get("error") or _submitted(model, item["path"])) for item in items]

    def finish(self, model: Classifier, started: list[tuple[str, Future | str]]) -> list[Row]:
        identity = {"model": model.info.name, "version": model.info.version}
        rows = []
        for path, pending in started:
            result = pending if isinstance(pending, str) else _result(pending, model.settings.timeout_s)
            rows.append(_classified(path, result, model.labels, self.top_k) | identity)
        return rows

    def write(self, log: JobLog, parts: list[int]) -> dict[str, int]:
        return write_rows(self.output, log.rows(parts))


def _submitted(model: Classifier, path: str) -> Future | str:
    """The future of this file's result, or why it has none (the service's limits apply)."""
    budget = in_flight()
    size = min(_size(path), model.settings.max_body_bytes + 1)  # read_bytes reads at most this much
    budget.take(size, model.settings.timeout_s)
    try:
        (item,) = model.checked([read_bytes(path, model.settings.max_body_bytes)])
        (future,) = model.batcher.submit([item])
    except (OSError, ValidationError) as error:
        budget.give(size)
        return f"unreadable: {error.strerror or error}" if isinstance(error, OSError) else error.problem
    future.add_done_callback(lambda _: budget.give(size))
    return future


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # read_bytes says why


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
