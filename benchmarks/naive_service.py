"""The naive peer of benchmarks.load: the same SavedModels behind a plain BentoML service.

    DIPTYCH_CLASSIFIER=models/classifier/1 DIPTYCH_GENERATOR=models/generator/1 \\
        bentoml serve benchmarks.naive_service:Naive --port 3001

What a first BentoML service for these models looks like, written the obvious way: the
models loaded with `tf.saved_model.load` and their `serving_default` signatures called from
each request's own handler, **once per image** (no batching across or within requests, no
LiteRT, no admission control, BentoML's defaults: one worker, sync handlers in its thread
pool). It answers the subset of diptych's HTTP API that the load generator sends, with the
same JSON shapes: `/classify` (base64 `images`, `top_k`) and `/generate` (`seed`, `count`,
`class`, `format` png or json). Seeds draw latents as diptych does (numpy's RandomState), so
both services render the same pixels for a seed and the load generator can compare them.
Bad input gets a 400 (BentoML's InvalidArgument), never a 500: not a single validation
layer, just the model's own error and a few limits, as a careful first version would.

Not part of the service: only the benchmark starts it. Model folders only (no store tags),
read from DIPTYCH_CLASSIFIER / DIPTYCH_GENERATOR so `benchmarks.serving.Service` starts it
the same way it starts diptych.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from pathlib import Path

import bentoml
import numpy as np
import pydantic
from bentoml.exceptions import InvalidArgument
from PIL import Image
from starlette.responses import Response

MAX_IMAGES, MAX_GENERATE = 32, 64  # diptych's defaults, so the same bad requests are bad here too


class ClassifyRequest(pydantic.BaseModel):
    images: list[str]
    top_k: int = 5


class GenerateRequest(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(populate_by_name=True)

    count: int = 1
    seed: int | None = None
    class_: int | str | None = pydantic.Field(None, alias="class")
    format: str = "png"


def _card(folder: str) -> dict:
    return json.loads((Path(folder) / "model_card.json").read_text())


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@bentoml.service(name="naive")
class Naive:
    def __init__(self) -> None:
        import tensorflow as tf

        self.tf = tf
        classifier, generator = os.environ["DIPTYCH_CLASSIFIER"], os.environ["DIPTYCH_GENERATOR"]
        self.classifier = tf.saved_model.load(classifier).signatures["serving_default"]
        self.generator = tf.saved_model.load(generator).signatures["serving_default"]
        self.classifier_card, self.generator_card = _card(classifier), _card(generator)

    @bentoml.api(route="/classify")
    def classify(self, request: ClassifyRequest, /) -> dict:
        if not 1 <= len(request.images) <= MAX_IMAGES:
            raise InvalidArgument(f"images: send 1 to {MAX_IMAGES} images")
        if not 1 <= request.top_k <= len(self.classifier_card["labels"]):
            raise InvalidArgument("top_k: out of range")
        predictions = []
        for i, text in enumerate(request.images):
            try:
                data = base64.b64decode(text, validate=True)
            except binascii.Error as error:
                raise InvalidArgument(f"images[{i}]: not base64: {error}") from None
            try:  # one image, one signature call
                out = self.classifier(image_bytes=self.tf.constant([data]))
            except self.tf.errors.InvalidArgumentError as error:
                raise InvalidArgument(f"images[{i}]: not an image: {error.message[:200]}") from None
            scores, classes = out["scores"].numpy()[0], out["classes"].numpy()[0]
            best = np.argsort(-scores)[: request.top_k]
            predictions.append([{"label": classes[j].decode(), "score": float(scores[j])} for j in best])
        return {"model": self._ref(self.classifier_card), "predictions": predictions}

    @bentoml.api(route="/generate")
    def generate(self, request: GenerateRequest, /) -> dict:
        card = self.generator_card
        if not 1 <= request.count <= MAX_GENERATE:
            raise InvalidArgument(f"count: must be between 1 and {MAX_GENERATE} images")
        if request.format not in ("png", "json") or (request.format == "png" and request.count > 1):
            raise InvalidArgument("format: png (one image) or json")
        seed = np.random.randint(2**32) if request.seed is None else request.seed
        if not 0 <= seed < 2**32:
            raise InvalidArgument("seed: must be between 0 and 2**32-1")
        classes = card["classes"]
        if request.class_ is None:
            ids = [i % len(classes) for i in range(request.count)]
        else:
            value = request.class_
            fixed = classes.index(value) if value in classes else int(value) if str(value).isdigit() else -1
            if not 0 <= fixed < len(classes):
                raise InvalidArgument(f"class: unknown class {value!r}")
            ids = [fixed] * request.count
        latents = np.random.RandomState(seed).standard_normal((request.count, card["latent_dim"])).astype(np.float32)
        pngs = []
        for latent, class_id in zip(latents, ids):  # one image, one signature call
            out = self.generator(latents=self.tf.constant(latent[None]), class_ids=self.tf.constant([class_id], "int32"))
            pngs.append(_png(out["images"].numpy()[0]))
        if request.format == "png":
            return Response(pngs[0], media_type="image/png", headers={"X-Seed": str(seed)})
        return {"model": self._ref(card), "seed": int(seed), "images": [
            {"png": base64.b64encode(png).decode(), "class_id": class_id, "class": classes[class_id],
             "latent": latent.tolist()} for png, class_id, latent in zip(pngs, ids, latents)]}

    @staticmethod
    def _ref(card: dict) -> dict:
        return {"name": card["name"], "version": str(card["version"]), "runtime": "tensorflow (naive)"}
