"""Adaptive batching, shared by every protocol adapter.

One worker thread per model takes whatever items are queued (up to `max_batch_size`)
whenever the model is free, and runs them in one model call. Alone, a request runs at
once; under load, items pile up while the model is busy and the next call takes them
all, so the batch size follows the traffic. `window_s` optionally waits a little for a
fuller batch. Callers get `concurrent.futures.Future`s, so asyncio code (HTTP, grpc.aio)
and plain threads can submit alike; a cancelled future (a caller that timed out) is
dropped before its batch runs.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    def __init__(
        self,
        run_batch: Callable[[list[Item]], list[Result | Exception]],
        max_batch_size: int,
        window_s: float = 0.0,
        name: str = "batcher",
    ) -> None:
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._window_s = window_s
        self._queue: collections.deque[tuple[Item, Future[Result], float]] = collections.deque()
        self._wakeup = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, items: Sequence[Item]) -> list[Future[Result]]:
        futures: list[Future[Result]] = [Future() for _ in items]
        now = time.monotonic()
        with self._wakeup:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.extend((item, future, now) for item, future in zip(items, futures))
            self._wakeup.notify()
        return futures

    def close(self) -> None:
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        self._thread.join()

    def _next_batch(self) -> list[tuple[Item, Future[Result]]] | None:
        with self._wakeup:
            while not self._queue and not self._closed:
                self._wakeup.wait()
            if self._closed:
                for _, future, _ in self._queue:
                    future.cancel()
                return None
            deadline = self._queue[0][2] + self._window_s
            while len(self._queue) < self._max_batch_size and (left := deadline - time.monotonic()) > 0:
                self._wakeup.wait(left)
            batch = []
            while self._queue and len(batch) < self._max_batch_size:
                item, future, _ = self._queue.popleft()
                if future.set_running_or_notify_cancel():
                    batch.append((item, future))
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            try:
                results = self._run_batch([item for item, _ in batch])
            except Exception as error:  # a bug in run_batch: fail this batch, keep serving
                results = [error] * len(batch)
            for (_, future), result in zip(batch, results):
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
