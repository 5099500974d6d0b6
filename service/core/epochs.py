"""Waiting for the requests that may still use a retired model version, as RCU does.

Every request holds the epoch in which it was admitted (`enter`, `leave`). Retiring a
version first takes it out of the routes, then starts a new epoch (`advance`): requests
admitted from then on cannot see it, and once no request of an earlier epoch is left
(`wait_past`) nothing can, so it is safe to close. No lock is taken on the request path
but this counter's.
"""

from __future__ import annotations

import collections
import threading
import time


class Epochs:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoch = 0
        self._admitted: collections.Counter[int] = collections.Counter()  # requests in flight, by epoch
        self._left = threading.Condition(self._lock)

    def enter(self) -> int:
        with self._lock:
            self._admitted[self._epoch] += 1
            return self._epoch

    def leave(self, epoch: int) -> None:
        with self._lock:
            self._admitted[epoch] -= 1
            if not self._admitted[epoch]:
                del self._admitted[epoch]
                self._left.notify_all()

    def advance(self) -> int:
        """Start a new epoch; return the one that ended."""
        with self._lock:
            self._epoch += 1
            return self._epoch - 1

    def wait_past(self, epoch: int, timeout: float) -> bool:
        """Until no request admitted in `epoch` or before is left (False: `timeout` passed first)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while any(admitted <= epoch for admitted in self._admitted):
                if not self._left.wait(deadline - time.monotonic()) and time.monotonic() >= deadline:
                    return False
            return True
