"""LiteRT flatbuffers of the exported SavedModels, and the proof that they compute the same.

The SavedModel stays the exchange format (TF Serving, `tf.saved_model.load`); LiteRT runs
the same numbers about twice as fast on a few CPU cores (docs/serving.md). Conversion
takes the numeric signature only, whose ops are all LiteRT builtins: the classifier's
`classify_resized` (pixels at the model's size → scores; decoding and resizing happen in
the service) and the generator's `serving_default`. No TF "Flex" ops: a flatbuffer that
needs TensorFlow's kernels would gain nothing.

A conversion is verified before it is used: TensorFlow and a LiteRT pool run the same
calibration batch of real inputs (test images of the model's dataset; seeded latents for
the generator), and must agree to `SCORE_TOLERANCE` with the same top-1 everywhere (to one
grey level for generated pixels). Both are timed on that batch too, so `auto` can keep
whichever is faster. `training.publish` stores the result beside the SavedModel in the
model store (`litert/`); a model without one is converted when the service loads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .images import resize
from .runtime import LiteRTRuntime, SavedModelRuntime

FOLDER = "litert"  # beside saved_model.pb
FLATBUFFER = "model.tflite"
REPORT = "report.json"
SCORE_TOLERANCE = 1e-4  # largest difference of a classifier score
PIXEL_TOLERANCE = 1  # largest difference of a generated pixel: a float rounding to the other side of .5
CALIBRATION_SIZE = 32  # inputs in the calibration batch (the classifier takes as many per class as fill it)
SIGNATURES = {"classifier": "classify_resized", "generator": "serving_default"}
OLD_CLASSIFIER_SIGNATURE = "classify_pixels"  # exports before classify_resized: pixels in, scores out too


class ConversionError(Exception):
    """The model cannot be converted or verified; the message says why."""


@dataclasses.dataclass(frozen=True)
class Conversion:
    """A converted model (`flatbuffer`, None when it failed) and its report, which records
    the verification (`verified`, `reason`, `max_difference`, `calibration`) and what each
    runtime measured: `images_per_second` (wall clock) and `cpu_ms_per_image`."""

    flatbuffer: bytes | None
    report: dict[str, Any]

    @property
    def verified(self) -> bool:
        return self.flatbuffer is not None and self.report.get("verified", False)

    @property
    def faster(self) -> bool:
        """LiteRT costs less CPU per image. CPU time decides, not the wall clock: on a shared
        machine other processes slow whichever runtime happens to be timed when they run, and
        a saturated server's throughput is its cores divided by that cost. (Reports from
        before CPU time was recorded fall back to images per second.)"""
        cost = self.report.get("cpu_ms_per_image")
        if cost:
            return cost["litert"] < cost["tensorflow"]
        speed = self.report.get("images_per_second", {})
        return speed.get("litert", 0) > speed.get("tensorflow", 0)

    def save(self, model_dir: str | Path) -> None:
        folder = Path(model_dir) / FOLDER
        folder.mkdir(exist_ok=True)
        if self.flatbuffer is not None:
            (folder / FLATBUFFER).write_bytes(self.flatbuffer)
        (folder / REPORT).write_text(json.dumps(self.report, indent=2) + "\n")

    @classmethod
    def load(cls, model_dir: str | Path) -> Conversion | None:
        """The conversion stored beside a SavedModel, or None when there is none. A flatbuffer
        that is not the one verified (its sha256 differs: changed, or corrupt on disk; TF
        checksums its own variables) or is missing is not used; a report written before the
        digest was recorded is trusted as it stands."""
        folder = Path(model_dir) / FOLDER
        if not (folder / REPORT).is_file():
            return None
        path, report = folder / FLATBUFFER, json.loads((folder / REPORT).read_text())
        flatbuffer = path.read_bytes() if path.is_file() else None
        if report.get("verified") and flatbuffer is None:
            return cls(None, {**report, "verified": False, "reason": f"{FOLDER}/{FLATBUFFER} is missing"})
        if flatbuffer is not None and report.get("sha256", _digest(flatbuffer)) != _digest(flatbuffer):
            reason = f"{FOLDER}/{FLATBUFFER} is not the flatbuffer that was verified (its sha256 differs)"
            return cls(None, {**report, "verified": False, "reason": reason})
        return cls(flatbuffer, report)


def tensorflow_signature(kind: str, path: str | Path) -> str:
    """The signature TensorFlow serves: the converted one, or for a classifier exported
    before `classify_resized` existed, `classify_pixels` (same pixels in, same scores out)."""
    signature = SIGNATURES[kind]
    if kind == "classifier" and signature not in _signature_names(path):
        return OLD_CLASSIFIER_SIGNATURE
    return signature


def convert_and_verify(path: str | Path, card: Mapping[str, Any], interpreters: int) -> Conversion:
    """Convert the SavedModel at `path`, verify and time it; never raises for a model that
    fails: the report's `reason` says why, and the model is then served by TensorFlow."""
    kind = card["kind"]
    report: dict[str, Any] = {"signature": SIGNATURES[kind], "converter": _version("tensorflow"),
                              "interpreter": _version("ai-edge-litert"), "interpreters": interpreters}
    try:
        flatbuffer = convert(path, card)
        report.update(verify(path, card, flatbuffer, interpreters))
    except ConversionError as error:
        return Conversion(None, {**report, "verified": False, "reason": str(error)})
    except Exception as error:  # TensorFlow and the interpreter raise many kinds
        first_line = next(iter(str(error).strip().splitlines()), "")
        return Conversion(None, {**report, "verified": False, "reason": f"{type(error).__name__}: {first_line}"})
    if not report["verified"]:
        return Conversion(None, report)
    return Conversion(flatbuffer, {**report, "sha256": _digest(flatbuffer)})


def convert(path: str | Path, card: Mapping[str, Any]) -> bytes:
    """The numeric signature as a LiteRT flatbuffer of builtin ops.

    From the loaded concrete function, with every dimension but the batch fixed: the
    converter's `from_saved_model` keeps the variables as resource variables here (the
    flatbuffer then computes NaN), and the generator's `ensure_shape` on a `[None, None]`
    input is a Flex op unless the latent width is known.
    """
    import tensorflow as tf

    kind, signature = card["kind"], SIGNATURES[card["kind"]]
    loaded = tf.saved_model.load(str(path))
    if signature not in loaded.signatures:
        raise ConversionError(f"the SavedModel has no {signature!r} signature (exported before LiteRT support); "
                              "export it again to serve it with LiteRT")
    function = loaded.signatures[signature]
    specs = _input_specs(kind, card)
    names = list(specs)
    fixed = tf.function(lambda *values: function(**dict(zip(names, values))), input_signature=list(specs.values()))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fixed.get_concrete_function()], loaded)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        with _quiet("tensorflow", "absl"):  # the converter logs every captured variable's name at INFO
            return converter.convert()
    except Exception as error:  # the converter's message runs to pages of MLIR: keep its verdict
        lines = [line for line in str(error).splitlines() if "error:" in line] or ["the converter failed"]
        raise ConversionError(f"conversion to LiteRT builtins failed: {lines[0].split('error:')[-1].strip()}") from None


def verify(path: str | Path, card: Mapping[str, Any], flatbuffer: bytes, interpreters: int) -> dict[str, Any]:
    """Run TensorFlow and a LiteRT pool on the calibration batch: compare, and time both."""
    kind = card["kind"]
    inputs, described = calibration(card)
    tensorflow = SavedModelRuntime(str(path), SIGNATURES[kind])
    litert = LiteRTRuntime(flatbuffer, interpreters)
    output = "scores" if kind == "classifier" else "images"
    with ThreadPoolExecutor(interpreters) as threads:

        def pooled(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            """The batch split among the interpreters, run in parallel, as the batch workers do."""
            bounds = np.linspace(0, len(next(iter(batch.values()))), interpreters + 1).astype(int)
            chunks = [{name: value[start:end] for name, value in batch.items()}
                      for start, end in zip(bounds[:-1], bounds[1:]) if end > start]
            parts = list(threads.map(litert.run, chunks))
            return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

        result = _compare(kind, tensorflow.run(inputs)[output], pooled(inputs)[output], described)
        timings = {"tensorflow": _timed(tensorflow.run, inputs), "litert": _timed(pooled, inputs)}
    return {"calibration": described, **result,
            "images_per_second": {name: speed for name, (speed, _) in timings.items()},
            "cpu_ms_per_image": {name: cost for name, (_, cost) in timings.items()}}


def _compare(kind: str, expected: np.ndarray, got: np.ndarray, described: str) -> dict[str, Any]:
    """The classifier's tolerance is on scores and top-1, the generator's on pixels."""
    difference = float(np.abs(expected.astype(np.float64) - got.astype(np.float64)).max())
    problems = []
    if kind == "classifier":
        agreement = float(np.mean(expected.argmax(axis=1) == got.argmax(axis=1)))
        measured = {"max_difference": difference, "tolerance": SCORE_TOLERANCE, "top1_agreement": agreement}
        if difference > SCORE_TOLERANCE:
            problems.append(f"largest score difference {difference:.2g} is over {SCORE_TOLERANCE:g}")
        if agreement < 1:
            problems.append(f"top-1 differs on {1 - agreement:.0%} of the images")
    else:
        measured = {"max_difference": difference, "tolerance": PIXEL_TOLERANCE}
        if difference > PIXEL_TOLERANCE:
            problems.append(f"generated pixels differ by up to {difference:g} grey levels")
    reason = "; ".join(problems) if problems else f"agrees with TensorFlow on {described}"
    return {**measured, "verified": not problems, "reason": reason}


def calibration(card: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], str]:
    """Real inputs for the model, and what they are.

    Classifier: test images of the dataset named in the card (stratified, at the model's
    size as the service resizes them). Generator: latents drawn as the service draws them
    (seeded normal), cycling through the classes.
    """
    if card["kind"] == "generator":
        classes = len(card.get("classes") or [None]) if card.get("conditional", True) else 1
        latents = np.random.RandomState(0).standard_normal((CALIBRATION_SIZE, int(card["latent_dim"])))
        class_ids = np.arange(CALIBRATION_SIZE) % classes
        described = f"{CALIBRATION_SIZE} seeded latents over {classes} classes"
        return {"latents": latents.astype(np.float32), "class_ids": class_ids.astype(np.int32)}, described
    from training.data import load_dataset  # the dataset loaders of the training side

    source, size = card.get("dataset"), int(card["image_size"][0])
    per_class = math.ceil(CALIBRATION_SIZE / max(len(card.get("labels") or []), 1))
    try:
        test = load_dataset(source, split="test", per_class=per_class)
    except Exception as error:
        raise ConversionError(f"no calibration images: the dataset {source!r} of the model card cannot be "
                              f"loaded here ({error})") from None
    pixels = np.stack([resize(image, size) for image in test.images])
    return {"images": pixels}, f"{len(pixels)} {source} test images"


def _input_specs(kind: str, card: Mapping[str, Any]) -> dict[str, Any]:
    import tensorflow as tf

    if kind == "classifier":
        size = int(card["image_size"][0])
        return {"images": tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")}
    return {"latents": tf.TensorSpec([None, int(card["latent_dim"])], tf.float32, name="latents"),
            "class_ids": tf.TensorSpec([None], tf.int32, name="class_ids")}


def _timed(run: Callable[[Mapping[str, np.ndarray]], Any], inputs: Mapping[str, np.ndarray],
           rounds: int = 3, round_s: float = 0.25) -> tuple[float, float]:
    """`run` on the batch, after a warm-up call: images per second (the best of a few rounds
    of at least `round_s` each: other processes only ever slow a round down) and the
    process's CPU milliseconds per image (the least of the rounds)."""
    run(inputs)
    images = len(next(iter(inputs.values())))
    best_speed, least_cost = 0.0, math.inf
    for _ in range(rounds):
        calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
        while (elapsed := time.perf_counter() - start) < round_s:
            run(inputs)
            calls += 1
        best_speed = max(best_speed, calls * images / elapsed)
        least_cost = min(least_cost, (time.process_time() - cpu_start) * 1000 / (calls * images))
    return round(best_speed, 1), round(least_cost, 3)


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Only warnings and errors from these loggers while the block runs."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _signature_names(path: str | Path) -> set[str]:
    """Signature names from saved_model.pb alone, without loading the model."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((Path(path) / "saved_model.pb").read_bytes())
    return {name for graph in saved.meta_graphs for name in graph.signature_def}


def _digest(flatbuffer: bytes) -> str:
    return hashlib.sha256(flatbuffer).hexdigest()


def _version(package: str) -> str:
    return f"{package} {metadata.version(package)}"

