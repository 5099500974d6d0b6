"""The two served models: where they come from, their cards, their runtime, warm-up, and batch execution.

A model is named by a BentoML model-store tag (`classifier:latest`) or a SavedModel folder
(`models/classifier/3`, with `model_card.json` beside `saved_model.pb`). It runs on LiteRT
or on TensorFlow (runtime.py), chosen per model by the settings: `auto` takes LiteRT when
its conversion is verified and measured faster, `litert` whenever it is verified,
`tensorflow` never converts. A conversion that fails verification is not used: the model
is served by TensorFlow, with a warning that says why. Each model owns a `Batcher` with one
worker per interpreter: every request's items join the next batch, which is one `Runtime.run`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .batching import Batcher
from .config import Settings
from .conversion import Conversion, convert_and_verify, tensorflow_signature
from .errors import ValidationError
from .images import decode
from .metrics import metrics
from .runtime import LITERT, TENSORFLOW, LiteRTRuntime, Runtime, SavedModelRuntime, cores

CARD = "model_card.json"
log = logging.getLogger("diptych")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    kind: str
    name: str
    version: str
    source: str  # the tag or folder it was loaded from
    card: dict[str, Any]
    runtime: str = TENSORFLOW  # what runs it: TENSORFLOW or LITERT
    litert: dict[str, Any] | None = None  # the LiteRT conversion's report, when there was one


def locate(ref: str) -> tuple[str, ModelInfo]:
    """Resolve a store tag or a folder to (SavedModel path, identity)."""
    if "/" in ref or Path(ref).is_dir():
        path = Path(ref)
        if not (path / "saved_model.pb").is_file():
            raise FileNotFoundError(f"{ref}: no saved_model.pb in this folder")
        card = json.loads((path / CARD).read_text())
        name, version = card.get("name") or card["kind"], str(card.get("version", path.name))
    else:
        import bentoml

        model = bentoml.models.get(ref)
        path = Path(model.path)
        card = json.loads((path / CARD).read_text())
        name, version = model.tag.name, model.tag.version
    return str(path), ModelInfo(card["kind"], name, version, ref, card)


def load_runtime(path: str, info: ModelInfo, choice: str, interpreters: int) -> tuple[Runtime, ModelInfo]:
    """The runtime `choice` (auto, litert, tensorflow) leads to, and `info` saying which it is."""
    model = f"{info.kind} {info.name}:{info.version}"
    if choice == TENSORFLOW:
        log.info("%s runs on TensorFlow, as configured", model)
        return SavedModelRuntime(path, tensorflow_signature(info.kind, path)), info
    conversion = Conversion.load(path)
    if conversion is None:
        log.info("%s has no stored LiteRT conversion: converting it now (training.publish stores one)", model)
        conversion = convert_and_verify(path, info.card, interpreters)
    info = dataclasses.replace(info, litert=conversion.report)
    if not conversion.verified:
        log.warning("%s runs on TensorFlow: its LiteRT conversion is not used: %s", model, conversion.report["reason"])
    elif choice == LITERT or conversion.faster:
        log.info("%s runs on LiteRT, %d single-threaded interpreters (%s; CPU ms per image as measured: %s)", model,
                 interpreters, conversion.report["reason"], _cost(conversion))
        return LiteRTRuntime(conversion.flatbuffer, interpreters), dataclasses.replace(info, runtime=LITERT)
    else:
        log.info("%s runs on TensorFlow: it measured cheaper than LiteRT (CPU ms per image: %s)", model,
                 _cost(conversion))
    return SavedModelRuntime(path, tensorflow_signature(info.kind, path)), info


def _cost(conversion: Conversion) -> object:
    return conversion.report.get("cpu_ms_per_image") or conversion.report["images_per_second"]


class ServedModel:
    """A loaded model behind its batcher; subclasses say how a batch is run."""

    kind = ""  # the card's `kind` this class serves

    def __init__(self, info: ModelInfo, runtime: Runtime, settings: Settings) -> None:
        self.info = info
        self._runtime = runtime
        self._settings = settings
        labels = {"model": info.name, "version": info.version, "runtime": info.runtime}
        self._latency = metrics().inference_seconds.labels(**labels)
        self._batch_size = metrics().batch_size.labels(**labels)
        self.batcher: Batcher = Batcher(
            self.run_batch, settings.max_batch_size, settings.batch_window_ms / 1000, name=f"{info.kind}-batcher",
            workers=settings.interpreters or cores(),
        )

    @classmethod
    def load(cls, ref: str, settings: Settings) -> ServedModel:
        path, info = locate(ref)
        if info.kind != cls.kind:
            raise ValueError(f"{ref} holds a {info.kind}, not a {cls.kind}")
        choice = getattr(settings, f"{cls.kind}_runtime")
        runtime, info = load_runtime(path, info, choice, settings.interpreters or cores())
        return cls(info, runtime, settings)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        outputs = self._runtime.run(inputs)
        self._latency.observe(time.perf_counter() - start)
        self._batch_size.observe(len(next(iter(inputs.values()))))
        return outputs

    def warm_up(self) -> None:
        """First calls are slow (graph set-up, allocations): pay them before reporting ready.
        Logs how many model calls it made (`warmup_rounds` per batch size)."""
        sizes, calls = sorted({1, self._settings.max_batch_size}), 0
        for _ in range(self._settings.warmup_rounds):
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


class Classifier(ServedModel):
    """Items are (encoded image, request field); results are score rows over `labels`."""

    kind = "classifier"

    def __init__(self, info: ModelInfo, runtime: Runtime, settings: Settings) -> None:
        super().__init__(info, runtime, settings)
        self.labels: list[str] = list(info.card["labels"])
        self.image_size = int(info.card["image_size"][0])
        model = {"model": info.name, "version": info.version}
        self._classified = metrics().images_classified.labels(**model)
        self._predicted = {label: metrics().predictions.labels(**model, label=label) for label in self.labels}

    def example(self, size: int) -> dict[str, np.ndarray]:
        return {"images": np.full((size, self.image_size, self.image_size, 3), 128, np.uint8)}

    def run_batch(self, items: list[tuple[bytes, str]]) -> list[np.ndarray | Exception]:
        """Decode each image here, in this worker (a broken one fails alone), then one model call."""
        decoded: list[np.ndarray | Exception] = []
        for data, field in items:
            try:
                decoded.append(decode(data, self.image_size, field))
            except ValidationError as error:
                decoded.append(error)
        pixels = [item for item in decoded if not isinstance(item, Exception)]
        scores = iter(self._classify(np.stack(pixels)) if pixels else [])
        return [item if isinstance(item, Exception) else next(scores) for item in decoded]

    def _classify(self, pixels: np.ndarray) -> np.ndarray:
        scores = self.run({"images": pixels})["scores"]
        self._classified.inc(len(scores))
        for row in scores:
            self._predicted[self.labels[int(row.argmax())]].inc()
        return scores


class Generator(ServedModel):
    """Items are (latent vector, class id); results are uint8 [H, W, C] images."""

    kind = "generator"

    def __init__(self, info: ModelInfo, runtime: Runtime, settings: Settings) -> None:
        super().__init__(info, runtime, settings)
        self.latent_dim = int(info.card["latent_dim"])
        self.classes: list[str] = list(info.card.get("classes") or [])
        self.conditional = bool(info.card.get("conditional", bool(self.classes)))
        self._generated = metrics().images_generated.labels(model=info.name, version=info.version)

    def example(self, size: int) -> dict[str, np.ndarray]:
        return {"latents": np.zeros((size, self.latent_dim), np.float32), "class_ids": np.zeros(size, np.int32)}

    def run_batch(self, items: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        latents = np.stack([latent for latent, _ in items]).astype(np.float32)
        class_ids = np.array([class_id for _, class_id in items], np.int32)
        images = self.run({"latents": latents, "class_ids": class_ids})["images"]
        self._generated.inc(len(items))
        return list(images)
