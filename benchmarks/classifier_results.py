"""Reproduce the published classifier table (docs/classifier.md) and print it.

    python -m benchmarks.classifier_results            # print the recorded measurements
    python -m benchmarks.classifier_results --run 100-transfer 100-scratch

Each row is one `python -m training.classifier ...` command, run as a user would run it
(own process, full Fashion-MNIST test set). `--run` re-measures rows on this machine and
records the result in docs/classifier_results.json; without it the recorded numbers are
printed, each with the command that reproduces it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "classifier_results.json"

# name -> training flags. The transfer rows use the default recipe: that is the claim.
ROWS = {
    "100-scratch": "--per-class 100 --backbone scratch",
    "100-transfer": "--per-class 100",
    "500-scratch": "--per-class 500 --backbone scratch",
    "500-transfer": "--per-class 500",
    "full-scratch": "--backbone scratch --epochs 10",
    "full-transfer": "",
}


def run_row(name: str) -> dict:
    """Train and evaluate one row in its own process; return what its model card says."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "training.classifier", *shlex.split(ROWS[name]), "--out", out]
        started = time.monotonic()
        subprocess.run(command, check=True)
        wall = time.monotonic() - started
        card = json.loads(next(Path(out).glob("*/model_card.json")).read_text())
    return {
        "command": f"python -m training.classifier {ROWS[name]}".strip(),
        "test_accuracy": card["metrics"]["test_accuracy"],
        "test_examples": card["metrics"]["test_examples"],
        "train_images": sum(card["per_class_counts"].values()),
        "training_seconds": card["training"]["wall_seconds"],
        "total_seconds": round(wall, 1),
        "measured": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {_cpu_count()} cores",
    }


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0))


def print_table(results: dict) -> None:
    header = f"| {'row':<14} | {'train images':>12} | {'test acc':>8} | {'train s':>8} | {'total s':>8} | command"
    print(header)
    print("|---|---:|---:|---:|---:|---|")
    for name in ROWS:
        row = results.get(name)
        if row is None:
            print(f"| {name:<14} | {'—':>12} | {'—':>8} | {'—':>8} | {'—':>8} | not measured yet")
            continue
        print(f"| {name:<14} | {row['train_images']:>12} | {row['test_accuracy']:>8.2%} | "
              f"{row['training_seconds']:>8.0f} | {row['total_seconds']:>8.0f} | {row['command']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", nargs="+", choices=sorted(ROWS), default=[],
                        help="re-measure these rows (minutes each) and record them")
    args = parser.parse_args()
    for name in args.run:
        print(f"== {name}: python -m training.classifier {ROWS[name]}", flush=True)
        row = run_row(name)
        results = _recorded()  # read again: another run may have recorded rows meanwhile
        results[name] = row
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table(_recorded())


def _recorded() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


if __name__ == "__main__":
    main()
