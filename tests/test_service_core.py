"""The serving core without a server: batching, settings, keys, image checks, requests."""

from __future__ import annotations

import io
import threading

import numpy as np
import prometheus_client
import pytest
from PIL import Image

from contract.card import CardError
from contract.latents import truncated_latents
from service.core import (
    Engine,
    LimitExceeded,
    NotReady,
    Overloaded,
    ServedModel,
    Settings,
    Unauthenticated,
    ValidationError,
)
from service.core.auth import ApiKeys
from service.core.batching import Batcher
from service.core.images import decode, prepare, tile
from service.core.models import SHADOW_BATCHES
from service.kinds import KINDS, Classifier, Generator
from tests.conftest import eventually, toy_model


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


@pytest.fixture
def generator():
    model = toy_model(Generator, latent_dim=4, classes=["cat", "dog", "bird"], conditional=True)
    yield model
    model.close()


def test_generation_requests(generator):
    plan = generator.plan(None, 3, None, None)
    assert plan.latents.shape == (1, 4) and plan.seed == 3
    again = generator.plan(4, 3, "dog", None)
    np.testing.assert_array_equal(again.latents[0], plan.latents[0])  # a seed's first latent does not depend on count
    assert again.class_ids.tolist() == [1, 1, 1, 1]
    assert generator.plan(4, None, None, None).class_ids.tolist() == [0, 1, 2, 0]
    assert generator.plan(None, None, "2", [[0.0] * 4]).class_ids.tolist() == [2]
    for args, field in [((0, None, None, None), "count"), ((2, None, None, [[0.0] * 4]), "count"),
                        ((None, None, "fish", None), "class"), ((None, None, 3, None), "class"),
                        ((None, None, None, [[0.0] * 3]), "latents[0]"),
                        ((None, None, None, [[np.inf] * 4]), "latents")]:
        with pytest.raises(ValidationError) as error:
            generator.plan(*args)
        assert error.value.field == field


def test_seeded_latents_are_truncated_at_the_requested_psi_or_the_cards(generator):
    assert generator.default_psi == 1.0  # a card without a measured ψ: the truncation alone
    plan = generator.plan(8, 5, None, None)
    assert plan.psi == 1.0 and np.abs(plan.latents).max() <= 2
    np.testing.assert_array_equal(plan.latents, truncated_latents(5, 8, 4, 1.0))  # what the evaluation measures
    half = generator.plan(8, 5, None, None, psi=0.5)
    assert half.psi == 0.5 and half.seed == 5
    np.testing.assert_allclose(half.latents, 0.5 * plan.latents, rtol=1e-6)
    np.testing.assert_array_equal(generator.latents_for_seed(5, 8, 0.5), half.latents)
    ends = generator.plan_interpolation([5, 6], None, 3, None, psi=0.5)
    np.testing.assert_allclose(ends.latents[0], half.latents[0], rtol=1e-6)
    assert ends.psi == 0.5


def test_a_request_without_psi_gets_the_cards_default():
    model = toy_model(Generator, latent_dim=4, classes=["cat", "dog"], conditional=True, truncation_psi=0.6)
    try:
        assert model.default_psi == 0.6
        default, one = model.plan(4, 9, None, None), model.plan(4, 9, None, None, psi=1)
        assert default.psi == 0.6 and one.psi == 1.0
        np.testing.assert_allclose(default.latents, 0.6 * one.latents, rtol=1e-6)
        assert np.abs(default.latents).max() <= np.float32(1.2) < np.abs(one.latents).max()
        assert model.plan_interpolation([9, 10], None, 2, None).psi == 0.6
    finally:
        model.close()


def test_a_card_with_a_psi_outside_zero_to_one_is_refused():
    with pytest.raises(CardError, match=r"truncation_psi must be a number in \(0, 1\], got 1.5"):
        toy_model(Generator, latent_dim=4, classes=["cat"], conditional=True, truncation_psi=1.5)


@pytest.mark.parametrize("psi", [0, -1, 1.5, float("nan"), True])
def test_psi_outside_zero_to_one_is_refused_naming_the_field(generator, psi):
    for plan in (lambda: generator.plan(2, 1, None, None, psi),
                 lambda: generator.plan_interpolation([1, 2], None, 3, None, psi),
                 lambda: generator.latents_for_seed(1, 2, psi)):
        with pytest.raises(ValidationError) as error:
            plan()
        assert error.value.field == "psi" and "(0, 1]" in error.value.problem


def test_given_latents_are_never_changed_by_psi(generator):
    latents = [[3.0, -4.0, 0.5, 0.0]]  # beyond any truncation: used as they are
    plan = generator.plan(None, None, None, latents)
    np.testing.assert_array_equal(plan.latents, latents)
    assert plan.psi is None and plan.seed is None
    ends = generator.plan_interpolation(None, [latents[0], [0.0, 1.0, 0.0, 0.0]], 2, None)
    np.testing.assert_allclose(ends.latents[0], latents[0], rtol=1e-6)
    for plan in (lambda: generator.plan(None, None, None, latents, 0.5),
                 lambda: generator.plan_interpolation(None, [latents[0], latents[0]], 2, None, 0.5)):
        with pytest.raises(ValidationError, match="drawn from a seed") as error:
            plan()
        assert error.value.field == "psi"


def test_interpolation_walks_from_one_end_to_the_other(generator):
    ends = [[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]]
    plan = generator.plan_interpolation(None, ends, 5, "bird")
    np.testing.assert_allclose(plan.latents[[0, -1]], ends, atol=1e-6)
    assert plan.class_ids.tolist() == [2] * 5
    with pytest.raises(ValidationError, match="between 2 and 32"):
        generator.plan_interpolation([1, 2], None, 33, None)


def test_engine_refuses_until_ready_and_when_loading_failed():
    engine = Engine(Settings(classifier="missing/classifier/1", max_concurrency=1), KINDS)
    with pytest.raises(NotReady, match="still loading"):
        engine.get(Classifier)
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


def test_label_drift_is_the_population_stability_index_of_a_window():
    from service.kinds.classifier_drift import MIN_SAMPLES, LabelDrift, psi

    assert psi([100, 100], [50, 50]) == pytest.approx(0.0)
    assert psi([100, 100], [90, 10]) == pytest.approx((0.9 - 0.5) * np.log(0.9 / 0.5) + (0.1 - 0.5) * np.log(
        0.1 / 0.5), rel=0.05)  # smoothing (half a count a class) moves it a little
    reported = []
    drift = LabelDrift([500, 500], reported.append, window=200)
    drift.observe([0, 1] * (MIN_SAMPLES // 2 - 1))
    assert reported == []  # too few to say anything
    drift.observe([0, 1])
    assert reported[-1] == pytest.approx(0.0, abs=1e-9)
    drift.observe([0] * 200)  # the window has slid: only class 0 now
    assert reported[-1] == pytest.approx(psi([500, 500], [200, 0]))
    assert reported[-1] > 0.25  # the shipped alert's threshold


def test_json_log_lines_are_one_object_a_line():
    import json
    import logging

    from service import logs

    handler, records = logging.StreamHandler(), []
    handler.emit = lambda record: records.append(handler.format(record))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        logs.configure("json")
        logging.getLogger("diptych").info("classifier %s:%s loaded", "shoes", 3)
        try:
            raise ValueError("broken")
        except ValueError:
            logging.getLogger("diptych").exception("a failure")
    finally:
        root.removeHandler(handler)
    first, second = map(json.loads, records)
    assert first["level"] == "INFO" and first["logger"] == "diptych" and first["message"] == "classifier shoes:3 loaded"
    assert first["time"].endswith("+00:00") and isinstance(first["process"], int)
    assert second["level"] == "ERROR" and "ValueError: broken" in second["exception"]
    with pytest.raises(ValueError, match="log_format must be text or json"):
        Settings(log_format="xml")


class Stalled(ServedModel):
    """A model whose batches wait for `release`: its queue fills as a stuck shadow's would."""

    kind = "stalled"

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.release = threading.Event()

    def run_batch(self, items: list) -> list:
        self.release.wait(60)
        return list(items)


def test_a_shadow_whose_queue_is_full_drops_the_copy_and_counts_it():
    """Copies take no request slot: without a bound a slow shadow's queue grew without end."""
    shadow = toy_model(Stalled, Settings(max_batch_size=2, interpreters=1))
    dropped = {"model": "toy", "version": "1", "outcome": "dropped"}
    before = prometheus_client.REGISTRY.get_sample_value("diptych_shadow_requests_total", dropped) or 0.0
    try:
        for _ in range(50):
            shadow.mirror([b"item"])
        assert shadow.batcher.depth <= SHADOW_BATCHES * 2
        assert prometheus_client.REGISTRY.get_sample_value("diptych_shadow_requests_total", dropped) - before >= 50 - (
            SHADOW_BATCHES * 2 + 2)  # the bound waiting, and at most one batch of 2 running
    finally:
        shadow.release.set()
        shadow.close()
