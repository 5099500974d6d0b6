"""The flags and the run: raw rows, every target's phases, raw rows again, then the report,
the tables and the exit code (1 when diptych answered wrong, lost answers or kept growing)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchmarks.load
from benchmarks.load.clients import client_main
from benchmarks.load.phases import Context, raw_rows, run_target
from benchmarks.load.report import consistency, print_tables, ratios
from benchmarks.serving import ROOT, models_parser, sample_images
from service.core.models import locate


def parser() -> argparse.ArgumentParser:
    parser = models_parser("python -m benchmarks.load", benchmarks.load.__doc__, "store tag or SavedModel folder")
    parser.add_argument("--duration", type=float, default=180, help="seconds of mixed load per target and protocol")
    parser.add_argument("--pure-duration", type=float, default=30,
                        help="seconds of each pure phase (classify, generate; at --concurrency and at 1)")
    parser.add_argument("--raw-seconds", type=float, default=8, help="seconds per raw row (twice: before and after)")
    parser.add_argument("--concurrency", type=int, default=32, help="load-generator workers (saturation)")
    parser.add_argument("--classifier-runtime", default="auto", choices=("auto", "litert", "tensorflow"),
                        help="diptych's DIPTYCH_CLASSIFIER_RUNTIME")
    parser.add_argument("--targets", default="diptych,naive")
    parser.add_argument("--protocols", default="http,grpc", help="diptych's; the naive peer serves HTTP only")
    parser.add_argument("--timeout", type=float, default=60, help="seconds before a request counts as lost")
    parser.add_argument("--sample-every", type=float, default=3, help="seconds between memory samples")
    parser.add_argument("--out", default=str(ROOT / "docs" / "load_results.json"))
    parser.add_argument("--report", metavar="JSON", help="print the tables of an earlier run's --out file, and exit")
    parser.add_argument("--client", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = parser().parse_args()
    if args.client:
        client_main(*args.client)
    elif args.report:
        reprint(Path(args.report))
    else:
        run(args)


def reprint(path: Path) -> None:
    report = json.loads(path.read_text())
    print(f"{report['command']}: {report['started']}, {report['minutes']:.1f} minutes, load average "
          f"{report['load average']['start'][0]:.1f} at the start, {report['load average']['end'][0]:.1f} at the end")
    print_tables(report)


def run(args: argparse.Namespace) -> None:
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    work = Path(tempfile.mkdtemp(prefix="diptych-load-"))
    context = Context(args, work, sample_images(), locate(args.classifier), locate(args.generator))
    cinfo, ginfo = context.classifier, context.generator
    began, load_start = time.time(), os.getloadavg()
    print(f"classifier {cinfo.name}:{cinfo.version} ({cinfo.card.backbone}, {cinfo.card.image_size[0]} px), "
          f"generator {ginfo.name}:{ginfo.version}; {os.cpu_count()} CPUs, load average {load_start[0]:.1f}; "
          f"concurrency {args.concurrency}, mixed {args.duration:g} s, pure {args.pure_duration:g} s; logs in {work}",
          flush=True)
    report = report_of(context, began, load_start, *measure(context))
    print_tables(report)
    for note in report["consistency"]:
        print(f"  note: {note}")
    Path(args.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nload average: start {load_start[0]:.1f}, end {os.getloadavg()[0]:.1f} (1-minute), {report['minutes']:.1f} "
          f"minutes; results in {args.out}")
    fail(report["phases"], report["memory"])


def measure(context: Context) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """The raw rows, every target's phases and memory, then the raw rows again, keeping each
    row's better round: other jobs on the machine only ever slow a round down."""
    runtimes: dict[str, Any] = {}
    raw = raw_rows(context, runtimes)
    print("  raw: " + ", ".join(f"{name} {row['images/s']:.0f}/s" for name, row in raw.items()), flush=True)
    results, memory = [], {}
    for target in context.args.targets.split(","):
        protocols = context.args.protocols.split(",") if target == "diptych" else ["http"]
        found, memory[target] = run_target(context, target, protocols)
        results += found
    for name, row in raw_rows(context, runtimes).items():
        if row["images/s"] > raw[name]["images/s"]:
            raw[name] = row
    return raw, results, memory


def report_of(context: Context, began: float, load_start: tuple[float, float, float], raw: dict[str, Any],
              results: list[dict[str, Any]], memory: dict[str, Any]) -> dict[str, Any]:
    """What --out holds: the run's settings and models, the raw rows, every phase, the memory
    reports, the ratios and the consistency notes."""
    args, cinfo, ginfo = context.args, context.classifier, context.generator
    report = {"command": " ".join(["python -m benchmarks.load", *sys.argv[1:]]),
              "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(began)),
              "minutes": (time.time() - began) / 60, "cpus": os.cpu_count(),
              "load average": {"start": load_start, "end": os.getloadavg()},
              "classifier": {"model": f"{cinfo.name}:{cinfo.version}", "backbone": cinfo.card.backbone,
                             "image size": list(cinfo.card.image_size)},
              "generator": {"model": f"{ginfo.name}:{ginfo.version}", "image size": list(ginfo.card.image_size)},
              "settings": {k: v for k, v in vars(args).items() if k not in ("client", "out")},
              "raw": raw, "phases": results, "memory": memory,
              "ratios": ratios(results, raw, memory.get("diptych", {}).get("runtimes", {})),
              "consistency": consistency(results)}
    for result in results:  # the references served their purpose (`consistency`); keep the file small
        result["reference"] = {key: len(value) for key, value in result["reference"].items()}
    return report


def fail(results: list[dict[str, Any]], memory: dict[str, Any]) -> None:
    """Exit 1 when diptych answered any 5xx, mismatch, lost or transport error, or its memory kept climbing."""
    failures = [f"{r['target']} {r['protocol']} {r['phase']}: {key} {r['all'][key]}" for r in results
                if r["target"] == "diptych" for key in ("5xx", "mismatches", "lost", "transport errors") if r["all"][key]]
    if memory.get("diptych", {}).get("flat") is False:
        failures.append("diptych: RSS still climbing in the last third")
    for failure in failures:
        print(f"FAILED: {failure}")
    if failures:
        raise SystemExit(1)
