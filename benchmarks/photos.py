"""Photo benchmark: what real photos cost per image, and served, against the raw models, in one run.

    python -m benchmarks.photos                       # classifier:latest and generator:latest
    python -m benchmarks.photos --classifier models/classifier/1 --generator models/generator/1 --no-serve

1. Per image, for each format and size of the corpus (benchmarks/photo_corpus.py): the CPU
   time of the header check (`images.prepare`) and of decode + resize (`images.decode`),
   the median of many repetitions measured with `time.process_time` (other jobs on the
   machine change it far less than the wall clock), beside Pillow's draft + float resize
   (the path before #26) for JPEGs, and the largest and mean pixel difference of each against
   the graph's own preprocessing (`tf.io.decode_image` + antialiased resize, EXIF aside).
2. What the service's decoding changes in the classifier's answers (benchmarks/photo_accuracy.py;
   unless --no-accuracy).
3. Served (unless --no-serve), for each size's first JPEG: HTTP (`hey`) and gRPC diptych.v1
   `Classify` (`h2load`) at concurrency 1 and 32, one photo a request, against raw TensorFlow
   (`serving_default` on the same bytes, batch 32) and the raw LiteRT pool fed by the same
   decode, each row the best of --rounds interleaved rounds (benchmarks/serving.py measures).
   With --profile, then py-spy samples the service under HTTP at concurrency 32 on the
   0.3-MP photo: where its CPU time goes.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from benchmarks import photo_accuracy, serving
from benchmarks.photo_accuracy import graph_pixels
from benchmarks.photo_corpus import SIZES, corpus
from contract.runtime import LITERT, SavedModelRuntime, cores
from service.core.images import decode, prepare, resize
from service.core.models import locate

MAX_PIXELS = 4096 * 4096  # the service's default


def cpu_ms(call: Callable[[], object], budget_s: float = 1.0) -> float:
    """Median CPU time of `call` in ms, over as many calls as fit in `budget_s` (at least 5)."""
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or time.perf_counter() < deadline:
        began = time.process_time()
        call()
        times.append(time.process_time() - began)
    return 1000 * statistics.median(times)


def pillow_path(data: bytes, size: int) -> np.ndarray:
    """The JPEG path before #26: Pillow's draft (1/2^k, ≥ 2× size), RGB, three float planes resized."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (2 * size, 2 * size))
    return resize(np.asarray(ImageOps.exif_transpose(image).convert("RGB")), size)


def per_image(size: int, budget_s: float) -> None:
    print(f"\nPer image at {size} px (CPU ms, median; difference from the graph in grey levels, max / mean)")
    print("| size | format | files | KiB | header check | decode + resize | max / mean | before #26 | max / mean |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    photos = corpus()
    for size_name in SIZES:
        for format in dict.fromkeys(photo.format for photo in photos):
            group = [photo.data for photo in photos if photo.size == size_name and photo.format == format]
            if sum(map(len, group)) > 16 * 2**20:  # over the service's request limit
                continue
            graph = [graph_pixels(data, size, format != "jpeg-exif") for data in group]
            header = statistics.median(cpu_ms(functools.partial(prepare, data, "image", MAX_PIXELS), budget_s / 4)
                                       for data in group)
            cells = []
            paths = [functools.partial(decode, size=size, field="image")]
            if format.startswith("jpeg"):
                paths.append(functools.partial(pillow_path, size=size))
            for path in paths:
                cost = statistics.median(cpu_ms(functools.partial(path, data), budget_s) for data in group)
                differences = [np.abs(path(data).astype(int) - pixels.astype(int)) for data, pixels in zip(group, graph)]
                cells += [f"{cost:.2f}", f"{max(d.max() for d in differences)} / "
                                         f"{np.mean([d.mean() for d in differences]):.2f}"]
            cells += ["—"] * (4 - len(cells))
            kib = np.mean([len(data) for data in group]) / 1024
            print(f"| {size_name} | {format} | {len(group)} | {kib:.0f} | {header:.3f} | {' | '.join(cells)} |")


def served(classifier: str, generator: str, sizes: list[str], rounds: int, seconds: float,
           profile: Path | None) -> None:
    hey, h2load = shutil.which("hey"), shutil.which("h2load")
    if hey is None or h2load is None:
        raise SystemExit("a load generator is missing: apt-get install hey nghttp2-client")
    info = locate(classifier)
    size = info.card.image_size[0]
    work = Path(tempfile.mkdtemp(prefix="diptych-photos-"))
    runtime, pool = SavedModelRuntime(info.path), serving.litert_pool(info)
    service = serving.Service(info.path, locate(generator).path, (work / "service.log").open("wb"), LITERT)
    measures: dict[tuple[str, str, int], Callable[[], dict[str, float]]] = {}
    try:
        service.wait_ready()
        for size_name in sizes:
            photos = [photo.data for photo in corpus() if photo.size == size_name and photo.format == "jpeg"]
            batch = photos[:1] * 32  # every row on the same bytes
            body = work / f"{size_name}.json"
            body.write_text(json.dumps({"images": [base64.b64encode(photos[0]).decode()], "top_k": 1}))
            grpc_body = serving.grpc_bodies(photos[0], work)["grpc diptych.v1"].rename(work / f"{size_name}.grpc")
            measures[(size_name, "raw tensorflow", 32)] = functools.partial(serving.bench_raw, runtime, batch, 32, seconds)
            measures[(size_name, "raw litert pool", cores())] = functools.partial(
                serving.bench_pool, pool, size, photos[0], seconds)
            for concurrency in (1, 32):
                measures[(size_name, "http", concurrency)] = functools.partial(
                    serving.load, hey, service, body, concurrency, seconds)
                measures[(size_name, "grpc diptych.v1", concurrency)] = functools.partial(
                    serving.load_grpc, h2load, service, serving.GRPC_CALLS["grpc diptych.v1"], grpc_body,
                    concurrency, seconds)
        best: dict[tuple[str, str, int], dict[str, float]] = {}
        for _ in range(rounds):
            for row, measure in measures.items():
                result = measure()
                if row not in best or result["images/s"] > best[row]["images/s"]:
                    best[row] = result
        if profile:
            record(service, hey, work / f"{sizes[0]}.json", seconds, profile)
    finally:
        service.close()
    load_before = os.getloadavg()[0]
    print(f"\nServed at {size} px on LiteRT, one JPEG a request (load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after); log in {work}")
    # images/s on free cores: what the CPU time per image allows, which other jobs on the machine change least
    print("| photos | path | batch / concurrency | images/s | p50 ms | p99 ms | × raw TF | of raw LiteRT | CPU ms / image "
          f"| images/s on {cores()} free cores | × raw TF | of raw LiteRT |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (size_name, kind, n), result in best.items():
        raw_tf, raw_litert = best[(size_name, "raw tensorflow", 32)], best[(size_name, "raw litert pool", cores())]
        free = 1000 * cores() / result["cpu ms"]
        print(f"| {size_name} | {kind} | {n} | {result['images/s']:.1f} | {result['p50 ms']:.1f} | "
              f"{result['p99 ms']:.1f} | {result['images/s'] / raw_tf['images/s']:.2f}× | "
              f"{result['images/s'] / raw_litert['images/s']:.0%} | {result['cpu ms']:.2f} | {free:.0f} | "
              f"{raw_tf['cpu ms'] / result['cpu ms']:.2f}× | {raw_litert['cpu ms'] / result['cpu ms']:.0%} |")


def record(service: serving.Service, hey: str, body: Path, seconds: float, out: Path) -> None:
    """py-spy samples of the service's processes (on CPU only) while `hey` posts `body` at
    concurrency 32; prints the functions the most samples pass through."""
    load = subprocess.Popen([hey, "-c", "32", "-m", "POST", "-T", "application/json", "-D", str(body),
                             "-z", f"{seconds + 2:g}s", service.url + "/classify"], stdout=subprocess.DEVNULL)
    subprocess.run([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(service.process.pid),
                    "--subprocesses", "--nonblocking", "--format", "raw", "--duration", f"{seconds:g}",
                    "--output", str(out)], capture_output=True, check=True)
    load.wait()
    stacks = [(line.rsplit(" ", 1)[0].split(";"), int(line.rsplit(" ", 1)[1]))
              for line in out.read_text().splitlines() if line.strip()]
    total = sum(count for _, count in stacks)
    through: dict[str, int] = {}
    for frames, count in stacks:
        # "name (file:line)" with the lines merged; py-spy's process and thread frames left out
        for function in {re.sub(r":\d+\)$", ")", frame) for frame in frames if not frame.startswith("process ")}:
            through[function] = through.get(function, 0) + count
    print(f"\npy-spy, HTTP at concurrency 32 on {body.stem}: {total} samples on CPU in {seconds:g} s; raw stacks in {out}")
    print("| function (file) | share of the samples |\n|---|---:|")
    for function, count in sorted(through.items(), key=lambda item: -item[1])[:25]:
        print(f"| `{function}` | {count / total:.0%} |")


def main() -> None:
    parser = serving.models_parser("python -m benchmarks.photos", __doc__, "the service needs one to start")
    parser.add_argument("--sizes", default="96", help="model input sizes for the per-image table")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of repetitions per file and path")
    parser.add_argument("--no-serve", action="store_true", help="no served rows")
    parser.add_argument("--no-accuracy", action="store_true", help="no accuracy measurement")
    parser.add_argument("--served-sizes", default=",".join(SIZES), help="corpus sizes of the served rows")
    parser.add_argument("--profile", type=Path, help="py-spy's raw stacks of the service at HTTP c=32, into this file")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per served row and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for size in map(int, filter(None, args.sizes.split(","))):  # "": no per-image table
        per_image(size, args.budget)
    if not args.no_accuracy:
        photo_accuracy.report(args.classifier)
    if not args.no_serve:
        served(args.classifier, args.generator, args.served_sizes.split(","), args.rounds, args.seconds, args.profile)


if __name__ == "__main__":
    main()
