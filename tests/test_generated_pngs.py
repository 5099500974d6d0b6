"""Generated images out as PNGs, and the bulk job's manifest lines: lossless through every
wire, and encoded off the critical path (#26): never on the event loop that HTTP and gRPC
share, and in a bulk job as soon as the model returns a part, not when the job's thread
gets round to it.

"Off the loop" is seen, not timed: the encoder is held until a callback on the event loop
has run. Encoding on the loop would hold the loop too, the callback would never run, and
the encoder's bounded wait would end unreleased.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

from proto.diptych.v1 import diptych_pb2 as pb
from service.batch import generate
from service.core import images
from service.kinds import Generator
from service.kinds.generator import Generation
from service.kinds.generator_wire import generated, generated_pb
from tests.conftest import toy_model

WAIT_S = 30  # the bounded wait of a held encoder: ends only when the code under test is wrong

SHAPES = {"grey": (28, 28, 1), "RGB": (28, 28, 3)}


def generation(shape: tuple[int, ...], count: int = 5) -> Generation:
    model = toy_model(Generator, latent_dim=4, classes=["a", "b"], conditional=True)
    model.close()
    pixels = np.random.default_rng(len(shape) + shape[-1]).integers(0, 256, (count, *shape), dtype=np.uint8)
    return Generation(model.info, pixels, np.zeros((count, 4), np.float32), np.zeros(count, np.int32),
                      ["a"] * count, 7, 1.0)


def decoded(png: bytes, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png))).reshape(shape)


@pytest.mark.parametrize("channels", SHAPES.values(), ids=SHAPES.keys())
def test_every_wire_returns_the_generators_exact_pixels(channels):
    result = generation(channels)
    http = json.loads(asyncio.run(generated(result, "json")).body)
    grpc = asyncio.run(generated_pb(result, pb.FORMAT_PNG))
    grid = asyncio.run(generated_pb(result, pb.FORMAT_GRID))
    for index, image in enumerate(result.images):
        np.testing.assert_array_equal(decoded(base64.b64decode(http["images"][index]["png"]), channels), image)
        np.testing.assert_array_equal(decoded(grpc.images[index].png, channels), image)
    height, width, _ = channels
    assert all(image.png == b"" for image in grid.images)
    np.testing.assert_array_equal(decoded(grid.grid, (2 * height, 3 * width, channels[-1]))[:height, :width],
                                  result.images[0])


@pytest.mark.parametrize("shape", [(1, 1), (3, 300), (300, 3), (2, 5, 2)])
def test_grey_pngs_of_odd_shapes_are_lossless(shape):
    """The grey writer's rows: one pixel, a wide image, a tall one, grey with alpha."""
    pixels = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(decoded(images.encode_png(pixels), shape), pixels)


@pytest.fixture
def held_encoder(monkeypatch):
    """encode_png that waits until the event loop has run a callback; returns the flag the
    loop's callback sets and the list of waits that ended unreleased."""
    loop_ran, unreleased, real = threading.Event(), [], images.encode_png

    def encode_png(pixels):
        if not loop_ran.wait(WAIT_S):
            unreleased.append(pixels.shape)
            loop_ran.set()  # one wait is proof enough: the images after it go through
        return real(pixels)

    monkeypatch.setattr(images, "encode_png", encode_png)
    return loop_ran, unreleased


@pytest.mark.parametrize("encode", [
    lambda result: generated(result, "json"), lambda result: generated(result, "grid"),
    lambda result: generated_pb(result, pb.FORMAT_PNG), lambda result: generated_pb(result, pb.FORMAT_GRID),
], ids=["http json", "http grid", "grpc pngs", "grpc grid"])
def test_http_and_grpc_encode_off_the_event_loop(held_encoder, encode):
    loop_ran, unreleased = held_encoder

    async def answer():
        asyncio.get_running_loop().call_soon(loop_ran.set)
        return await encode(generation(SHAPES["grey"]))

    asyncio.run(answer())
    assert unreleased == []


def test_a_bulk_part_is_encoded_as_soon_as_the_model_returns_it(monkeypatch, tmp_path):
    """Started, not finished: its PNGs are made while the job's thread is elsewhere (the
    runner finishes the part before and writes it while the model renders this one)."""
    encoded, real = threading.Event(), images.encode_png

    def encode_png(pixels):
        encoded.set()
        return real(pixels)

    monkeypatch.setattr(images, "encode_png", encode_png)
    model = toy_model(Generator, latent_dim=4, classes=["a", "b"], conditional=True)
    job = generate.Generate(tmp_path, per_class=3)
    try:
        started = job.start(model, job.items(model)[0])
        assert encoded.wait(WAIT_S), "the part's PNGs were not encoded until finish() was called"
        rows = job.finish(model, started)
    finally:
        model.close()
    assert [(row["class"], row["index"]) for row in rows] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1),
                                                               ("b", 2)]
    assert all(np.array_equal(decoded(row["png"], (2, 2)), np.zeros((2, 2), np.uint8)) for row in rows)


def test_a_manifest_line_is_the_rows_json_with_the_latent_back_exact(tmp_path):
    """The generate job writes its latents by a format of its own (json's float repr was a third
    of the job's time): the same row, and every float32 back bit for bit."""
    latent = np.random.default_rng(2).standard_normal(64).astype(np.float32)
    latent[:5] = [1e-45, 3.4028235e38, -1.1754944e-38, 1e-9, 0.0]
    row = {"path": "T-shirt%2Ftop/3.png", "class": "T-shirt/top", "index": 3, "latent": latent.tolist(),
           "sha256": "ab" * 32, "version": "1"}
    loaded = json.loads(generate.Generate(tmp_path).line(row))
    assert {**loaded, "latent": None} == {**row, "latent": None}
    np.testing.assert_array_equal(np.float32(loaded["latent"]).view(np.uint32), latent.view(np.uint32))
