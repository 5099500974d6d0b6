"""What the service's decoding changes in the classifier's answers, against the graph's own preprocessing.

    python -m benchmarks.photo_accuracy --classifier models/classifier/1

1. Fashion-MNIST's test set, each image encoded as a client would send it: a 28-px PNG, a
   28-px JPEG (quality 85), and a 480x480 JPEG of the enlarged image (a photo of the item,
   large enough for DCT scaling to apply). Accuracy through the export's `serving_default`
   on the bytes (decoding and resizing in its graph) against the service's path: `images.decode`
   then `classify_resized`, the same numeric core. The JPEGs' DCT scaling is measured at the
   service's choice (decoding to ≥ 2× the model's size) and at ≥ 1× (cheaper, further from the graph).
2. The photo corpus (benchmarks/photo_corpus.py), every file: the classifier's top-5 through
   the service's decoding against the graph's (`tf.io.decode_image` + antialiased resize +
   round, as `serving_default` does; the EXIF-rotated file turned upright, which the graph
   does not do), and the largest score difference, at both scales.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Iterable
from unittest import mock

import numpy as np
from PIL import Image

from benchmarks.photo_corpus import corpus
from contract.runtime import SavedModelRuntime
from service.core import images
from service.core.models import locate

BATCH = 64
DRAFT_FACTORS = (images.DRAFT_FACTOR, 1)  # the service's choice, and the ≥ 1× scale it is weighed against
PHOTO_OF_ITEM = 480  # px: the enlarged Fashion-MNIST JPEG, scaled 1/2 at ≥ 2× and 1/4 at ≥ 1× for 96 px


def graph_pixels(data: bytes, size: int, upright: bool = True) -> np.ndarray:
    """`serving_default`'s preprocessing (training/export.py) on one file; `upright=False` turns
    the corpus' EXIF file (stored turned by 90°, which the graph ignores) as the service shows it."""
    import tensorflow as tf

    image = tf.image.resize(tf.io.decode_image(data, channels=3, expand_animations=False), (size, size),
                            antialias=True)
    pixels = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8).numpy()
    return pixels if upright else np.rot90(pixels, -1)


def service_pixels(data: bytes, size: int, draft_factor: int) -> np.ndarray:
    """The service's `images.decode`, with JPEGs decoded to ≥ `draft_factor` × `size`."""
    with mock.patch.object(images, "DRAFT_FACTOR", draft_factor):
        return images.decode(data, size, "image")


def scores_in_batches(run: Callable[[list], np.ndarray], items: list) -> np.ndarray:
    return np.concatenate([run(items[start : start + BATCH]) for start in range(0, len(items), BATCH)])


def client_files(pixels: np.ndarray) -> dict[str, list[bytes]]:
    """Each Fashion-MNIST image as a client would send it (see the module's docstring)."""
    def jpeg(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        return buffer.getvalue()

    grey = [Image.fromarray(item[..., 0]) for item in pixels]
    return {"png 28 px": [images.encode_png(item) for item in pixels],
            "jpeg 28 px": [jpeg(item) for item in grey],
            f"jpeg {PHOTO_OF_ITEM} px": [jpeg(item.resize((PHOTO_OF_ITEM,) * 2, Image.BICUBIC)) for item in grey]}


def fashion_accuracy(path: str, size: int, limit: int | None) -> None:
    from training.data import load_dataset

    test = load_dataset("fashion-mnist", split="test")
    labels = test.labels[:limit]
    graph = SavedModelRuntime(path)
    core = SavedModelRuntime(path, "classify_resized")

    def through_graph(files: list[bytes]) -> np.ndarray:
        return graph.run({"image_bytes": np.array(files, dtype=object)})["scores"]

    def through_service(draft_factor: int) -> Callable[[list[bytes]], np.ndarray]:
        return lambda files: core.run({"images": np.stack([service_pixels(data, size, draft_factor)
                                                           for data in files])})["scores"]

    print(f"\nFashion-MNIST test set ({len(labels)} images) at {size} px: accuracy through the graph's "
          "preprocessing and through the service's decoding, and how many answers (top-1) differ")
    print("| files | DCT scale | graph | service | difference (points) | top-1 changed |")
    print("|---|---|---:|---:|---:|---:|")
    for name, files in client_files(test.images[:limit]).items():
        reference = scores_in_batches(through_graph, files).argmax(-1)
        scaled = name == f"jpeg {PHOTO_OF_ITEM} px"  # the only files large enough for the two scales to differ
        for factor in DRAFT_FACTORS if scaled else DRAFT_FACTORS[:1]:
            answers = scores_in_batches(through_service(factor), files).argmax(-1)
            graph_accuracy, service_accuracy = 100 * np.mean(reference == labels), 100 * np.mean(answers == labels)
            scale = f"≥ {factor}×" if scaled else "—"
            print(f"| {name} | {scale} | {graph_accuracy:.2f}% | {service_accuracy:.2f}% | "
                  f"{service_accuracy - graph_accuracy:+.2f} | {np.sum(answers != reference)} |")


def top5_agreement(path: str, size: int) -> None:
    core = SavedModelRuntime(path, "classify_resized")
    photos = corpus()

    def scores(pixels: Iterable[np.ndarray]) -> np.ndarray:
        return core.run({"images": np.stack(list(pixels))})["scores"]

    graph = scores(graph_pixels(photo.data, size, photo.format != "jpeg-exif") for photo in photos)
    graph_top5 = np.argsort(-graph, axis=-1)[:, :5]
    print(f"\nThe corpus' {len(photos)} photos at {size} px: the classifier's top-5 through the service's "
          "decoding against the graph's preprocessing")
    print("| DCT scale | same top-1 | same top-5 (as a set) | same top-5 (in order) | largest score difference |")
    print("|---|---:|---:|---:|---:|")
    for factor in DRAFT_FACTORS:
        served = scores(service_pixels(photo.data, size, factor) for photo in photos)
        top5 = np.argsort(-served, axis=-1)[:, :5]
        same_set = sum(set(a) == set(b) for a, b in zip(top5, graph_top5))
        print(f"| ≥ {factor}× | {np.sum(top5[:, 0] == graph_top5[:, 0])} / {len(photos)} | {same_set} / {len(photos)} "
              f"| {np.sum((top5 == graph_top5).all(-1))} / {len(photos)} | {np.abs(served - graph).max():.4f} |")


def report(classifier: str, limit: int | None = None) -> None:
    info = locate(classifier)
    size = info.card.image_size[0]
    top5_agreement(info.path, size)
    fashion_accuracy(info.path, size, limit)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.photo_accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", default="classifier:latest", help="store tag or SavedModel folder")
    parser.add_argument("--limit", type=int, help="the first N test images only (default: all 10 000)")
    args = parser.parse_args()
    report(args.classifier, args.limit)


if __name__ == "__main__":
    main()
