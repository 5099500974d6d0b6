"""The two served models: where they come from, their cards, warm-up, and batch execution.

A model is named by a BentoML model-store tag (`classifier:latest`) or a SavedModel folder
(`models/classifier/3`, with `model_card.json` beside `saved_model.pb`). Each one owns a
`Batcher`: every request's items join the next batch, which is one `Runtime.run` call.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .batching import Batcher
from .config import Settings
from .errors import ValidationError
from .images import encode_png, to_png
from .metrics import metrics
from .runtime import Runtime, RuntimeInputError, SavedModelRuntime

CARD = "model_card.json"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    kind: str
    name: str
    version: str
    source: str  # the tag or folder it was loaded from
    card: dict[str, Any]


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


class ServedModel:
    """A loaded model behind its batcher; subclasses say how a batch is run."""

    kind = ""  # the card's `kind` this class serves

    def __init__(self, info: ModelInfo, runtime: Runtime, settings: Settings) -> None:
        self.info = info
        self._runtime = runtime
        self._settings = settings
        labels = {"model": info.name, "version": info.version}
        self._latency = metrics().inference_seconds.labels(**labels)
        self._batch_size = metrics().batch_size.labels(**labels)
        self.batcher: Batcher = Batcher(
            self.run_batch, settings.max_batch_size, settings.batch_window_ms / 1000, name=f"{info.kind}-batcher"
        )

    @classmethod
    def load(cls, ref: str, settings: Settings) -> ServedModel:
        path, info = locate(ref)
        if info.kind != cls.kind:
            raise ValueError(f"{ref} holds a {info.kind}, not a {cls.kind}")
        return cls(info, SavedModelRuntime(path), settings)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        outputs = self._runtime.run(inputs)
        self._latency.observe(time.perf_counter() - start)
        self._batch_size.observe(len(next(iter(inputs.values()))))
        return outputs

    def warm_up(self) -> None:
        """First calls are slow (graph set-up, allocations): pay them before reporting ready."""
        for _ in range(self._settings.warmup_rounds):
            for size in sorted({1, self._settings.max_batch_size}):
                self._runtime.run(self.example(size))

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
        self.labels: list[str] = [label.decode() for label in runtime.run(self.example(1))["classes"][0]]
        model = {"model": info.name, "version": info.version}
        self._classified = metrics().images_classified.labels(**model)
        self._predicted = {label: metrics().predictions.labels(**model, label=label) for label in self.labels}

    def example(self, size: int) -> dict[str, np.ndarray]:
        height, width = self.info.card.get("image_size", (32, 32))
        gray = encode_png(np.full((height, width, 3), 128, np.uint8))
        return {"image_bytes": np.array([gray] * size, dtype=object)}

    def run_batch(self, items: list[tuple[bytes, str]]) -> list[np.ndarray | Exception]:
        """One model call; if the graph cannot decode some image, bisect to find it."""
        try:
            return list(self._classify([data for data, _ in items]))
        except RuntimeInputError:
            if len(items) == 1:
                return [self._retry_as_png(*items[0])]
            middle = len(items) // 2
            return self.run_batch(items[:middle]) + self.run_batch(items[middle:])

    def _classify(self, images: list[bytes]) -> np.ndarray:
        scores = self.run({"image_bytes": np.array(images, dtype=object)})["scores"]
        self._classified.inc(len(images))
        for row in scores:
            self._predicted[self.labels[int(row.argmax())]].inc()
        return scores

    def _retry_as_png(self, data: bytes, field: str) -> np.ndarray | Exception:
        """Pillow reads some variants the graph cannot (1-bit BMP, animated WebP)."""
        try:
            return self._classify([to_png(data, field)])[0]
        except ValidationError as error:
            return error
        except RuntimeInputError:
            return ValidationError(field, "the model cannot decode this image")


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
