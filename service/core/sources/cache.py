"""The local cache of versions fetched from object storage, bounded in size (`cache_max_mb`).

    <cache_dir>/<name>-<version>-<digest>/   a fetched version (digest: of its URL and card ETag)
    <cache_dir>/<name>-<version>-<digest>.lock   held shared while a worker uses it; its mtime: last use
    <cache_dir>/.lock                        one fetch or eviction at a time, among all workers

A version is downloaded into a hidden staging folder and renamed into place whole, so a
fetch that fails leaves nothing behind and a half-downloaded version is never loaded. The
service's workers share the cache: each holds a shared `flock` on the versions it loads or
serves (released by the manager when it unloads them, or by the kernel when it dies), and
eviction takes the least recently used versions that nobody holds. A fetch that cannot make
room without evicting a served version fails, saying so, and the served versions stay.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .base import Release


class CacheFull(Exception):
    """The version does not fit in `cache_max_mb` beside the versions in use."""


def check_cache_dir(folder: Path, needed_by: str) -> None:
    """A ValueError naming the setting when `folder` cannot hold fetched versions: found at
    start, not at each version's fetch (a read-only root file system, a path through a file)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise ValueError(f"setting cache_dir: {folder} is not a writable folder ({error.strerror or error}), and "
                         f"{needed_by} is fetched there: set DIPTYCH_CACHE_DIR to a writable volume") from None


class Cache:
    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes  # 0: no bound
        self._pins: dict[str, list[int]] = {}  # this process's holds: key → [lock file descriptor, users]
        self._lock = threading.Lock()

    def fetch(self, key: str, size: int, download: Callable[[Path], None]) -> tuple[Path, Release]:
        """The folder `key`, downloaded by `download(staging folder)` unless cached, held until released."""
        entry = self.folder / key
        with self._locked():
            if not entry.is_dir():
                self._make_room(size)
                staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=self.folder))
                try:
                    download(staging)
                    staging.rename(entry)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
            return entry, self._hold(key)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for stale in self.folder.glob(".fetch-*"):  # a worker killed mid-fetch: no fetch runs now
                shutil.rmtree(stale, ignore_errors=True)
            yield

    def _make_room(self, size: int) -> None:
        """Evict the least recently used versions nobody holds until `size` more bytes fit; when
        they cannot, evict none and say so."""
        if not self.max_bytes:
            return
        entries = sorted((self._last_use(path.name), path.name, _bytes(path))
                         for path in self.folder.iterdir() if path.is_dir() and not path.name.startswith("."))
        used, chosen = sum(bytes_ for _, _, bytes_ in entries), []
        try:
            for _, key, bytes_ in entries:
                if used + size <= self.max_bytes:
                    break
                if (descriptor := self._unheld(key)) is not None:
                    chosen.append((key, descriptor))
                    used -= bytes_
            if used + size > self.max_bytes:
                raise CacheFull(f"the version needs {size / 2**20:.2f} MiB and the versions in use leave "
                                f"{(self.max_bytes - used) / 2**20:.2f} MiB of cache_max_mb = "
                                f"{self.max_bytes / 2**20:g} free: raise it")
            for key, _ in chosen:
                self._evict(key)
        finally:
            for _, descriptor in chosen:
                os.close(descriptor)

    def _unheld(self, key: str) -> int | None:
        """The version's lock file, held exclusively, when no worker holds it; else None."""
        descriptor = os.open(self._lock_file(key), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return None
        return descriptor

    def _evict(self, key: str) -> None:
        trash = Path(tempfile.mkdtemp(prefix=".fetch-evicted-", dir=self.folder))
        (self.folder / key).rename(trash / key)  # gone at once; removed below
        shutil.rmtree(trash, ignore_errors=True)
        self._lock_file(key).unlink()

    def _hold(self, key: str) -> Release:
        """Hold `key` shared (under the cache's lock, so no eviction runs meanwhile) and mark its use."""
        pin = self._pins.get(key)
        if pin is None:
            descriptor = os.open(self._lock_file(key), os.O_RDWR | os.O_CREAT)
            fcntl.flock(descriptor, fcntl.LOCK_SH)
            pin = self._pins[key] = [descriptor, 0]
        pin[1] += 1
        now = time.time_ns()  # not the file system's clock, whose ticks are coarse: the order of uses counts
        os.utime(self._lock_file(key), ns=(now, now))
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._lock:
                pin[1] -= 1
                if not pin[1] and self._pins.get(key) is pin:
                    del self._pins[key]
                    os.close(pin[0])  # the shared hold goes with it

        return release

    def _last_use(self, key: str) -> float:
        try:
            return self._lock_file(key).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _lock_file(self, key: str) -> Path:
        return self.folder / f"{key}.lock"


def _bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
