"""The classifier kind: images in, a score per label out.

Items are (image, request field): encoded bytes (checked from their headers before they
join a batch, decoded in the batch worker, so a broken one fails alone) or pixels already
decoded (the tensor protocols' `images` input). Each batch is one model call on pixels at
the model's size: the card's `numeric_signature` (`classify_resized`) or its LiteRT twin.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
from collections.abc import Sequence

import numpy as np

from service.core import image_input
from service.core.errors import ValidationError
from service.core.image_input import Image
from service.core.images import decode, encode_png, resize
from service.core.model_settings import ModelConfig, is_share
from service.core.models import ModelInfo, ServedModel

from .classifier_drift import LabelDrift

THUMBNAIL = 32  # pixels a side of a payload log thumbnail
TOP_K = 5  # labels per image when a request says none: every protocol's, and the batch job's


@dataclasses.dataclass(frozen=True)
class Classification:
    model: ModelInfo
    predictions: list[list[tuple[str, float]]]  # per image, the top-k (label, score), best first
    abstain: list[bool]  # per image: its top score is under the abstain_below that applied


@dataclasses.dataclass(frozen=True)
class Scores:
    model: ModelInfo
    labels: list[str]
    scores: np.ndarray  # float32 [N, len(labels)]: every class's score, in label order


class ClassifierMetrics:
    """The classifier's own series, beside the core's on /metrics (service/core/metrics.py):
    deploy/prometheus's rules and the dashboards read them by these names."""

    def __init__(self) -> None:
        import prometheus_client as prom

        model = ["model", "version"]
        self.images_classified = prom.Counter("diptych_images_classified", "Images classified", model)
        self.predictions = prom.Counter(
            "diptych_predictions", "Top-1 predicted class of each classified image", [*model, "label"]
        )
        self.label_drift = prom.Gauge(
            "diptych_label_drift_psi", "Population stability index of the served top-1 labels (a window) against "
            "the training set's class distribution", model, multiprocess_mode="livemax"
        )
        self.confidence_checks = prom.Counter(
            "diptych_confidence_checks", "Images whose top score was held against an abstain_below, by whether "
            "the answer abstained (the abstention rate; the drift alert reads it)", [*model, "abstained"]
        )


@functools.cache
def metrics() -> ClassifierMetrics:
    """Made once, on first use (as the core's are: Prometheus refuses duplicate names)."""
    return ClassifierMetrics()


class Classifier(ServedModel):
    kind = "classifier"
    default_model = "classifier:latest"
    wire = "service.kinds.classifier_wire"
    card_fields = ("labels", "image_size", "channels")
    conversion_check = "top-1"  # its scores' best label is the answer: a conversion must keep it
    tensor_runners = {frozenset({"image_bytes"}): "score_tensor_bytes", frozenset({"images"}): "score_tensor_pixels"}
    abstain_below: float | None = None  # the model table's; a request's overrides it (`configure`)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.labels: list[str] = list(self.info.card.labels)
        self.label_tuple = tuple(self.labels)  # what each answer kept for feedback refers to (never a copy)
        self.image_size = self.info.card.image_size[0]
        model = {"model": self.info.name, "version": self.info.version}
        self._classified = metrics().images_classified.labels(**model)
        self._predicted = {label: metrics().predictions.labels(**model, label=label) for label in self.labels}
        self._abstained = {answer: metrics().confidence_checks.labels(**model, abstained=str(answer).lower())
                           for answer in (True, False)}
        counts = self.info.card.per_class_counts
        self._drift = LabelDrift([counts.get(label, 0) for label in self.labels],
                                 metrics().label_drift.labels(**model).set) if counts else None

    # -- requests ------------------------------------------------------------------
    def configure(self, config: ModelConfig) -> None:
        super().configure(config)
        self.abstain_below = config.abstain_below

    async def classify(self, images: Sequence[bytes], top_k: int = TOP_K,
                       abstain_below: float | None = None) -> Classification:
        """The top-k labels of each image; an image whose top score is under `abstain_below`
        (the request's, else the model table's, else none) abstains, its labels still listed."""
        self.check_top_k(top_k)
        if abstain_below is not None and not is_share(abstain_below):
            raise ValidationError("abstain_below", f"{abstain_below!r}: must be a score from 0 to 1")
        threshold = self.abstain_below if abstain_below is None else abstain_below
        result = await self.score(images)
        best = np.argsort(-result.scores, axis=1)[:, :top_k]
        abstain = [False] * len(best) if threshold is None else (result.scores.max(axis=1) < threshold).tolist()
        if threshold is not None:
            for answer in abstain:
                self._abstained[answer].inc()
        return Classification(self.info, [[(self.labels[i], row[i]) for i in top]
                                          for top, row in zip(best.tolist(), result.scores.tolist())], abstain)

    async def score(self, images: Sequence[Image]) -> Scores:
        """Every class's score for each image: the model's whole output, for the tensor protocols."""
        rows = await self.infer(self.checked(images))
        self.log_exchange(lambda: {"images": [self._described(image) for image in images]},
                          lambda: self.describe(rows))
        return Scores(self.info, self.labels, np.stack(rows))

    def answers(self, results: list[np.ndarray]) -> tuple[tuple[str, ...], list[tuple[int, float]]]:
        """What a label fed back is checked against: each image's top-1 class and its score."""
        return self.label_tuple, [(int(row.argmax()), float(row.max())) for row in results]

    def describe(self, results: list[np.ndarray]) -> dict[str, list]:
        """The payload log's view of score rows: each image's top-1 label and score."""
        return {"top1": [{"label": self.labels[int(row.argmax())], "score": float(row.max())} for row in results]}

    def _described(self, image: Image) -> dict[str, object]:
        """An image in the payload log: its sha256 and size, and a small thumbnail if asked for
        (decoded again: this runs on the log's thread, for sampled requests only)."""
        data = image if isinstance(image, bytes) else np.ascontiguousarray(image).tobytes()
        entry: dict[str, object] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        if self.log_thumbnails:
            try:
                pixels = decode(image, THUMBNAIL, "image") if isinstance(image, bytes) else resize(image, THUMBNAIL)
                entry["thumbnail"] = base64.b64encode(encode_png(pixels)).decode()
            except ValidationError:
                pass  # an undecodable image has no thumbnail; its hash says which it was
        return entry

    def check_top_k(self, top_k: int) -> None:
        if not 1 <= top_k <= len(self.labels):
            raise ValidationError("top_k", f"must be between 1 and {len(self.labels)} (the number of classes)")

    def checked(self, images: Sequence[Image]) -> list[tuple[Image, str]]:
        """Images → (image, field) items, after the cheap checks: count, format, pixels."""
        return image_input.checked(images, self.settings)

    # -- the tensor protocols' signatures --------------------------------------------
    async def score_tensor_bytes(self, image_bytes: np.ndarray) -> dict[str, np.ndarray]:
        return self._scored(await self.score(image_bytes.tolist()))

    async def score_tensor_pixels(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if images.shape[-1] not in (1, 3):
            raise ValidationError("images", "images must have 1 (grey) or 3 (RGB) channels")
        if 0 in images.shape[1:3]:
            raise ValidationError("images", "the images have no pixels")
        return self._scored(await self.score(list(images)))

    def _scored(self, result: Scores) -> dict[str, np.ndarray]:
        labels = np.array([label.encode() for label in result.labels], dtype=object)
        return {"scores": result.scores.astype(np.float32), "classes": np.tile(labels, (len(result.scores), 1))}

    # -- batches -------------------------------------------------------------------
    def example(self, size: int) -> dict[str, np.ndarray]:
        return {"images": np.full((size, self.image_size, self.image_size, 3), 128, np.uint8)}

    def run_batch(self, items: list[tuple[Image, str]]) -> list[np.ndarray | Exception]:
        """Decode (or resize) each image here, in this worker, then one model call."""
        return image_input.run_good(image_input.pixels(items, self.image_size), self._classify)

    def _classify(self, pixels: np.ndarray) -> np.ndarray:
        scores = self.run({"images": pixels})["scores"]
        self._classified.inc(len(scores))
        best = scores.argmax(axis=1).tolist()
        for index in best:
            self._predicted[self.labels[index]].inc()
        if self._drift is not None:
            self._drift.observe(best)
        return scores

