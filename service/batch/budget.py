"""The bytes of files a classify job has read and the model has not yet decoded, bounded.

A part is `--part-size` files, and the runner queues one part behind the running one: of
Fashion-MNIST PNGs (300 bytes) that is nothing, of phones' 12-megapixel JPEGs (3-5 MB)
two parts were 1-2 GB held in the batcher's queue. The runner now takes a file's bytes
from this budget before it reads the next one and the model gives them back as it decodes
the file, so memory stays flat whatever the files and the part size.
"""

from __future__ import annotations

import functools
import threading

from service.core import DeadlineExceeded

IN_FLIGHT_BYTES = 64 * 2**20  # four of the largest files a request may carry (max_body_bytes): the
#                               batch workers never wait for the reader, and 12-MP photos stay ~100 MB


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.waiting = 0  # threads blocked in take(): what a test can see
        self.taken = 0  # bytes read and not yet decoded
        self._changed = threading.Condition()

    def take(self, size: int, timeout_s: float) -> None:
        """Block until `size` more bytes fit (a file larger than the whole budget goes alone);
        bounded as a wait for a result is: a longer wait means a stuck model."""
        with self._changed:
            self.waiting += 1
            fits = self._changed.wait_for(lambda: self.taken == 0 or self.taken + size <= self.limit, timeout_s)
            self.waiting -= 1
            if not fits:
                raise DeadlineExceeded(f"no file decoded within {timeout_s:g} s")
            self.taken += size

    def give(self, size: int) -> None:
        with self._changed:
            self.taken -= size
            self._changed.notify_all()


@functools.cache
def in_flight() -> ByteBudget:
    """This process's budget (one job runs at a time in it; a Ray actor reads nothing)."""
    return ByteBudget(IN_FLIGHT_BYTES)
