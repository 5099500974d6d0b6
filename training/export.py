"""Export a trained classifier as a self-contained SavedModel.

The SavedModel is the exchange format: TF Serving, the diptych service and any
`tf.saved_model.load` user read it without our code. So everything a client would
otherwise have to reproduce — decoding, resizing, grey→RGB, the label names — lives in
the graph, and the model card beside it says what the model is and how good it is.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import keras
import tensorflow as tf

MODEL_CARD = "model_card.json"
LABELS_FILE = "labels.txt"


def next_version(out_dir: str | os.PathLike) -> int:
    """TF Serving reads integer version folders; a new export takes the next one."""
    root = Path(out_dir)
    versions = [int(p.name) for p in root.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def latest_version_dir(out_dir: str | os.PathLike) -> Path | None:
    """The highest-numbered export under `out_dir`, or None when there is none."""
    root = Path(out_dir)
    versions = [int(p.name) for p in root.glob("*") if p.is_dir() and p.name.isdigit()]
    return root / str(max(versions)) if versions else None


@contextlib.contextmanager
def new_version_folder(out_dir: str | os.PathLike) -> Iterator[tuple[Path, int]]:
    """Yield (staging folder, version) for the next export under `out_dir`.

    The export is written into a hidden temporary folder and renamed into place only when
    the block finishes, so a crash never leaves a half-written version that a server
    would pick up as the latest.
    """
    out_root = Path(out_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    version = next_version(out_root)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_root))
    try:
        yield staging, version
        staging.rename(out_root / str(version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def card_header(kind: str, name: str, version: int) -> dict:
    """The model card keys every kind of model shares (docs/architecture.md)."""
    return {"kind": kind, "name": name, "version": version,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


class ClassifierModule(tf.Module):
    """The serving graph: raw images in, class scores and their labels out.

    `model` maps float32 RGB 0–255 `[N, S, S, 3]` to softmax scores `[N, C]`.
    """

    def __init__(self, model: keras.Model, labels: list[str], image_size: int, labels_path: str):
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.labels_asset = tf.saved_model.Asset(labels_path)
        self.labels = tf.constant(labels)

    def _classify(self, rgb_uint8: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.image.resize(tf.cast(rgb_uint8, tf.float32), (self.image_size, self.image_size), antialias=True)
        scores = self.model(images, training=False)
        classes = tf.tile(self.labels[tf.newaxis, :], [tf.shape(scores)[0], 1])
        return {"scores": scores, "classes": classes}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def classify_bytes(self, image_bytes):
        """Encoded JPEG/PNG/BMP/GIF/WebP of any size and mode (grey, RGBA, CMYK, palette)."""

        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            image = tf.image.resize(image, (self.image_size, self.image_size), antialias=True)
            return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

        images = tf.map_fn(
            decode,
            image_bytes,
            fn_output_signature=tf.TensorSpec([self.image_size, self.image_size, 3], tf.uint8),
        )
        return self._classify(images)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8, name="images")])
    def classify_pixels(self, images):
        """A uint8 batch with 1 (grey) or 3 (RGB) channels, any height and width."""
        tf.debugging.assert_equal(
            tf.reduce_any(tf.equal(tf.shape(images)[-1], [1, 3])),
            True,
            message="images must have 1 (grey) or 3 (RGB) channels",
        )
        rgb = tf.cond(
            tf.equal(tf.shape(images)[-1], 1),
            lambda: tf.tile(images, [1, 1, 1, 3]),
            lambda: images,
        )
        return self._classify(tf.ensure_shape(rgb, [None, None, None, 3]))

    def classify_resized(self, images):
        """The numeric core alone: RGB already at the model's size, scores only.

        No string, decoding or resizing ops, so it converts to a LiteRT flatbuffer of
        builtin ops: the service decodes and resizes outside it (service/core/images.py).
        """
        return {"scores": self.model(tf.cast(images, tf.float32), training=False)}


def export_classifier(
    model: keras.Model,
    labels: list[str],
    image_size: int,
    out_dir: str | os.PathLike,
    card: dict,
) -> Path:
    """Write `out_dir/<next version>/` with the SavedModel, labels and model card.

    Written through `new_version_folder`: a crash leaves no half-written version.
    """
    with new_version_folder(out_dir) as (staging, version):
        labels_path = staging / LABELS_FILE
        labels_path.write_text("\n".join(labels) + "\n")
        module = ClassifierModule(model, labels, image_size, str(labels_path))
        tf.saved_model.save(
            module,
            str(staging),
            signatures={
                "serving_default": module.classify_bytes,
                "classify_pixels": module.classify_pixels,
                "classify_resized": tf.function(module.classify_resized, input_signature=[
                    tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name="images")]),
            },
        )
        labels_path.unlink()  # the SavedModel keeps its own copy under assets/
        full_card = {
            **card_header("classifier", card.get("name", "classifier"), version),
            "image_size": [image_size, image_size],
            "channels": 3,
            "labels": labels,
            "signatures": {
                "serving_default": "image_bytes: string [N] -> scores float32 [N, C], classes string [N, C]",
                "classify_pixels": "images: uint8 [N, H, W, 1|3] -> scores, classes",
                "classify_resized": f"images: uint8 [N, {image_size}, {image_size}, 3] -> scores",
            },
            **{k: v for k, v in card.items() if k != "name"},
        }
        (staging / MODEL_CARD).write_text(json.dumps(full_card, indent=2) + "\n")
    return Path(out_dir) / str(version)


def read_card(model_dir: str | os.PathLike) -> dict:
    return json.loads((Path(model_dir) / MODEL_CARD).read_text())
