"""The in-process runner: the job's parts through the model's batcher, one part queued
behind the one running, and the part before being written.

The batcher's workers (one per LiteRT interpreter, as in the service) run the model;
this thread reads and checks the next part's files (or plans its latents) and collects
the finished part's rows, while they work; a writer thread stores and logs it meanwhile
(a generate part's 256 files took two thirds of this thread's time, and the model waited:
py-spy). With one part queued ahead and one being written, neither waits for this thread;
more would only hold more results in memory. Parts are logged in order, each after its store.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from service.core import ServedModel

from .joblog import JobLog
from .jobs import Job, Row

PARTS_AHEAD = 1  # parts queued behind the running one


def run_local(job: Job, model: ServedModel, items: list[Row], log: JobLog, parts: list[int],
              done: Callable[[int], None]) -> None:
    """Run `parts` of `items`, logging each as it finishes; `done(n)` reports progress."""
    running: collections.deque = collections.deque()
    writing: Future | None = None

    def write(part: int, rows: list[Row]) -> None:
        log.write(part, job.store(rows))
        done(log.size(part))

    def finish_oldest(writer: ThreadPoolExecutor) -> None:
        nonlocal writing
        part, started = running.popleft()
        rows = job.finish(model, started)
        if writing is not None:
            writing.result()  # the part before is logged (or its error raised here) before this one
        writing = writer.submit(write, part, rows)

    with ThreadPoolExecutor(1, thread_name_prefix="batch-writer") as writer:
        for part in parts:
            running.append((part, job.start(model, items[log.bounds(part)])))
            if len(running) > PARTS_AHEAD:
                finish_oldest(writer)
        while running:
            finish_oldest(writer)
        if writing is not None:
            writing.result()
