"""`--engine ray`: the same job as Ray Data `map_batches` over an actor pool.

Each actor holds one model replica, loaded as the service and the in-process runner load
it (the engine, the kinds, the LiteRT interpreter pool), and runs the job's own
`start`/`finish` on the batches Ray hands it. The rows come back to the driver, which
stores and logs each part as soon as all its rows are in: the job log, the output and
any PNGs are written by the driver alone, so resuming works as in-process and the
workers need read access to the inputs only (a classify job's files), never a disk to
write to. `--address` joins a running cluster (`ray start`, KubeRay; a RayJob sets
RAY_ADDRESS, which Ray reads by itself); without it Ray starts a local one.

Every node must have this project installed (the container image, or the same checkout):
the actors import `service.batch` and load the model from the same `--model` reference,
so a folder must be on a volume every node mounts, or use a model-store tag.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pickle
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from service.core import Settings

from .joblog import JobLog
from .jobs import Job, Row
from .models import ModelArgument, load

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports; before ray is imported


class Replica:
    """One model replica per actor."""

    def __init__(self, job: Job, ref: ModelArgument, settings: Settings) -> None:
        import ray

        self.job = job
        self.engine, self.model = load(job.kind, ref, settings)
        context = ray.get_runtime_context()
        self.worker = f"actor {context.get_actor_id()} on node {context.get_node_id()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [json.loads(text) for text in batch["item"]]
        rows = self.job.finish(self.model, self.job.start(self.model, items))
        # Pickled: rows hold nested lists and (generate) PNG bytes; Ray pickles between its processes anyway.
        return {"part": batch["part"], "position": batch["position"],
                "row": np.array([pickle.dumps(row) for row in rows], dtype=object),
                "worker": np.array([self.worker] * len(rows), dtype=object)}


def run_on_ray(job: Job, ref: ModelArgument, settings: Settings, items: list[Row], log: JobLog, parts: list[int],
               done: Callable[[int], None], address: str | None, actors: int | None, cpus_per_actor: int) -> None:
    """Run `parts` of `items` on Ray, logging each part as its last row comes back."""
    import ray

    started_here = _connect(ray, address)
    try:
        actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_actor)
        rows = [{"part": part, "position": position, "item": json.dumps(items[position])}
                for part in parts for position in range(len(items))[log.bounds(part)]]
        dataset = ray.data.from_items(rows).map_batches(
            Replica, fn_constructor_kwargs={"job": job, "ref": ref,
                                            "settings": _replica_settings(settings, cpus_per_actor)},
            batch_size=log.part_size, batch_format="numpy", num_cpus=cpus_per_actor,
            compute=ray.data.ActorPoolStrategy(size=actors),
        )
        for worker, count in sorted(_collect(job, dataset, log, done).items()):
            print(f"ray: {count:,} images by {worker}", file=sys.stderr)  # who did the work, for the operator
    finally:
        if started_here:
            ray.shutdown()


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local one without its
    dashboard; True when this process started it (and so stops it)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the job's own bar counts logged parts
    context.print_on_execution_start = False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        return False
    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    return True


def _replica_settings(settings: Settings, cpus: int) -> Settings:
    """One interpreter (and batch worker) per CPU the actor reserves: `cores()` inside an
    actor sees the whole node, and two actors on a node would each start one per core."""
    return dataclasses.replace(settings, interpreters=cpus)


def _collect(job: Job, dataset: Any, log: JobLog, done: Callable[[int], None]) -> collections.Counter:
    """Gather rows by part, in any order; store and log each complete part at once. Returns
    how many rows each actor (and node) computed."""
    waiting: dict[int, dict[int, Row]] = {}
    workers: collections.Counter = collections.Counter()
    for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
        workers.update(batch["worker"].tolist())
        for part, position, row in zip(batch["part"].tolist(), batch["position"].tolist(), batch["row"]):
            waiting.setdefault(part, {})[position] = pickle.loads(row)  # noqa: S301 - our actors' rows
            if len(waiting[part]) == log.size(part):
                rows = [row for _, row in sorted(waiting.pop(part).items())]
                log.write(part, job.store(rows))
                done(len(rows))
    return workers
