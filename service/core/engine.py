"""The one inference path. Every protocol adapter converts its request into these calls,
converts the results back, and maps `ServiceError`s to its own status codes.

The engine loads and warms up both models in the background (so liveness answers at
once and readiness turns true only when everything is warm), admits a bounded number of
requests, and bounds how long a request waits for its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future

import numpy as np

from . import validation
from .auth import ApiKeys
from .config import Settings
from .errors import DeadlineExceeded, NotFound, NotReady, Overloaded
from .metrics import metrics
from .models import Classifier, Generator, ModelInfo, ServedModel

log = logging.getLogger("diptych")


@dataclasses.dataclass(frozen=True)
class Classification:
    model: ModelInfo
    predictions: list[list[tuple[str, float]]]  # per image, the top-k (label, score), best first


@dataclasses.dataclass(frozen=True)
class Scores:
    model: ModelInfo
    labels: list[str]
    scores: np.ndarray  # float32 [N, len(labels)]: every class's score, in label order


@dataclasses.dataclass(frozen=True)
class Generation:
    model: ModelInfo
    images: np.ndarray  # uint8 [N, H, W, C]
    latents: np.ndarray  # float32 [N, latent_dim]: feed them back to get the same images
    class_ids: np.ndarray  # int32 [N]
    class_names: list[str | None]
    seed: int | None


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = ApiKeys(settings.api_keys)
        self._classifier: Classifier | None = None
        self._generator: Generator | None = None
        self._ready = threading.Event()
        self._failed = False
        self._in_flight = 0
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Load the models in the background. TensorFlow is imported first, here: imported
        from two threads at once (the loading thread and the gRPC server's, or a request's),
        its package can come out half-initialised (NameError deep inside tensorflow)."""
        import tensorflow  # noqa: F401

        threading.Thread(target=self.load, name="diptych-load", daemon=True).start()

    def load(self) -> None:
        """Both models, each tried even when the other fails: one log line per broken model."""
        self._classifier = self._load(Classifier, self.settings.classifier)
        self._generator = self._load(Generator, self.settings.generator)
        if self._classifier is None or self._generator is None:
            self._failed = True  # never ready: nothing is served from a half-loaded service
        else:
            self._ready.set()

    def _load(self, kind: type[ServedModel], ref: str) -> ServedModel | None:
        try:
            model = kind.load(ref, self.settings)
            model.warm_up()
        except Exception as error:
            reason = next(iter(str(error).strip().splitlines()), "")
            log.error("the %s could not be loaded from %s: %s: %s", kind.kind, ref, type(error).__name__, reason,
                      exc_info=error)
            return None
        info = model.info
        metrics().model_info.labels(kind=info.kind, model=info.name, version=info.version, runtime=info.runtime).set(1)
        log.info("%s %s:%s loaded from %s and warmed up on %s", info.kind, info.name, info.version, info.source,
                 info.runtime)
        return model

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def alive(self) -> bool:
        return not self._failed

    def close(self) -> None:
        for model in (self._classifier, self._generator):
            if model is not None:
                model.close()

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of `max_concurrency` request slots, or refuse at once: no unbounded queue."""
        with self._lock:
            if self._in_flight >= self.settings.max_concurrency:
                raise Overloaded(f"more than {self.settings.max_concurrency} requests in flight; retry shortly")
            self._in_flight += 1
        metrics().in_flight.inc()
        try:
            yield
        finally:
            metrics().in_flight.dec()
            with self._lock:
                self._in_flight -= 1

    # -- models --------------------------------------------------------------------
    @property
    def classifier(self) -> Classifier:
        self._check_ready()
        return self._classifier

    @property
    def generator(self) -> Generator:
        self._check_ready()
        return self._generator

    def models(self) -> list[ModelInfo]:
        return [self.classifier.info, self.generator.info]

    def model(self, name: str) -> ModelInfo:
        for info in self.models():
            if name in (info.name, info.kind):
                return info
        raise NotFound(f"no model named {name!r}", "name")

    # -- inference -----------------------------------------------------------------
    async def classify(self, images: Sequence[bytes], top_k: int = 5) -> Classification:
        k = validation.top_k(top_k, self.classifier.labels)
        result = await self.score(images)
        labels, best = result.labels, np.argsort(-result.scores, axis=1)[:, :k]
        return Classification(result.model, [[(labels[i], row[i]) for i in top]
                                             for top, row in zip(best.tolist(), result.scores.tolist())])

    async def score(self, images: Sequence[bytes]) -> Scores:
        """Every class's score for each image: the model's whole output, for the tensor protocols."""
        classifier = self.classifier
        rows = await self._wait(classifier.batcher.submit(validation.images(images, self.settings)))
        return Scores(classifier.info, classifier.labels, np.stack(rows))

    async def generate(
        self,
        count: int | None = None,
        seed: int | None = None,
        class_: int | str | None = None,
        latents: Sequence[Sequence[float]] | None = None,
    ) -> Generation:
        return await self._generate(validation.generation(count, seed, class_, latents, self.generator, self.settings))

    async def interpolate(
        self,
        seeds: Sequence[int] | None = None,
        latents: Sequence[Sequence[float]] | None = None,
        steps: int = 8,
        class_: int | str | None = None,
    ) -> Generation:
        return await self._generate(
            validation.interpolation(seeds, latents, steps, class_, self.generator, self.settings)
        )

    async def render(self, latents: np.ndarray, class_ids: np.ndarray) -> Generation:
        """One image per (latent row, class id), as the generator's own signature takes them."""
        return await self._generate(validation.rows(latents, class_ids, self.generator, self.settings))

    async def _generate(self, plan: validation.Latents) -> Generation:
        generator = self.generator
        images = await self._wait(generator.batcher.submit(list(zip(plan.latents, plan.class_ids.tolist()))))
        names = [generator.classes[i] if generator.conditional else None for i in plan.class_ids]
        return Generation(generator.info, np.stack(images), plan.latents, plan.class_ids, names, plan.seed)

    def _check_ready(self) -> None:
        if not self.ready:
            raise NotReady("the models are still loading" if self.alive else "the models failed to load")

    async def _wait(self, futures: list[Future]) -> list:
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                return await asyncio.gather(*map(asyncio.wrap_future, futures))
        except TimeoutError:
            raise DeadlineExceeded(f"no result within {self.settings.timeout_s:g} s") from None
