"""A served model: where it comes from, its card, its runtime, warm-up, and its batches.

A model is named by a BentoML model-store tag (`classifier:latest`) or a SavedModel folder
(`models/classifier/3`), read through the model contract (`contract`). It runs on the runtime
its kind's setting names (runtimes.py: `auto`, `litert`, `tensorflow`, or any registered one).
Each model owns a `Batcher` with `batch_workers` workers (by default one per LiteRT interpreter):
every request's items join the next batch, which is one `Runtime.run`.

What a kind of model does with its batches and requests lives in its own module
(`service/kinds/`): a subclass of `ServedModel`. This module knows no kind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from contract.card import ModelCard
from contract.layout import resolve
from contract.runtime import TENSORFLOW, Runtime
from contract.signatures import Signature, signature_defs, signatures_of
from contract.signing import Provenance

from .batching import Batcher, results
from .config import Settings
from .context import RequestContext, current
from .errors import DeadlineExceeded, ServiceError
from .feedback import FeedbackStore
from .metrics import metrics
from .payloads import PayloadLog
from .runtimes import runtime_named

if TYPE_CHECKING:
    from tensorflow.core.protobuf.meta_graph_pb2 import SignatureDef

    from .model_settings import ModelConfig

log = logging.getLogger("diptych")

TensorRunner = Callable[..., Awaitable[dict[str, np.ndarray]]]
SHADOW_BATCHES = 4  # batches a shadow's queue may hold; a copy past them is dropped, as a shadow is best effort


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    kind: str
    name: str
    version: str
    source: str  # the tag or folder it was loaded from
    path: str  # the version folder it was read from
    card: ModelCard
    runtime: str = TENSORFLOW  # the name of the runtime that runs it (runtimes.py)
    conversion: dict[str, Any] | None = None  # the report of the conversion its runtime made, when there was one
    provenance: Provenance | None = None  # what its signature proved (contract/signing.py), checked before loading


def locate(ref: str) -> ModelInfo:
    """A store tag or a folder → its identity: the tag's name and version, else the card's."""
    path, store_name, store_version = resolve(ref)
    card = ModelCard.read(path)
    return ModelInfo(card.kind, store_name or card.name, store_version or str(card.version), ref, str(path), card)


def load_runtime(info: ModelInfo, settings: Settings, check: str) -> tuple[Runtime, ModelInfo]:
    """The runtime the kind's setting names, opened (a conversion judged by the kind's `check`),
    and `info` saying which runs it and how it converted."""
    runtime, conversion = runtime_named(settings.runtime_of(info.kind)).open(info, settings, check)
    return runtime, dataclasses.replace(info, runtime=runtime.name, conversion=conversion)


class ServedModel:
    """A loaded model behind its batcher. A kind subclasses it: `kind` (the card's), what its
    card must hold, an example batch for warm-up, how a batch runs, and its tensor runners."""

    kind: ClassVar[str] = ""
    card_fields: ClassVar[tuple[str, ...]] = ()  # the optional card fields this kind needs
    default_model: ClassVar[str] = ""  # what a request naming no model gets, unless [kinds.<kind>] says
    wire: ClassVar[str] = ""  # the module whose WIRE (service/kinds/wire.py) puts this kind on the wire
    # How a LiteRT conversion's outputs must agree with TensorFlow's (contract/checks.py):
    # within the card's tolerance, unless what the outputs mean asks for more (a classifier's top-1).
    conversion_check: ClassVar[str] = "tolerance"
    # The payload log, and the share of requests written to it: set by the manager from the
    # model's settings (manager/lifecycle.py, `configure`).
    payload_log: PayloadLog | None = None
    log_sample: float = 0.0
    log_thumbnails: bool = False
    feedback: FeedbackStore | None = None  # where its answers wait for labels, when its feedback is on
    # The SavedModel signatures this kind serves to the tensor protocols (TF Serving, V2): by
    # the set of input names a signature takes, the name of the method that runs it.
    tensor_runners: ClassVar[dict[frozenset[str], str]] = {}
    # Its SavedModel's SignatureDefMap, and the signatures in it that take inputs, read once
    # at load: a request never reads the folder, which may be gone or replaced since.
    signature_defs: Mapping[str, SignatureDef] = {}
    signatures: Mapping[str, Signature] = {}

    def __init__(self, info: ModelInfo, runtime: Runtime, settings: Settings) -> None:
        self.check_card(info.card)
        self.info = info
        self.settings = settings
        self._runtime = runtime
        labels = {"model": info.name, "version": info.version, "runtime": info.runtime}
        self._latency = metrics().inference_seconds.labels(**labels)
        self._batch_size = metrics().batch_size.labels(**labels)
        self.metric_labels = {"model": info.name, "version": info.version}
        self._request_seconds = metrics().model_request_seconds.labels(**self.metric_labels)
        self._queue_depth = metrics().queue_depth.labels(**self.metric_labels)
        self.batcher: Batcher = Batcher(
            self.run_batch, settings.max_batch_size, settings.batch_window_ms / 1000, name=f"{info.kind}-batcher",
            workers=settings.batch_worker_count(),
            observe_wait=metrics().queue_wait.labels(**self.metric_labels).observe,
        )

    @classmethod
    def load(cls, info: ModelInfo, settings: Settings) -> ServedModel:
        runtime, info = load_runtime(info, settings, cls.conversion_check)
        model = cls(info, runtime, settings)
        model.signature_defs = signature_defs(info.path)
        model.signatures = signatures_of(model.signature_defs)
        return model

    @classmethod
    def check_card(cls, card: ModelCard) -> None:
        """Refuse a card this kind cannot serve (CardError); a kind with `kind_fields` checks them too."""
        card.require(*cls.card_fields)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._queue_depth.set(self.batcher.depth)
        start = time.perf_counter()
        outputs = self._runtime.run(inputs)
        self._latency.observe(time.perf_counter() - start)
        self._batch_size.observe(len(next(iter(inputs.values()))))
        return outputs

    async def infer(self, items: Sequence[Any]) -> list[Any]:
        """Each item's result, from the batches they join; bounded by `timeout_s`. Counted per
        model version, with its outcome, so versions can be compared."""
        start, outcome, items = time.perf_counter(), "ok", list(items)
        try:
            futures = self.batcher.submit(items)
            self._queue_depth.set(self.batcher.depth)
            shadow = current().shadow
            if shadow is not None and shadow is not self:
                shadow.mirror(items)
            results = await self._wait(futures)
            self.keep_answers(results)
            return results
        except ServiceError as error:
            outcome = error.reason
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            metrics().model_requests.labels(**self.metric_labels, outcome=outcome).inc()
            self._request_seconds.observe(time.perf_counter() - start)

    async def _wait(self, futures: list[Future]) -> list[Any]:
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                return await results(futures)
        except TimeoutError:
            raise DeadlineExceeded(f"no result within {self.settings.timeout_s:g} s") from None

    def mirror(self, items: list[Any]) -> None:
        """A shadow's copy of another version's items: run in this version's batches, counted
        and logged, never awaited or returned (so it can neither slow nor fail the request).
        A copy takes no request slot, so nothing else bounds the shadow's queue: past
        SHADOW_BATCHES full batches waiting, the copy is dropped (counted as `dropped`)."""
        labels, context = self.metric_labels, current()
        if self.batcher.depth + len(items) > SHADOW_BATCHES * self.settings.max_batch_size:
            metrics().shadow_requests.labels(**labels, outcome="dropped").inc()
            return
        try:
            futures = self.batcher.submit(items)
        except RuntimeError:  # unloaded meanwhile
            metrics().shadow_requests.labels(**labels, outcome="unavailable").inc()
            return
        remaining, lock = [len(futures)], threading.Lock()

        def done(_: Future) -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            failed = any(future.cancelled() or future.exception() for future in futures)
            if not failed:
                results = [future.result() for future in futures]
                self.keep_answers(results, context, "shadow")
                self.log_exchange(lambda: {"items": len(items)}, lambda: self.describe(results), context, "shadow")
            # counted once its answers are kept: a client that sees the count can label them
            metrics().shadow_requests.labels(**labels, outcome="error" if failed else "ok").inc()

        for future in futures:
            future.add_done_callback(done)

    def log_exchange(self, request: Callable[[], dict[str, Any]], response: Callable[[], dict[str, Any]],
                     context: RequestContext | None = None, component: str = "predictor") -> None:
        """Write the request and its response to the payload log, when this request is sampled:
        by the server's id for it, so a request is logged whole (its shadow's answer too) or not
        at all, and no client chooses. `request` and `response` describe the exchange; they run
        on the log's own thread, and only for a sampled request."""
        if self.payload_log is None or not self.log_sample:
            return
        context = context or current()
        if int(hashlib.sha256(context.id.encode()).hexdigest()[:8], 16) < self.log_sample * 2**32:
            self.payload_log.log(context.id, self.info.name, self.info.version, request, response, component,
                                 context.client_id)

    def keep_answers(self, results: list[Any], context: RequestContext | None = None,
                     role: str = "predictor") -> None:
        """Keep what labels fed back are joined to (feedback.py), by the id the answer carried:
        every request of a model with feedback on, whatever its `log_sample`."""
        if self.feedback is not None and (answers := self.answers(results)) is not None:
            context = context or current()
            self.feedback.record(context.returned_id, self.info.name, self.info.version, role, *answers,
                                 context.feedback_entries)

    def answers(self, results: list[Any]) -> tuple[tuple[str, ...], list[tuple[int, float]]] | None:
        """A kind whose results can be labelled says its labels (one tuple, made when the version
        loads: every answer kept shares it) and, per result, the class it chose and that class's
        score; None (the default): a kind without labels."""
        return None

    def configure(self, config: ModelConfig) -> None:
        """The model's settings table, on this version (the manager calls it as it routes to it):
        the payload log's share and thumbnails; a kind takes its own keys too."""
        self.log_sample, self.log_thumbnails = config.log_sample, config.log_thumbnails

    def describe(self, results: list[Any]) -> dict[str, Any]:
        """What the payload log keeps of a batch's results (the kind says)."""
        return {"results": len(results)}

    def tensor_runner(self, inputs: frozenset[str]) -> TensorRunner | None:
        """The method that serves a signature taking these inputs, or None."""
        method = self.tensor_runners.get(inputs)
        return getattr(self, method) if method else None

    def warm_up(self) -> None:
        """First calls are slow (graph set-up, allocations): pay them before reporting ready.
        Logs how many model calls it made (`warmup_rounds` per batch size)."""
        sizes, calls = sorted({1, self.settings.max_batch_size}), 0
        for _ in range(self.settings.warmup_rounds):
            for size in sizes:
                self._runtime.run(self.example(size))
                calls += 1
        log.info("%s %s:%s warm-up: %d model calls, batch sizes %s", self.info.kind, self.info.name,
                 self.info.version, calls, ", ".join(map(str, sizes)))

    def close(self) -> None:
        self.batcher.close()

    def example(self, size: int) -> dict[str, np.ndarray]:
        """A valid input batch of `size` items, for warm-up."""
        raise NotImplementedError

    def run_batch(self, items: list) -> list:
        raise NotImplementedError
