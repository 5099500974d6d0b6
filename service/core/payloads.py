"""The payload log: requests and responses as CloudEvents, for finding out why a model
misbehaved, written where it never slows or fails a request.

Each sampled request gives two events, with KServe's logger's types and attributes (its
consumers read them): `org.kubeflow.serving.inference.request` and `...response`, `id` the
request's id (the same across HTTP and gRPC, and returned to the caller), `source`
`diptych/<model>`, and the extensions `inferenceservicename` (the model), `endpoint` (its
version) and `component` ("predictor", or "shadow" for a shadow version's answers). The
data is what the model's kind says of the request: images as a sha256 (and optionally a
small thumbnail), generations with their seed, latents, class and version, so any logged
image can be made again.

`log()` only puts the event in a bounded queue (dropping it, and counting the drop, when the
queue is full); one background thread writes the queue to a JSON-lines file, rotated by
size, or POSTs each event to a URL (CloudEvents' structured mode).
"""

from __future__ import annotations

import datetime
import json
import logging
import queue
import threading
from pathlib import Path
from typing import Any

from .metrics import metrics

log = logging.getLogger("diptych")

REQUEST, RESPONSE = "org.kubeflow.serving.inference.request", "org.kubeflow.serving.inference.response"


class PayloadLog:
    def __init__(self, target: str, queue_size: int = 1000, max_bytes: int = 100 * 2**20, files: int = 5) -> None:
        self.target = target
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(queue_size)
        self._max_bytes, self._files = max_bytes, files
        self._thread = threading.Thread(target=self._write, name="diptych-payloads", daemon=True)
        self._thread.start()

    def log(self, request_id: str, model: str, version: str, request: dict, response: dict,
            component: str = "predictor") -> None:
        """Queue the request's two events; never blocks."""
        for kind, data in ((REQUEST, request), (RESPONSE, response)):
            event = {"specversion": "1.0", "id": request_id, "source": f"diptych/{model}", "type": kind,
                     "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                     "datacontenttype": "application/json", "inferenceservicename": model, "endpoint": version,
                     "component": component, "data": data}
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                metrics().payload_events.labels(outcome="dropped").inc()

    def close(self, timeout: float = 10) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _write(self) -> None:
        if self.target.startswith(("http://", "https://")):
            import httpx

            client = httpx.Client(timeout=10)  # one connection, kept alive, for every event

            def send(event: dict[str, Any]) -> None:
                client.post(self.target, content=json.dumps(event),
                            headers={"Content-Type": "application/cloudevents+json"}).raise_for_status()
        else:
            send = self._append
        while (event := self._queue.get()) is not None:
            try:
                send(event)
                metrics().payload_events.labels(outcome="written").inc()
            except Exception as error:  # a full disk or a gone collector loses events, never a request
                metrics().payload_events.labels(outcome="failed").inc()
                log.warning("payload log: an event was lost: %s: %s", type(error).__name__, error)

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
