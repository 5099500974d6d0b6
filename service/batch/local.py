"""The in-process runner: the job's parts through the model's batcher, one part queued
behind the one running.

The batcher's workers (one per LiteRT interpreter, as in the service) run the model;
this thread reads and checks the next part's files (or plans its latents) and writes the
finished part, while they work. With one part queued ahead the workers never wait for
this thread; more would only hold more results in memory.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from service.core import ServedModel

from .joblog import JobLog
from .jobs import Job, Row

PARTS_AHEAD = 1  # parts queued behind the running one


def run_local(job: Job, model: ServedModel, items: list[Row], log: JobLog, parts: list[int],
              done: Callable[[int], None]) -> None:
    """Run `parts` of `items`, logging each as it finishes; `done(n)` reports progress."""
    running: collections.deque = collections.deque()

    def finish_oldest() -> None:
        part, started = running.popleft()
        log.write(part, job.store(job.finish(model, started)))
        done(log.size(part))

    for part in parts:
        running.append((part, job.start(model, items[log.bounds(part)])))
        if len(running) > PARTS_AHEAD:
            finish_oldest()
    while running:
        finish_oldest()
