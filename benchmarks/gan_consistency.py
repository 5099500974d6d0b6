"""Class consistency as a user meets it: generated images, classified by the served classifier.

    python -m benchmarks.gan_consistency --classifier models/classifier/1 --generator models/generator/1
    python -m benchmarks.gan_consistency ... --psi default 1 0.9 0.8 0.7 0.6 0.5   # the trade-off

Each sample is the README's request with another seed: `{"seed": i, "class": i % classes}`,
i = 0 … samples − 1, one image each, drawn by the service's generator kind at the card's
default ψ (`default`, a request without ψ) or at a given ψ. Each image is encoded as the PNG
the HTTP API returns and classified from those bytes by the service's classifier kind, on the
runtime the service would pick; consistency is the share whose top-1 label is the requested
class. Both models are loaded in-process by the service's own engine: no HTTP needed, and
nothing between them that a request through HTTP would not also pass (PNG is lossless).
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

import numpy as np

from service.core import Settings
from service.core.engine import Engine
from service.core.images import encode_png
from service.kinds import KINDS, Classifier, Generator


def default_or_psi(text: str) -> float | None:
    """`default` (None: a request without ψ) or a number."""
    return None if text == "default" else float(text)


async def consistency(generator: Generator, classifier: Classifier, samples: int, psi: float | None) -> dict:
    """Generate the README request for seeds 0 … samples − 1, classify the PNGs, count the hits."""
    requested = [seed % len(generator.classes) for seed in range(samples)]
    generations = await asyncio.gather(*(generator.generate(1, seed, class_id, psi=psi)
                                         for seed, class_id in enumerate(requested)))
    pngs = [encode_png(generation.images[0]) for generation in generations]
    step = generator.settings.max_images
    scores = np.concatenate([(await classifier.score(pngs[start:start + step])).scores
                             for start in range(0, samples, step)])
    predicted = [classifier.labels[i] for i in scores.argmax(axis=1)]
    wanted = [generator.classes[i] for i in requested]
    misses = Counter((want, got) for want, got in zip(wanted, predicted) if want != got)
    return {"psi": generations[0].psi, "samples": samples,
            "consistency": sum(want == got for want, got in zip(wanted, predicted)) / samples,
            "misses": misses.most_common(3)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gan_consistency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", default="classifier:latest", help="store tag or SavedModel folder")
    parser.add_argument("--generator", default="generator:latest", help="store tag or SavedModel folder")
    parser.add_argument("--samples", type=int, default=1000, help="README requests, seeds 0 to N-1")
    parser.add_argument("--psi", type=default_or_psi, nargs="+", default=[None],
                        help="'default' (the card's, what a request without psi gets) and/or values in (0, 1]")
    args = parser.parse_args()
    engine = Engine(Settings(classifier=args.classifier, generator=args.generator), KINDS)
    engine.load()
    if not engine.ready:
        raise SystemExit("the models could not be loaded (the log above says why)")
    generator, classifier = engine.get(Generator), engine.get(Classifier)
    print(f"generator {generator.info.name}:{generator.info.version} (default ψ {generator.default_psi:g}), "
          f"classifier {classifier.info.name}:{classifier.info.version} on {classifier.info.runtime}")
    print("| ψ | samples | class consistency | most frequent misses (requested → classified) |")
    print("|---:|---:|---:|---|")
    try:
        for psi in args.psi:
            row = asyncio.run(consistency(generator, classifier, args.samples, psi))
            misses = ", ".join(f"{want} → {got} ({count})" for (want, got), count in row["misses"])
            default = " (default)" if psi is None else ""
            print(f"| {row['psi']:g}{default} | {row['samples']} | {row['consistency']:.1%} | {misses} |", flush=True)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
