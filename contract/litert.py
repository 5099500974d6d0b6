"""LiteRT flatbuffers of the exported SavedModels, and the proof that they compute the same.

The SavedModel stays the exchange format (TF Serving, `tf.saved_model.load`); LiteRT runs
the same numbers about twice as fast on a few CPU cores (docs/serving.md). Conversion
takes the card's `numeric_signature` only, whose ops are all LiteRT builtins: the
classifier's `classify_resized` (pixels at the model's size → scores; decoding and resizing
happen in the service) and the generator's `serving_default`. No TF "Flex" ops: a
flatbuffer that needs TensorFlow's kernels would gain nothing.

A conversion is verified before it is used: TensorFlow and a LiteRT pool run the export's
calibration sample (`calibration.npz`: a few dozen real inputs that the export wrote, e.g.
training images at the model's size, or seeded latents), and the outputs are judged by a
check that the kind of model names (`contract.checks`: within the card's `tolerance`, and
for a classifier the same top-1 too). Both are timed on that batch too, so `auto` can keep
whichever costs less. `training.publish` stores the result beside the SavedModel in the
model store (`litert/`); a model without one is converted when the service loads it, in a
process of its own (`convert_apart`, which runs this module: `python -m contract.litert --help`).
Nothing here knows a dataset or a kind of model: the card, the sample and the check say it all.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .card import ModelCard
from .checks import STRICTEST, judge, measure
from .runtime import LiteRTRuntime, SavedModelRuntime
from .signatures import signatures

FOLDER = "litert"  # beside saved_model.pb
FLATBUFFER = "model.tflite"
REPORT = "report.json"
CALIBRATION = "calibration.npz"  # beside saved_model.pb: the numeric signature's inputs, written by the export


class ConversionError(Exception):
    """The model cannot be converted or verified; the message says why."""


@dataclasses.dataclass(frozen=True)
class Conversion:
    """A converted model (`flatbuffer`, None when it failed) and its report, which records
    the verification (`verified` by which `check`, `reason`, `max_difference`,
    `top1_agreement`, `calibration`) and what each runtime measured: `images_per_second`
    (wall clock) and `cpu_ms_per_image`. A flatbuffer that a check refused is kept (its
    sha256 too), since another kind's check may accept it (`judged`)."""

    flatbuffer: bytes | None
    report: dict[str, Any]

    @property
    def verified(self) -> bool:
        return self.flatbuffer is not None and self.report.get("verified", False)

    @property
    def faster(self) -> bool:
        """LiteRT costs less CPU per image. CPU time decides, not the wall clock: on a shared
        machine other processes slow whichever runtime happens to be timed when they run, and
        a saturated server's throughput is its cores divided by that cost."""
        cost = self.report["cpu_ms_per_image"]
        return cost["litert"] < cost["tensorflow"]

    @property
    def summary(self) -> str:
        """One line for a person: verified or why not, and what each runtime measured."""
        speed, cost = self.report.get("images_per_second", {}), self.report.get("cpu_ms_per_image", {})
        measured = ", ".join(f"{runtime} {value:g} images/s, {cost.get(runtime, float('nan')):.2f} CPU ms per image"
                             for runtime, value in speed.items())
        if not self.verified:
            check = f" by the {self.report['check']} check" if "check" in self.report else ""
            return f"LiteRT conversion not verified{check}: {self.report['reason']}; the service will use " \
                   f"TensorFlow unless its kind's check accepts it"
        return f"LiteRT verified: {self.report['reason']}, largest difference " \
               f"{self.report['max_difference']:.2g}; measured {measured}"

    def judged(self, check: str) -> Conversion:
        """This conversion as `check` (the serving kind's) judges its measurements: a stored
        one was judged by whoever converted it, who may not have known the kind."""
        if self.flatbuffer is None or "max_difference" not in self.report or self.report.get("check") == check:
            return self
        measured = {key: self.report[key] for key in ("max_difference", "top1_agreement")}
        verdict = judge(measured, self.report["tolerance"], check, self.report["calibration"])
        return Conversion(self.flatbuffer, {**self.report, **verdict})

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
        checksums its own variables) or is missing is not used."""
        folder = Path(model_dir) / FOLDER
        if not (folder / REPORT).is_file():
            return None
        path, report = folder / FLATBUFFER, json.loads((folder / REPORT).read_text())
        flatbuffer = path.read_bytes() if path.is_file() else None
        if report.get("verified") and flatbuffer is None:
            return cls(None, {**report, "verified": False, "reason": f"{FOLDER}/{FLATBUFFER} is missing"})
        if flatbuffer is not None and report.get("sha256") != _digest(flatbuffer):
            reason = f"{FOLDER}/{FLATBUFFER} is not the flatbuffer that was verified (its sha256 differs)"
            return cls(None, {**report, "verified": False, "reason": reason})
        return cls(flatbuffer, report)


def convert_and_verify(folder: str | os.PathLike, card: ModelCard, interpreters: int) -> Conversion:
    """Convert the SavedModel in `folder`, verify it (by the strictest check: a kind judges it
    again by its own, `Conversion.judged`) and time it; never raises for a model that fails:
    the report's `reason` says why, and the model is then served by TensorFlow."""
    report: dict[str, Any] = {"signature": card.numeric_signature, "converter": _version("tensorflow"),
                              "interpreter": _version("ai-edge-litert"), "interpreters": interpreters}
    try:
        inputs = calibration(folder)
        flatbuffer = convert(folder, card.numeric_signature, inputs)
        report.update(verify(folder, card, flatbuffer, inputs, interpreters))
    except ConversionError as error:
        return Conversion(None, {**report, "verified": False, "reason": str(error)})
    except Exception as error:  # TensorFlow and the interpreter raise many kinds
        first_line = next(iter(str(error).strip().splitlines()), "")
        return Conversion(None, {**report, "verified": False, "reason": f"{type(error).__name__}: {first_line}"})
    return Conversion(flatbuffer, {**report, "sha256": _digest(flatbuffer)})


def convert_apart(folder: str | os.PathLike, card: ModelCard, interpreters: int, niceness: int = 19,
                  timeout_s: float = 900) -> Conversion:
    """`convert_and_verify` in a child process at `niceness`, for a process that serves while
    it loads. Measured with benchmarks/rollout.py (docs/serving.md): converting inside the
    serving process raised the p99 of the requests it served meanwhile 3.9× (it shares the
    GIL with them, and TensorFlow's own thread pools run at full priority), and left 43 MiB
    behind after the version was unloaded; apart, 1.2× and 6 MiB. A child's threads all
    inherit its niceness, and its memory goes when it exits."""
    failed = {"signature": card.numeric_signature, "verified": False}
    package_root = str(Path(__file__).resolve().parents[1])  # importable wherever the service runs from
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root,
                                                                             os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="diptych-litert-") as out:
        command = [sys.executable, "-m", "contract.litert", str(folder), "--out", out,
                   "--interpreters", str(interpreters), "--niceness", str(niceness)]
        try:
            child = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return Conversion(None, {**failed, "reason": f"the conversion did not finish in {timeout_s:g} s"})
        conversion = Conversion.load(out)
        if child.returncode != 0 or conversion is None:
            last = next(reversed(child.stderr.strip().splitlines()), "no message")
            return Conversion(None, {**failed, "reason": f"the conversion process exited with {child.returncode}: "
                                                         f"{last}"})
        return conversion


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m contract.litert",
        description="Convert an exported SavedModel to LiteRT, verify it against TensorFlow on the export's "
                    "calibration sample and time both; write the flatbuffer and its report to OUT/litert/. "
                    "The service runs this when it loads a model that has no stored conversion.")
    parser.add_argument("folder", help="a version folder: saved_model.pb, model_card.json, calibration.npz")
    parser.add_argument("--out", required=True, help="where litert/model.tflite and litert/report.json go")
    parser.add_argument("--interpreters", type=int, default=2, help="LiteRT interpreters timed as a pool")
    parser.add_argument("--niceness", type=int, default=0, help="added to this process's niceness first")
    args = parser.parse_args(argv)
    niceness = os.nice(args.niceness)  # before TensorFlow starts its thread pools, so that they inherit it
    conversion = convert_and_verify(args.folder, ModelCard.read(args.folder), args.interpreters)
    # The wall-clock timings in the report were taken at this priority.
    Conversion(conversion.flatbuffer, {**conversion.report, "niceness": niceness}).save(args.out)
    print(f"{conversion.summary}\nwritten to {Path(args.out) / FOLDER}")


def save_calibration(folder: str | os.PathLike, inputs: Mapping[str, np.ndarray]) -> None:
    """What an export writes: a few dozen real inputs of its numeric signature, by input name."""
    np.savez_compressed(Path(folder) / CALIBRATION, **inputs)


def calibration(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(folder) / CALIBRATION
    if not path.is_file():
        raise ConversionError(f"the export has no calibration sample ({CALIBRATION}): export it again")
    with np.load(path, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def convert(folder: str | os.PathLike, signature: str, inputs: Mapping[str, np.ndarray]) -> bytes:
    """The numeric signature as a LiteRT flatbuffer of builtin ops.

    From the loaded concrete function, with every dimension but the batch fixed to the
    calibration sample's: the converter's `from_saved_model` keeps the variables as
    resource variables here (the flatbuffer then computes NaN), and an `ensure_shape` on a
    `[None, None]` input is a Flex op unless the width is known.
    """
    import tensorflow as tf

    if signature not in signatures(folder):
        raise ConversionError(f"the SavedModel has no {signature!r} signature, which its card names")
    loaded = tf.saved_model.load(str(folder))
    function = loaded.signatures[signature]
    names = list(inputs)
    specs = [tf.TensorSpec([None, *value.shape[1:]], tf.as_dtype(value.dtype), name=name)
             for name, value in inputs.items()]
    fixed = tf.function(lambda *values: function(**dict(zip(names, values))), input_signature=specs)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fixed.get_concrete_function()], loaded)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        with _quiet("tensorflow", "absl"):  # the converter logs every captured variable's name at INFO
            return converter.convert()
    except Exception as error:  # the converter's message runs to pages of MLIR: keep its verdict
        lines = [line for line in str(error).splitlines() if "error:" in line] or ["the converter failed"]
        raise ConversionError(f"conversion to LiteRT builtins failed: {lines[0].split('error:')[-1].strip()}") from None


def verify(folder: str | os.PathLike, card: ModelCard, flatbuffer: bytes, inputs: Mapping[str, np.ndarray],
           interpreters: int) -> dict[str, Any]:
    """Run TensorFlow and a LiteRT pool on the calibration sample: measure and judge (by the
    strictest check), and time both."""
    tensorflow = SavedModelRuntime(str(folder), card.numeric_signature)
    litert = LiteRTRuntime(flatbuffer, interpreters)
    described = f"the export's {len(next(iter(inputs.values())))} calibration inputs"
    with ThreadPoolExecutor(interpreters) as threads:

        def pooled(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            """The batch split among the interpreters, run in parallel, as the batch workers do."""
            bounds = np.linspace(0, len(next(iter(batch.values()))), interpreters + 1).astype(int)
            chunks = [{name: value[start:end] for name, value in batch.items()}
                      for start, end in zip(bounds[:-1], bounds[1:]) if end > start]
            parts = list(threads.map(litert.run, chunks))
            return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

        result = judge(measure(tensorflow.run(inputs), pooled(inputs)), card.tolerance, STRICTEST, described)
        timings = {"tensorflow": _timed(tensorflow.run, inputs), "litert": _timed(pooled, inputs)}
    return {"calibration": described, **result,
            "images_per_second": {name: speed for name, (speed, _) in timings.items()},
            "cpu_ms_per_image": {name: cost for name, (_, cost) in timings.items()}}


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


def _digest(flatbuffer: bytes) -> str:
    return hashlib.sha256(flatbuffer).hexdigest()


def _version(package: str) -> str:
    return f"{package} {metadata.version(package)}"


if __name__ == "__main__":
    main()
