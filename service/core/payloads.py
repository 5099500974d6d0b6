"""The payload log: requests and responses as CloudEvents, for finding out why a model
misbehaved, written where it never slows or fails a request.

Each sampled request gives two events, with KServe's logger's types and attributes (its
consumers read them): `org.kubeflow.serving.inference.request` and `...response`, `source`
`diptych/<model>`, and the extensions `inferenceservicename` (the model), `endpoint` (its
version) and `component` ("predictor", or "shadow" for a shadow version's answers). Every
event's `id` is its own, made here: CloudEvents requires `source` + `id` to be unique, and a
client's `X-Request-Id` (which it may send twice, or choose to collide) must not decide
what a consumer deduplicates. The events of one request share the extension `requestid`
(the server's id for it, which also decides the sampling); a client's own `X-Request-Id`
is kept as `clientrequestid` (extension names: lower-case ASCII letters and digits only).
The data is what the model's kind says of the request: images as a sha256 (and optionally
a small thumbnail), generations with their seed, latents, class and version, so any logged
image can be made again.

`log()` only puts the event in a bounded queue (dropping it, and counting the drop, when the
queue is full); one background thread describes the exchange (the kind's hashes and
thumbnails are computed there, never on the event loop), then writes it to a JSON-lines
file, rotated by size, or POSTs each event to a URL (CloudEvents' structured mode).
`close()` gives the writer a bounded grace period: what a stuck sink leaves is dropped
and counted, so shutdown never waits on it.
"""

from __future__ import annotations

import datetime
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .metrics import metrics

log = logging.getLogger("diptych")

REQUEST, RESPONSE = "org.kubeflow.serving.inference.request", "org.kubeflow.serving.inference.response"
GRACE_S = 5.0  # how long close() lets the writer finish what is queued
SEND_TIMEOUT_S = 10.0  # a POST to the collector that takes longer loses its event (counted as failed)
# Events still to be described hold their request's inputs (up to `max_body_bytes` each):
# at most this many wait, whatever the queue's size, so a slow sink cannot fill the memory.
MAX_UNDESCRIBED = 64
Data = dict[str, Any] | Callable[[], dict[str, Any]]  # an event's data, or how to make it (on the log's thread)


class PayloadLog:
    def __init__(self, target: str, queue_size: int = 1000, max_bytes: int = 100 * 2**20, files: int = 5) -> None:
        self.target = target
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(queue_size)
        self._max_bytes, self._files = max_bytes, files
        self._closed = threading.Event()  # log() drops from now on
        self._lock = threading.Lock()
        self._undescribed = 0  # queued events whose data is still a function (holding a request's inputs)
        self._abandoned = threading.Event()  # the grace period is over: the writer stops at its next event
        self._thread = threading.Thread(target=self._write, name="diptych-payloads", daemon=True)
        self._thread.start()

    def log(self, request_id: str, model: str, version: str, request: Data, response: Data,
            component: str = "predictor", client_id: str | None = None) -> None:
        """Queue the request's two events; never blocks. `request` and `response` may be
        functions that describe them: they run on the log's thread, not the caller's."""
        for kind, data in ((REQUEST, request), (RESPONSE, response)):
            event = {"specversion": "1.0", "id": uuid.uuid4().hex, "source": f"diptych/{model}", "type": kind,
                     "time": datetime.datetime.now(datetime.UTC).isoformat(),
                     "datacontenttype": "application/json", "inferenceservicename": model, "endpoint": version,
                     "component": component, "requestid": request_id,
                     **({"clientrequestid": client_id} if client_id else {}), "data": data}
            if not self._queued(event):
                metrics().payload_events.labels(outcome="dropped").inc()

    def _queued(self, event: dict[str, Any]) -> bool:
        """Queue an event unless the log is closed, the queue is full, or (for one still to be
        described, which holds the request's inputs) `MAX_UNDESCRIBED` are waiting already."""
        undescribed = callable(event["data"])
        with self._lock:
            if self._closed.is_set() or (undescribed and self._undescribed >= MAX_UNDESCRIBED):
                return False
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                return False
            self._undescribed += undescribed
            return True

    def close(self, grace_s: float = GRACE_S) -> None:
        """Write what is queued within `grace_s`, then stop; whatever a slow or stuck sink
        leaves by then is dropped and counted (the writer, a daemon thread, is left behind)."""
        with self._lock:  # no log() call queues anything after this
            self._closed.set()
        deadline = time.monotonic() + grace_s
        try:
            self._queue.put(None, timeout=grace_s)  # the stop marker waits for room, within the grace period
            self._thread.join(max(0.0, deadline - time.monotonic()))
        except queue.Full:
            pass
        if self._thread.is_alive():
            self._abandoned.set()
            dropped = self._drop_queued()
            self._queue.put_nowait(None)  # emptied, and log() adds nothing now: the writer ends when its sink returns
            log.warning("payload log: the sink did not finish within %g s; %d queued events dropped", grace_s, dropped)

    def _drop_queued(self) -> int:
        dropped = 0
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                return dropped
            if event is not None:
                dropped += 1
                metrics().payload_events.labels(outcome="dropped").inc()

    def _write(self) -> None:
        if self.target.startswith(("http://", "https://")):
            import httpx

            client = httpx.Client(timeout=SEND_TIMEOUT_S)  # one connection, kept alive, for every event

            def send(event: dict[str, Any]) -> None:
                client.post(self.target, content=json.dumps(event),
                            headers={"Content-Type": "application/cloudevents+json"}).raise_for_status()
        else:
            send = self._append
        while (event := self._queue.get()) is not None:
            if self._abandoned.is_set():
                metrics().payload_events.labels(outcome="dropped").inc()
                return
            try:
                if callable(event["data"]):
                    event["data"] = self._described(event["data"])
                send(event)
                metrics().payload_events.labels(outcome="written").inc()
            except Exception as error:  # a full disk or a gone collector loses events, never a request
                metrics().payload_events.labels(outcome="failed").inc()
                log.warning("payload log: an event was lost: %s: %s", type(error).__name__, error)

    def _described(self, describe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            return describe()
        finally:
            with self._lock:
                self._undescribed -= 1

    def _append(self, event: dict[str, Any]) -> None:
        path = Path(self.target)
        if path.exists() and path.stat().st_size >= self._max_bytes:
            self._rotate(path)
        with path.open("a") as file:
            file.write(json.dumps(event, separators=(",", ":")) + "\n")

    def _rotate(self, path: Path) -> None:
        """payloads.jsonl → payloads.jsonl.1 → ... → .<files - 1>; the oldest goes."""
        oldest = path.with_name(f"{path.name}.{self._files - 1}")
        oldest.unlink(missing_ok=True)
        for index in range(self._files - 2, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{index + 1}"))
        path.replace(path.with_name(f"{path.name}.1"))
