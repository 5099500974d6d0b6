"""Reproduce the published classifier tables (docs/classifier.md) and print them.

    python -m benchmarks.classifier_results            # print the recorded measurements
    python -m benchmarks.classifier_results --run 100-transfer 100-scratch --seeds 0 1 2

Each row is one `python -m training.classifier ...` command, run as a user would run it
(own process, the whole test split), once per seed (`--seed S` appended). `--run`
re-measures rows on this machine and records each seed's result in
docs/classifier_seeds.json; the table gives the mean ± the standard deviation over the
seeds (n - 1 in the denominator) of accuracy and balanced accuracy. One seed can mislead:
a from-scratch baseline that collapses onto one class in one seed of three moves the gap
by many points (docs/classifier.md). The `lfw-` rows run on a folder of faces vs
non-faces that `benchmarks.lfw_folder` writes from scikit-image's bundled data.

docs/classifier_results.json keeps the single-seed table measured before that (seed 0),
printed first.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
SINGLE_SEED_RESULTS = DOCS / "classifier_results.json"
RESULTS = DOCS / "classifier_seeds.json"
LFW = "LFW_FOLDER"  # in a row's flags: the folder `python -m benchmarks.lfw_folder LFW_FOLDER` writes

# name -> training flags. The transfer rows use the default recipe: that is the claim.
ROWS = {
    "100-scratch": "--per-class 100 --backbone scratch",
    "100-transfer": "--per-class 100",
    "500-scratch": "--per-class 500 --backbone scratch",
    "500-transfer": "--per-class 500",
    "full-scratch": "--backbone scratch --epochs 10",
    "full-transfer": "",
    # 80 training images per class: 100 per class and the full set are the same run
    "lfw-scratch": f"--data {LFW} --backbone scratch",
    "lfw-transfer": f"--data {LFW}",
    # the scratch CNN at 64 px instead of the folder's own 25: does a larger input help it?
    "lfw-scratch-64": f"--data {LFW} --backbone scratch --image-size 64",
}


def run_row(name: str, seed: int, lfw_folder: Path) -> dict:
    """Train and evaluate one row with one seed in its own process; return what its card says."""
    flags = [*shlex.split(ROWS[name].replace(LFW, str(lfw_folder))), "--seed", str(seed)]
    with tempfile.TemporaryDirectory() as out:
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "training.classifier", *flags, "--out", out], check=True)
        wall = time.monotonic() - started
        card = json.loads(next(Path(out).glob("*/model_card.json")).read_text())
    metrics = card["metrics"]
    return {
        "seed": card["training"]["config"]["seed"],  # as the trainer read it
        "test_accuracy": metrics["test_accuracy"],
        "test_balanced_accuracy": metrics["test_balanced_accuracy"],
        "collapsed": metrics["collapsed"],
        "test_examples": metrics["test_examples"],
        "train_images": sum(card["per_class_counts"].values()),
        "training_seconds": card["training"]["wall_seconds"],
        "total_seconds": round(wall, 1),
        "measured": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
    }


def command(name: str) -> str:
    return f"python -m training.classifier {ROWS[name]} --seed S".replace("  ", " ")


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2%} (one seed)"
    return f"{statistics.mean(values):.2%} ± {statistics.stdev(values):.2%}"


def print_seeds_table(results: dict) -> None:
    print("| row | seeds | train images | balanced acc | test acc | collapsed | train s | command")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name in ROWS:
        runs = results.get(name, {})
        if not runs:
            print(f"| {name} | — | — | — | — | — | — | not measured yet: {command(name)}")
            continue
        rows = [runs[seed] for seed in sorted(runs, key=int)]
        seconds = statistics.mean(row["training_seconds"] for row in rows)
        print(f"| {name} | {','.join(sorted(runs, key=int))} | {rows[0]['train_images']} | "
              f"{mean_std([row['test_balanced_accuracy'] for row in rows])} | "
              f"{mean_std([row['test_accuracy'] for row in rows])} | "
              f"{sum(row['collapsed'] for row in rows)} of {len(rows)} | {seconds:.0f} | {command(name)}")


def print_single_seed_table(results: dict) -> None:
    print("| row | train images | test acc | train s | total s | command (seed 0, before issue #29)")
    print("|---|---:|---:|---:|---:|---|")
    for name, row in results.items():
        print(f"| {name} | {row['train_images']} | {row['test_accuracy']:.2%} | "
              f"{row['training_seconds']:.0f} | {row['total_seconds']:.0f} | {row['command']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", nargs="+", choices=list(ROWS), default=[],
                        help="re-measure these rows (minutes each per seed) and record them")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="the seeds each row runs with")
    args = parser.parse_args()
    from benchmarks.lfw_folder import write_lfw_folder

    with tempfile.TemporaryDirectory() as scratch:
        lfw_folder = write_lfw_folder(Path(scratch) / "lfw") if any(n.startswith("lfw") for n in args.run) else None
        for name in args.run:
            for seed in args.seeds:
                print(f"== {name}, seed {seed}: {command(name)}", flush=True)
                row = run_row(name, seed, lfw_folder)
                results = _recorded(RESULTS)  # read again: another run may have recorded rows meanwhile
                results.setdefault(name, {})[str(seed)] = row
                RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_single_seed_table(_recorded(SINGLE_SEED_RESULTS))
    print()
    print_seeds_table(_recorded(RESULTS))


def _recorded(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


if __name__ == "__main__":
    main()
