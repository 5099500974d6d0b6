"""The bulk jobs against the raw runtimes, and Ray against in-process (docs/batch.md).

    python -m benchmarks.batch --classifier C96 --classifier C160 --generator G   # prints the table

- classify: the job (`python -m service.batch classify`, in-process) against the raw LiteRT
  pool on the same files in the same run, decode included on both sides: `interpreters`
  threads, each reading, decoding (`service.core.images.decode`) and running one file at a
  time on a borrowed interpreter - the pool at its best, with nothing else to do.
- generate: the job against the raw generator (its runtime on batches of `max_batch_size`,
  latents drawn in one go, every image PNG-encoded; `interpreters` threads).
- HTTP: POST /generate (64 images a request, `--threads` clients) on a real `bentoml serve`,
  against the same raw generator.
- classify on folders of the photo corpus' 12-MP JPEGs: the job's rate and the command's
  peak memory, at two folder sizes (it should not grow with the folder).
- Ray: the same jobs with `--engine ray` (a local cluster of this machine's cores), and
  generate from 1k to 100k images: wall time (process start included) and peak memory of
  the whole process tree (driver, raylet, workers).

Rounds alternate raw and job, and the median is kept: the machine is shared, and a
neighbour's load lands on whichever side runs at that moment.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3


def fashion_files(folder: Path, count: int) -> list[str]:
    """Real files: Fashion-MNIST test images as PNGs."""
    from PIL import Image

    from training.data import load_dataset

    folder.mkdir(parents=True, exist_ok=True)
    images = load_dataset("fashion-mnist", "test").images[:count, ..., 0]
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return sorted(str(path) for path in folder.glob("*.png"))


def stored_conversion(folder: str) -> None:
    """Convert once and store it beside the export, as training.publish does for the store:
    every load below (the job's, the raw side's) then takes the same flatbuffer."""
    from contract.card import ModelCard
    from contract.layout import version_dir
    from contract.litert import Conversion, convert_and_verify
    from contract.runtime import cores

    path = version_dir(folder)
    if Conversion.load(path) is None:
        convert_and_verify(path, ModelCard.read(path), cores()).save(path)


def loaded(kind, folder: str, runtime: str, interpreters: int):
    from service.batch.models import load, parse
    from service.core import Settings

    settings = Settings(**{f"{kind.kind}_runtime": runtime}, interpreters=interpreters)
    return load(kind, parse(folder), settings)


def job(*args: str) -> float:
    """The job's own images/s (its summary: model load excluded, as on the raw side)."""
    from service.batch.cli import parser, run

    return run(parser().parse_args([*args, "--overwrite", "--no-progress"])).images_per_second


def raw_classify(model, files: list[str], threads: int) -> float:
    from service.batch.sources import read_bytes
    from service.core.images import decode

    runtime, size = model._runtime, model.image_size  # the pool the job's batcher runs, called directly

    def work(chunk: list[str]) -> None:
        for path in chunk:
            runtime.run({"images": decode(read_bytes(path), size, "image")[None]})

    return _timed_threads(work, files, threads)


def raw_generate(model, count: int, threads: int) -> float:
    from service.core.images import encode_png

    runtime, batch = model._runtime, model.settings.max_batch_size
    latents = np.random.RandomState(0).standard_normal((count, model.latent_dim)).astype(np.float32)
    class_ids = (np.arange(count) % len(model.classes)).astype(np.int32)

    def work(starts: list[int]) -> None:
        for start in starts:
            images = runtime.run({"latents": latents[start:start + batch], "class_ids": class_ids[start:start + batch]})
            [encode_png(image) for image in images["images"]]

    return _timed_threads(work, list(range(0, count, batch)), threads) * count / len(range(0, count, batch))


def _timed_threads(work, items: list, threads: int) -> float:
    chunks = [items[i::threads] for i in range(threads)]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, chunks))
    return len(items) / (time.perf_counter() - started)


def compare(raw, batch) -> tuple[float, float]:
    """Medians of alternating rounds of the two."""
    raws, jobs = [], []
    for _ in range(ROUNDS):
        raws.append(raw())
        jobs.append(batch())
    return statistics.median(raws), statistics.median(jobs)


def median(measure) -> float:
    return statistics.median(measure() for _ in range(ROUNDS))


def peak_run(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak resident memory (GiB) of a command and all its descendants, and its stdout."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak, parent = 0, psutil.Process(process.pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.2):
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                continue

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate(timeout=3600)
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}")
    return time.perf_counter() - started, peak / 2**30, output


def photo_folder(folder: Path, count: int) -> Path:
    """`count` files cycling through the photo corpus' 12-megapixel JPEGs (benchmarks/photo_corpus.py)."""
    from benchmarks.photo_corpus import corpus

    photos = [photo.path for photo in corpus() if photo.size == "12MP" and photo.format == "jpeg"]
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        shutil.copyfile(photos[index % len(photos)], folder / f"{index:04d}.jpg")
    return folder


def photo_classify(classifier: str, counts: list[int], work: Path) -> None:
    """`python -m service.batch classify` on folders of 12-MP photos: the job's rate (its summary)
    and the command's peak memory (TensorFlow's start included), which should not grow with the folder."""
    print(f"\n{'classify 12-MP JPEGs, whole command':40} {'files':>6} {'wall s':>7} {'job img/s':>10} {'peak GiB':>9}")
    for count in counts:
        folder = photo_folder(work / f"photos-{count}", count)
        seconds, peak, output = peak_run([sys.executable, "-m", "service.batch", "classify", str(folder), "--out",
                                          str(work / f"photos-{count}.parquet"), "--model", classifier, "--no-progress"])
        rate = float(re.search(r"\(([\d,.]+) images/s\)", output)[1].replace(",", ""))
        print(f"{'':40} {count:6d} {seconds:7.1f} {rate:10.1f} {peak:9.2f}")


def http_generate(classifier: str, generator: str, requests: int, concurrency: int, work: Path) -> float:
    """Images/s of POST /generate (64 images a request, PNGs in JSON) on a real `bentoml serve`."""
    import httpx

    from benchmarks.serving import Service

    with (work / "service.log").open("wb") as log:
        service = Service(classifier, generator, log)
        try:
            service.wait_ready()
            with httpx.Client(base_url=service.url, timeout=120) as client:
                def call(seed: int) -> None:
                    client.post("/generate", json={"count": 64, "seed": seed, "format": "json"}).raise_for_status()

                for seed in range(concurrency):
                    call(seed)  # warm up
                started = time.perf_counter()
                with ThreadPoolExecutor(concurrency) as pool:
                    list(pool.map(call, range(requests)))
                return 64 * requests / (time.perf_counter() - started)
        finally:
            service.close()


def main() -> None:
    add = (parser := argparse.ArgumentParser(description=__doc__.split("\n\n")[0])).add_argument
    add("--classifier", action="append", default=[], help="classifier folders (e.g. one at 96 px and one at 160 px)")
    add("--generator", required=True)
    add("--files", type=int, default=2000, help="real image files to classify (0: no classify rows)")
    add("--generate", type=int, default=5000, help="images to generate per measurement")
    add("--sizes", default="1000,10000,100000", help="Ray generate: the N to measure")
    add("--ray", action=argparse.BooleanOptionalAction, default=True, help="the Ray rows and sizes")
    add("--http-requests", type=int, default=50, help="HTTP /generate: requests of 64 images (0: none)")
    add("--photos", default="40,120", help="classify 12-MP photos with the first classifier: folder sizes ('': none)")
    add("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    from service.kinds import Classifier, Generator

    work = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    files = fashion_files(work / "files", args.files) if args.files else []
    rows = []
    for folder in args.classifier if files else []:
        stored_conversion(folder)
        engine, model = loaded(Classifier, folder, "litert", args.threads)
        command = ["classify", str(work / "files"), "--out", str(work / "out.parquet"), "--model", folder,
                   "--runtime", "litert", "--interpreters", str(args.threads)]
        raw, batch = compare(lambda model=model: raw_classify(model, files, args.threads),
                             lambda command=command: job(*command))
        engine.close()
        rows.append((f"classify {model.image_size} px, {len(files)} PNG files", raw, batch))
        if args.ray:
            ray = median(lambda command=command: job(*command, "--engine", "ray"))
            rows.append((f"  on Ray (local, {args.threads} actors)", batch, ray))
    stored_conversion(args.generator)
    engine, model = loaded(Generator, args.generator, "auto", args.threads)
    per_class = args.generate // len(model.classes)
    rounds = itertools.count()

    def generate(*extra: str) -> float:
        """Into a new folder each round, as a dataset is made: rewriting 5,000 PNGs in place
        costs ext4 a truncation per file, which took 23% of the job's profile samples here."""
        return job("generate", "--per-class", str(per_class), "--out", str(work / f"gen-{next(rounds)}"),
                   "--model", args.generator, "--interpreters", str(args.threads), *extra)

    raw, batch = compare(lambda: raw_generate(model, per_class * len(model.classes), args.threads), generate)
    rows.append((f"generate {per_class * len(model.classes)} PNGs ({model.info.runtime})", raw, batch))
    engine.close()
    if args.http_requests and args.classifier:
        served = http_generate(args.classifier[0], args.generator, args.http_requests, args.threads, work)
        rows.append((f"  HTTP /generate, 64 a request, c={args.threads}", raw, served))
    if args.ray:
        ray = median(lambda: generate("--engine", "ray"))
        rows.append((f"  on Ray (local, {args.threads} actors)", batch, ray))
    print(f"{'':44} {'reference img/s':>16} {'job img/s':>10} {'ratio':>6}")
    for name, reference, measured in rows:
        print(f"{name:44} {reference:16.1f} {measured:10.1f} {measured / reference:6.1%}")
    if args.photos and args.classifier:
        photo_classify(args.classifier[0], [int(count) for count in args.photos.split(",")], work)
    if args.ray:
        print(f"\n{'Ray generate, whole command':34} {'N':>8} {'wall s':>8} {'img/s':>8} {'peak GiB':>9}")
        for size in map(int, args.sizes.split(",")):
            command = [sys.executable, "-m", "service.batch", "generate", "--per-class",
                       str(size // len(model.classes)), "--out", str(work / f"ray-{size}"), "--model", args.generator,
                       "--engine", "ray", "--no-progress"]
            seconds, peak, _ = peak_run(command)
            print(f"{'':34} {size:8d} {seconds:8.1f} {size / seconds:8.1f} {peak:9.2f}")


if __name__ == "__main__":
    main()
