"""`python -m service.batch classify|generate|...`: bulk jobs on the service's models, in-process.

    python -m service.batch classify photos/ --out labels.parquet --model classifier:3
    python -m service.batch generate --per-class 1000 --seed 7 --out synthetic/
    python -m service.batch classify photos/ --out labels.parquet --engine ray --address HEAD:6379

Each registered kind adds its jobs (`Wire.jobs`). All are resumable: run the same command again after a crash or a kill and it goes on
from the last part it logged (`jobs.py`, `joblog.py`). A mistake in the command (a bad
flag, an unknown model or class, a log left by another job) ends with one line and
status 2; a file that cannot be classified is a row with its error, never an exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from service.core import ServedModel, ServiceError, Settings
from service.core.runtimes import RUNTIMES

from .joblog import JobLog, JobLogError
from .jobs import Job
from .models import ModelArgumentError, load, parse
from .sources import SourceError

USER_ERRORS = (ModelArgumentError, SourceError, JobLogError, ServiceError, ValueError)
PART_SIZE = 256  # items per logged part: a kill loses at most two parts' work; 100k images make 391 files


def parser(kinds: Iterable[type[ServedModel]] | None = None) -> argparse.ArgumentParser:
    """One subcommand per bulk job of the kinds (default: the registered ones, `kind_modules` too)."""
    from service.kinds import registered
    from service.kinds.wire import wire_of

    top = argparse.ArgumentParser(prog="python -m service.batch", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    for kind in registered(Settings.load().kind_modules).values() if kinds is None else kinds:
        for job in wire_of(kind).jobs:
            command = commands.add_parser(job.command, help=job.help)
            job.arguments(command)
            _common(command)
            command.set_defaults(job=job)
    return top


def _common(command: argparse.ArgumentParser) -> None:
    add = command.add_argument
    add("--model", help="name, name:version, name@label, a model folder or a model-store tag "
                        "(default: the service's default model of this kind)")
    add("--engine", choices=("local", "ray"), default="local", help="in this process, or on Ray (default: local)")
    add("--address", help="Ray: the cluster to join (default: RAY_ADDRESS, else a local cluster)")
    add("--actors", type=int, help="Ray: model replicas (default: the cluster's CPUs / --cpus-per-actor)")
    add("--cpus-per-actor", type=int, default=1, help="Ray: CPUs (and LiteRT interpreters) per replica (default: 1)")
    add("--runtime", choices=sorted(RUNTIMES), help="the model's runtime (default: the service's setting, auto)")
    add("--interpreters", type=int, help="local: LiteRT interpreters and batch workers (default: one per core)")
    add("--part-size", type=int, default=PART_SIZE, help=f"items per logged part (default: {PART_SIZE})")
    add("--shard", default="0/1", help="I/N: run every N-th part from the I-th (a Kubernetes Indexed Job's "
                                      "pod I of N); outputs get a -I-of-N suffix (default: 0/1, everything)")
    add("--overwrite", action="store_true", help="start over: drop an unfinished job's log and the output")
    add("--no-progress", action="store_true", help="no progress bar (the summary is still printed)")


def job_of(args: argparse.Namespace) -> Job:
    shard = _shard(args.shard)
    if args.part_size < 1:
        raise ValueError("--part-size must be at least 1")
    return args.job.of(args, shard)


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise ValueError(f"--shard {text!r}: give I/N with 0 <= I < N, e.g. 0/4")
    return int(index), int(count)


def settings_of(args: argparse.Namespace, kind: str) -> Settings:
    """The service's settings (DIPTYCH_* variables, DIPTYCH_CONFIG) with this command's flags on top."""
    settings = Settings.load()
    if args.runtime:
        settings = settings.with_kind(kind, runtime=args.runtime)
    if args.interpreters:
        settings = dataclasses.replace(settings, interpreters=args.interpreters)
    return settings


@dataclasses.dataclass(frozen=True)
class Summary:
    command: str
    images: int  # run now (not by an earlier, killed run)
    seconds: float
    errors: int  # rows with an error, in the whole output
    rows: int
    output: Path
    skipped: int = 0  # SOURCE's files that are not images by their extension: no row

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        skipped = f", {self.skipped:,} files skipped (not images by their extension)" if self.skipped else ""
        return (f"{self.command}: {self.images:,} images in {self.seconds:.1f} s ({self.images_per_second:,.1f} "
                f"images/s), {self.errors:,} errors{skipped}; wrote {self.output} ({self.rows:,} rows)")


def run(args: argparse.Namespace) -> Summary:
    """Run the job the arguments describe."""
    job, ref = job_of(args), parse(args.model)
    settings = settings_of(args, job.kind.kind)
    # On Ray the actors run the model; the driver loads it once to check the request and
    # name its version (TensorFlow: no conversion, no warm-up).
    check_only = dataclasses.replace(settings.with_kind(job.kind.kind, runtime="tensorflow"), warmup_rounds=0)
    engine, model = load(job.kind, ref, check_only if args.engine == "ray" else settings)
    try:
        items, skipped = job.items(model)
        log = JobLog(job.log_folder, job.spec(model), items, args.part_size, job.line)
        _start_over_or_refuse(job, log, args.overwrite)
        log.open()
        mine = list(range(job.shard[0], log.parts, job.shard[1]))
        parts = log.pending(job.shard)
        todo, total = sum(map(log.size, parts)), sum(map(log.size, mine))
        described = f"{model.info.kind} {model.info.name}:{model.info.version}"
        print(f"{args.command}: {total:,} images with {described}" + (f", {total - todo:,} done by an earlier run"
                                                                      if todo < total else ""), file=sys.stderr)
        started = time.perf_counter()
        with _progress(total, total - todo, args) as bar:
            if args.engine == "ray":
                from .ray_runner import run_on_ray

                engine.close()
                run_on_ray(job, ref, settings, items, log, parts, bar.update, args.address, args.actors,
                           args.cpus_per_actor)
            else:
                from .local import run_local

                run_local(job, model, items, log, parts, bar.update)
        counts = job.write(log, mine)
        seconds = time.perf_counter() - started  # the output written too: it is part of the job
        log.remove()
    finally:
        engine.close()
    return Summary(args.command, todo, seconds, counts["errors"], counts["rows"], job.output, skipped)


def _start_over_or_refuse(job: Job, log: JobLog, overwrite: bool) -> None:
    if overwrite:
        shutil.rmtree(log.folder, ignore_errors=True)
        job.output.unlink(missing_ok=True)
    elif job.output.exists() and not log.folder.exists():
        raise JobLogError(f"{job.output} exists: that job is finished. Pass --overwrite to run it again")


def _progress(total: int, initial: int, args: argparse.Namespace):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc=args.command, disable=args.no_progress,
                mininterval=0.5, smoothing=0.1, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        print(run(args))
    except USER_ERRORS as error:  # the command's mistake, in one line: no traceback
        return _failed(f"error: {error}", 2)
    except KeyboardInterrupt:
        return _failed("interrupted: run the same command again to resume", 130)
    return 0


def _failed(message: str, status: int) -> int:
    print(message, file=sys.stderr)
    return status
