"""What every answer must be. Before the clock starts, a load generator asks its target once
for each image alone and for every (seed, count, class) the load will ask for: the
references. Under load, each answer is held against its request and those references, so
an answer given to the wrong request or image shows."""

from __future__ import annotations

import hashlib
import io
from typing import Any

from PIL import Image

from benchmarks.load.protocols import Answer, GrpcTarget, HttpTarget

TOLERANCE = 1e-3  # classify scores against the reference: batching may change rounding, never a label
SEEDS = 8  # generate draws its seeds from this many, so every answer has a reference
GENERATE_CLASSES = (None, "Sneaker")
BAD_HTTP = {  # bad request: the status diptych documents for it
    "bad base64": 400, "garbage image": 400, "too many images": 413, "count over limit": 400,
    "unknown class": 400, "top_k out of range": 400,
}
BAD_GRPC = {name: "INVALID_ARGUMENT" for name in BAD_HTTP if name != "bad base64"}  # gRPC bytes are bytes


class Checks:
    """The models' labels, classes and image size (from the spec), the references one target
    gave, and the checks: each returns None when the answer is right, else what is wrong."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.labels = set(spec["labels"])
        self.classes, self.image_size, self.channels = spec["classes"], spec["image_size"], spec["channels"]
        self.bad = BAD_GRPC if spec["protocol"] == "grpc" else BAD_HTTP
        self.strict = spec["target"] == "diptych"  # the naive peer: any 4xx with a message will do
        self.classify_ref: list[dict[str, float]] = []
        self.generate_ref: dict[tuple[int, int, str | None], list[bytes]] = {}
        self.byte_differences = 0  # generated images with the reference's pixels in other PNG bytes

    # -- references, taken before the clock starts -----------------------------------------------

    async def references(self, target: HttpTarget | GrpcTarget, images: list[bytes]) -> dict[str, Any]:
        """Each sample image classified alone (all labels), and every (seed, count, class) the
        load will ask for generated once and checked by decoding: what every later answer must match."""
        await self.classify_references(target, images)
        pixels = await self.generate_references(target)
        return {"classify_top1": [max(ref, key=ref.get) for ref in self.classify_ref], "generate_pixels": pixels}

    async def classify_references(self, target: HttpTarget | GrpcTarget, images: list[bytes]) -> None:
        for index, image in enumerate(images):
            answer = await target.classify([image], len(self.labels))
            if not answer.ok:
                raise SystemExit(f"reference classify of image {index}: {answer.code} {answer.message}")
            problem = self.check_predictions(answer, [index], len(self.labels), reference=True)
            if problem:
                raise SystemExit(f"reference classify of image {index}: {problem}")
            self.classify_ref.append(dict(answer.predictions[0]))

    async def generate_references(self, target: HttpTarget | GrpcTarget) -> dict[str, list[str]]:
        """The references, and the pixel digests of each, which the run compares across targets."""
        pixels = {}
        for seed in range(SEEDS):
            for count in range(1, 5):
                for class_ in GENERATE_CLASSES:
                    answer = await target.generate(seed, count, class_)
                    problem = None if answer.ok else f"{answer.code} {answer.message}"
                    problem = problem or self.check_generated(answer, seed, count, class_, reference=True)
                    if problem:
                        raise SystemExit(f"reference generate seed {seed} count {count} class {class_}: {problem}")
                    self.generate_ref[seed, count, class_] = answer.pngs
                    pixels[f"{seed}/{count}/{class_}"] = [pixel_digest(png) for png in answer.pngs]
        return pixels

    def expected_classes(self, count: int, class_: str | None) -> list[int]:
        if class_ is None:
            return [i % len(self.classes) for i in range(count)]
        return [self.classes.index(class_)] * count

    # -- checks: None when the answer is right, else what is wrong ------------------------------

    def check_predictions(self, answer: Answer, images: list[int], top_k: int, reference: bool = False) -> str | None:
        if answer.predictions is None or len(answer.predictions) != len(images):
            return f"{len(answer.predictions or [])} predictions for {len(images)} images"
        for position, (index, row) in enumerate(zip(images, answer.predictions)):
            labels, scores = [label for label, _ in row], [score for _, score in row]
            if len(row) != top_k:
                return f"image {position}: {len(row)} labels, top_k {top_k}"
            if len(set(labels)) != len(labels) or not set(labels) <= self.labels:
                return f"image {position}: labels {labels}"
            if any(not 0 <= s <= 1 for s in scores) or any(a < b for a, b in zip(scores, scores[1:])):
                return f"image {position}: scores {scores} not sorted in [0, 1]"
            problem = None if reference else self.check_scores(position, index, row)
            if problem:
                return problem
        return None

    def check_scores(self, position: int, index: int, row: list[tuple[str, float]]) -> str | None:
        """Every score within TOLERANCE of what the same sample image scored alone."""
        expected = self.classify_ref[index]
        for label, score in row:
            if abs(expected[label] - score) > TOLERANCE:
                best = max(expected, key=expected.get)
                return (f"image {position} (sample {index}): {label} {score:.4f}, alone it scored {expected[label]:.4f} "
                        f"(its top-1 alone: {best} {expected[best]:.4f}); answer top-1 {row[0][0]}")
        return None

    def check_generated(self, answer: Answer, seed: int, count: int, class_: str | None,
                        reference: bool = False) -> str | None:
        if answer.message:
            return answer.message
        if answer.pngs is None or len(answer.pngs) != count:
            return f"{len(answer.pngs or [])} images for count {count}"
        if answer.seed != seed:
            return f"seed {answer.seed} for seed {seed}"
        expected_ids = self.expected_classes(count, class_)
        if answer.class_ids is not None and list(answer.class_ids) != expected_ids:
            return f"class ids {answer.class_ids}, expected {expected_ids}"
        if reference:
            return next(filter(None, map(self.check_decoded, answer.pngs)), None)
        return self.check_pixels(answer.pngs, seed, count, class_)

    def check_decoded(self, png: bytes) -> str | None:
        """A reference image decodes to the model's image size and mode."""
        image = Image.open(io.BytesIO(png))
        mode = "L" if self.channels == 1 else "RGB"
        if image.format != "PNG" or list(image.size) != self.image_size[::-1] or image.mode != mode:
            return f"{image.format} {image.size} {image.mode}, expected PNG {self.image_size} {mode}"
        return None

    def check_pixels(self, pngs: list[bytes], seed: int, count: int, class_: str | None) -> str | None:
        """The reference's bytes, or at least its pixels (counted apart in `byte_differences`)."""
        for i, (png, expected) in enumerate(zip(pngs, self.generate_ref[seed, count, class_])):
            if png != expected:
                if pixel_digest(png) == pixel_digest(expected):
                    self.byte_differences += 1
                    continue
                return f"image {i} of seed {seed} count {count} class {class_}: pixels differ from the reference"
        return None

    def check_rejected(self, answer: Answer, bad: str) -> str | None:
        if answer.ok:
            return f"{bad}: accepted (200)"
        if not answer.message:
            return f"{bad}: {answer.code} without a message"
        if self.strict and answer.code != self.bad[bad]:
            return f"{bad}: {answer.code} ({answer.message[:120]}), expected {self.bad[bad]}"
        if not self.strict and not (isinstance(answer.code, int) and 400 <= answer.code < 500
                                    or answer.code == "INVALID_ARGUMENT"):
            return f"{bad}: {answer.code} ({answer.message[:120]}), expected a 4xx"
        return None


def pixel_digest(png: bytes) -> str:
    image = Image.open(io.BytesIO(png))
    return hashlib.sha256(f"{image.size}{image.mode}".encode() + image.tobytes()).hexdigest()[:16]
