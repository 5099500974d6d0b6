"""The serving core without a server: batching, settings, keys, image checks, requests."""

from __future__ import annotations

import asyncio
import io
import threading
import types

import numpy as np
import pytest
from PIL import Image

from service.core import Engine, LimitExceeded, NotReady, Overloaded, Settings, Unauthenticated, ValidationError
from service.core import validation
from service.core.auth import ApiKeys
from service.core.batching import Batcher
from service.core.images import decode, prepare, tile
from tests.conftest import eventually


def test_batcher_runs_a_lone_item_at_once_and_batches_what_piles_up():
    release, sizes = threading.Event(), []

    def run_batch(items):
        sizes.append(len(items))
        release.wait(5)
        return [item * 10 for item in items]

    batcher = Batcher(run_batch, max_batch_size=4)
    first = batcher.submit([1])  # runs alone, and blocks until released
    assert eventually(lambda: sizes, 10)
    rest = batcher.submit([2, 3, 4, 5, 6])  # piles up behind it
    release.set()
    assert [future.result(5) for future in first + rest] == [10, 20, 30, 40, 50, 60]
    assert sizes == [1, 4, 1]
    batcher.close()


def test_batcher_skips_cancelled_items_and_reports_errors_per_item():
    release, seen = threading.Event(), []

    def run_batch(items):
        seen.extend(items)
        release.wait(5)
        return [ValueError(item) if item == "bad" else item for item in items]

    batcher = Batcher(run_batch, max_batch_size=8)
    blocker = batcher.submit(["first"])
    assert eventually(lambda: seen, 10)
    gone, bad, good = batcher.submit(["gone", "bad", "good"])
    gone.cancel()
    release.set()
    assert blocker[0].result(5) == "first" and good.result(5) == "good"
    with pytest.raises(ValueError):
        bad.result(5)
    assert "gone" not in seen
    batcher.close()


def test_settings_from_file_then_environment(tmp_path):
    (tmp_path / "diptych.toml").write_text('max_images = 8\ngenerator = "models/generator/2"\n')
    (tmp_path / "keys").write_text("# comment\nsecret-two\n\n")
    settings = Settings.load({"DIPTYCH_CONFIG": str(tmp_path / "diptych.toml"), "DIPTYCH_MAX_IMAGES": "4",
                              "DIPTYCH_API_KEYS": "secret-one", "DIPTYCH_API_KEYS_FILE": str(tmp_path / "keys")})
    assert (settings.max_images, settings.generator, settings.classifier) == (4, "models/generator/2", "classifier:latest")
    assert settings.api_keys == ("secret-one", "secret-two")
    assert "secret" not in repr(settings)
    with pytest.raises(ValueError, match="max_pixels"):
        Settings.load({"DIPTYCH_MAX_PIXELS": "lots"})
    assert Settings().access_log is False
    assert Settings.load({"DIPTYCH_ACCESS_LOG": "True"}).access_log is True
    assert Settings.load({"DIPTYCH_ACCESS_LOG": "0"}).access_log is False
    with pytest.raises(ValueError, match="access_log: expected bool, got 'maybe'"):
        Settings.load({"DIPTYCH_ACCESS_LOG": "maybe"})
    with pytest.raises(ValueError, match="unknown settings: colour"):
        (tmp_path / "bad.toml").write_text('colour = "red"\n')
        Settings.load({"DIPTYCH_CONFIG": str(tmp_path / "bad.toml")})


def test_api_keys():
    ApiKeys(()).check(None)  # no keys: open
    keys = ApiKeys(("k1", "k2"))
    keys.check("Bearer k2")
    keys.check("bearer  k1 ")
    for header in (None, "", "k1", "Basic k1", "Bearer", "Bearer k3"):
        with pytest.raises(Unauthenticated):
            keys.check(header)


def encoded(fmt="PNG", size=(20, 10), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 0).save(buffer, format=fmt)
    return buffer.getvalue()


def test_prepare_checks_headers_only():
    for png in (encoded(), encoded("TIFF")):  # decoding is the batch workers' job (images.decode)
        assert prepare(png, "images[0]", 1000) is png
    with pytest.raises(LimitExceeded, match="20x10"):
        prepare(png, "images[3]", 100)
    for data in (b"", b"text, not an image"):
        with pytest.raises(ValidationError) as error:
            prepare(data, "images[1]", 1000)
        assert error.value.field == "images[1]"


@pytest.mark.filterwarnings("ignore:.*:UserWarning")  # Pillow notes what it skips in broken files
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"])
def test_corrupt_files_are_validation_errors(fmt):
    """Whatever the bytes, the answer is usable pixels or a ValidationError naming the field,
    never a crash. Half the files keep their length (bytes overwritten only), so that some
    pass the header check and reach the decoder."""
    rng = np.random.default_rng(0)
    data = encoded(fmt, size=(24, 16))
    tried = 0
    for index in range(100):
        corrupt = bytearray(data if index % 2 else data[: rng.integers(1, len(data) + 1)])
        for position in rng.integers(0, len(corrupt), 3):
            corrupt[position] = rng.integers(0, 256)
        try:
            assert prepare(bytes(corrupt), "images[0]", 10_000) == corrupt
            tried += 1  # the header passed: the decoder is next
            pixels = decode(bytes(corrupt), 8, "images[0]")
        except ValidationError as error:
            assert error.field == "images[0]" and error.problem, error
            continue
        assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    assert tried, "no corrupt file passed the header check: the decoder was never tried"


def test_tile_makes_grids_and_strips():
    images = np.arange(5 * 2 * 3 * 1, dtype=np.uint8).reshape(5, 2, 3, 1)
    assert tile(images).shape == (4, 9, 1)
    assert tile(images, columns=5).shape == (2, 15, 1)


GENERATOR = types.SimpleNamespace(latent_dim=4, classes=["cat", "dog", "bird"], conditional=True)


def test_generation_requests():
    plan = validation.generation(None, 3, None, None, GENERATOR, Settings())
    assert plan.latents.shape == (1, 4) and plan.seed == 3
    again = validation.generation(4, 3, "dog", None, GENERATOR, Settings())
    np.testing.assert_array_equal(again.latents[0], plan.latents[0])  # a seed's first latent does not depend on count
    assert again.class_ids.tolist() == [1, 1, 1, 1]
    assert validation.generation(4, None, None, None, GENERATOR, Settings()).class_ids.tolist() == [0, 1, 2, 0]
    assert validation.generation(None, None, "2", [[0.0] * 4], GENERATOR, Settings()).class_ids.tolist() == [2]
    for args, field in [((0, None, None, None), "count"), ((2, None, None, [[0.0] * 4]), "count"),
                        ((None, None, "fish", None), "class"), ((None, None, 3, None), "class"),
                        ((None, None, None, [[0.0] * 3]), "latents[0]"),
                        ((None, None, None, [[np.inf] * 4]), "latents")]:
        with pytest.raises(ValidationError) as error:
            validation.generation(*args, GENERATOR, Settings())
        assert error.value.field == field


def test_interpolation_walks_from_one_end_to_the_other():
    ends = [[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]]
    plan = validation.interpolation(None, ends, 5, "bird", GENERATOR, Settings())
    np.testing.assert_allclose(plan.latents[[0, -1]], ends, atol=1e-6)
    assert plan.class_ids.tolist() == [2] * 5
    with pytest.raises(ValidationError, match="between 2 and 32"):
        validation.interpolation([1, 2], None, 33, None, GENERATOR, Settings())


def test_engine_refuses_until_ready_and_when_loading_failed():
    engine = Engine(Settings(classifier="missing/classifier/1", max_concurrency=1))
    with pytest.raises(NotReady, match="still loading"):
        asyncio.run(engine.classify([encoded()]))
    engine.load()
    assert not engine.alive and not engine.ready
    with pytest.raises(NotReady, match="failed"):
        engine.models()
    with engine.admit():
        with pytest.raises(Overloaded):
            with engine.admit():
                pass
    with engine.admit():  # the slot was given back
        pass
