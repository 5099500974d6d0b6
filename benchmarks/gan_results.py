"""Reproduce the published DCGAN table (docs/gan.md) and print it.

    python -m benchmarks.gan_results                        # print the recorded measurements
    python -m benchmarks.gan_results --run quick full       # re-measure rows (minutes) and record them
    python -m benchmarks.gan_results --model models/generator/3   # measure exports you already have

Each row is one `python -m training.gan ...` command, run as a user would run it (own
process, evaluation of the export on the full Fashion-MNIST test set at each truncation ψ
of `training.evaluate_gan.PSI_GRID`). `--run` re-measures rows on this machine and records
them in docs/gan_results.json; without it the recorded numbers are printed, each with the
command that reproduces it: the table at each row's default ψ, then FID and class
consistency at every ψ. `--model` measures existing exports and prints their rows without
recording them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "gan_results.json"

# name -> training flags. "full" is the default recipe: that is the claim. The projected rows
# get the same CPU budget as the rows above them (docs/gan.md, "A projected discriminator").
# --fid-every adds the points of the FID-vs-CPU-minutes curve; it changes no training step.
ROWS = {
    "quick": "--quick --fid-every 750",
    "full": "--fid-every 3750",
    "quick-projected": "--discriminator projected --epochs 1 --per-class 2700 --fid-every 300",
    "full-projected": "--discriminator projected --epochs 3 --fid-every 1500",
    # Only the two shallow depths (8 and 4 px maps at 32 px): a quarter of the step's CPU, so
    # the quick budget buys 5,500 steps instead of 1,688 (docs/gan.md, "Why it lost").
    "quick-projected-shallow": "--discriminator projected --projected-depths 2 --epochs 2 --per-class 4400 "
                               "--fid-every 550",
}


def row_from_card(card: dict, command: str) -> dict:
    """The table's columns, from an evaluated export's model card."""
    metrics, training = card["metrics"], card["training"]
    return {
        "command": command,
        "epochs": training["epochs"],
        "train_images": training["train_images"],
        "training_minutes": round(training["wall_seconds"] / 60, 1),
        "training_cpu_minutes": round(training["cpu_seconds"] / 60, 1),
        "psi": metrics["psi"],
        "fid": metrics["fid"],
        "fid_floor": metrics["fid_floor"],
        "class_consistency": metrics["class_consistency"],
        "evaluator_accuracy": metrics["evaluator_accuracy"],
        "fid_samples": metrics["samples"],
        "by_psi": metrics["by_psi"],
        "fid_curve": training.get("fid_curve", []),
    }


def run_row(name: str, figures: Path | None) -> dict:
    """Train and evaluate one row in its own process; return what its model card says."""
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, "-m", "training.gan", *shlex.split(ROWS[name]),
                   "--out", f"{work}/models", "--run-dir", f"{work}/run"]
        load_before = os.getloadavg()[0]
        subprocess.run(command, check=True)
        model_dir = next(Path(work, "models").glob("*/model_card.json")).parent
        card = json.loads((model_dir / "model_card.json").read_text())
        if figures:
            subprocess.run([sys.executable, "-m", "training.evaluate_gan", str(model_dir), "--figures",
                            str(figures), "--no-metrics"], check=True)
    return {
        **row_from_card(card, " ".join(["python -m training.gan", ROWS[name]]).strip()),
        "measured": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
                   f"load {load_before:.1f} at the start (other jobs share the cores)",
    }


def measure_export(path: str) -> dict:
    """Evaluate an existing export now; its training numbers come from its card."""
    from contract.card import ModelCard
    from training.cli import resolve_model_dir
    from training.evaluate_gan import card_metrics, choose_psi, evaluate_saved_generator

    model_dir = resolve_model_dir(path)
    card = ModelCard.read(model_dir).to_dict()
    evaluations = evaluate_saved_generator(model_dir)
    card["metrics"] = card_metrics(evaluations, choose_psi(evaluations))  # the ψ the trainer would choose now
    flags = card["training"]["config"]
    return row_from_card(card, f"{model_dir} (trained with {flags['epochs']} epochs, filters {flags['filters']})")


def _percent(consistency: float | None) -> str:
    return "—" if consistency is None else f"{consistency:.1%}"


def print_table(rows: dict) -> None:
    """The rows at their default ψ, then the trade-off: FID and class consistency at each ψ."""
    print(f"| {'row':<24} | epochs | train min | CPU min | default ψ | domain FID | floor | FID/floor | "
          "class consistency | command")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, row in rows.items():
        if row is None:
            print(f"| {name:<24} | — | — | — | — | — | — | — | — | not measured yet")
            continue
        print(f"| {name:<24} | {row['epochs']:>6} | {row['training_minutes']:>9.1f} | "
              f"{row['training_cpu_minutes']:>7.1f} | {row['psi']:>9g} | {row['fid']:>10.2f} | "
              f"{row['fid_floor']:>5.2f} | {row['fid'] / row['fid_floor']:>9.0f} | "
              f"{_percent(row['class_consistency']):>17} | {row['command']}")
    print(f"\n| {'row':<24} | ψ | domain FID | FID/floor | class consistency | command")
    print("|---|---:|---:|---:|---:|---|")
    for name, row in rows.items():
        for psi, measured in (row or {}).get("by_psi", {}).items():
            print(f"| {name:<24} | {psi} | {measured['fid']:>10.2f} | "
                  f"{measured['fid'] / row['fid_floor']:>9.0f} | {_percent(measured['class_consistency']):>17} | "
                  f"{row['command']}")


def plot_curves(rows: dict, path: Path) -> None:
    """FID (2,000 test images, ψ = 1) against training CPU-minutes, one line per measured row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, row in rows.items():
        if row and row.get("fid_curve"):
            _, cpu_minutes, fids = zip(*row["fid_curve"])
            ax.plot(cpu_minutes, fids, marker="o", markersize=3, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("training CPU-minutes")
    ax.set_ylabel("domain FID (2,000 test images, ψ = 1)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("How fast each discriminator converges")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", nargs="+", choices=sorted(ROWS), default=[],
                        help="re-measure these rows (minutes each) and record them")
    parser.add_argument("--figures", type=Path, default=None,
                        help="with --run: draw gan_samples.png and gan_interpolation.png from the last row's model here")
    parser.add_argument("--curve", type=Path, default=None,
                        help="draw the recorded rows' FID-vs-CPU-minutes curves into this PNG")
    parser.add_argument("--model", nargs="+", default=[], help="measure these exports instead (not recorded)")
    args = parser.parse_args()
    if args.model:
        print_table({Path(path).as_posix(): measure_export(path) for path in args.model})
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in args.run:
        print(f"== {name}: python -m training.gan {ROWS[name]}", flush=True)
        results[name] = run_row(name, args.figures if name == args.run[-1] else None)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table({name: results.get(name) for name in ROWS})
    if args.curve:
        plot_curves({name: results.get(name) for name in ROWS}, args.curve)


if __name__ == "__main__":
    main()
