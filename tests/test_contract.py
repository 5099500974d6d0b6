"""The model contract between training and serving (`contract/`), and model kinds as
plugins: a third kind, written here, is served by the unchanged core and tensor protocols."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from contract.card import SCHEMA, CardError, ModelCard
from contract.checks import judge, measure
from contract.latents import check_psi, seeded_class_ids, seeded_latents, truncated_latents
from contract.layout import latest_version_dir, new_version_folder, resolve, version_dir, versions
from contract.litert import Conversion, save_calibration
from contract.signatures import signature_defs, signatures, signatures_of
from service import v2
from service.core import Engine, NotFound, ServedModel, Settings
from service.kinds import KINDS, Generator

CARD = {"kind": "classifier", "name": "shoes", "version": 3, "image_size": [32, 32], "channels": 3,
        "numeric_signature": "classify_resized", "tolerance": 1e-4, "labels": ["a", "b"], "schema": SCHEMA}


# -- the card ---------------------------------------------------------------------------------


def test_a_card_round_trips_through_its_json(tmp_path):
    card = ModelCard.parse(CARD, "test")
    assert card.image_size == (32, 32) and card.labels == ["a", "b"] and card.latent_dim is None
    card.write(tmp_path)
    written = json.loads((tmp_path / "model_card.json").read_text())
    assert written == {**CARD, "created": "", "signatures": {}, "metrics": {}, "training": {}}  # no null fields
    assert ModelCard.read(tmp_path) == card


@pytest.mark.parametrize("change, problem", [
    ({"schema": None}, "schema 1; this diptych reads schema 2: export the model again"),
    ({"schema": 3}, "schema 3; this diptych reads schema 2"),
    ({"colour": "red"}, "unknown model card fields ['colour']"),
    ({"version": "3"}, "field 'version' must be int, got '3'"),
    ({"version": True}, "field 'version' must be int"),
    ({"image_size": [32]}, "field 'image_size' must be tuple[int, int]"),
    ({"labels": ["a", 2]}, "field 'labels' must be list[str] | None"),
    ({"tolerance": "small"}, "field 'tolerance' must be float"),
    # past the documented bounds (contract.card.BOUNDS): refused before anything is allocated
    ({"image_size": [20000, 20000]}, "field 'image_size' is (20000, 20000); each value must be within 1 to 2048"),
    ({"image_size": [0, 32]}, "field 'image_size' is (0, 32)"),
    ({"channels": 1000}, "field 'channels' is 1000"),
    ({"version": 2**63}, "field 'version' is 9223372036854775808"),
    ({"tolerance": float("nan")}, "field 'tolerance' is nan"),
    ({"labels": []}, "field 'labels' has 0 entries; 1 to 100000 are allowed"),
    ({"latent_dim": 10**9}, "field 'latent_dim' is 1000000000"),
    ({"max_batch": 0}, "field 'max_batch' is 0"),
])
def test_a_card_it_cannot_read_is_refused_with_the_reason(tmp_path, change, problem):
    data = {key: value for key, value in {**CARD, **change}.items() if value is not None}
    (tmp_path / "model_card.json").write_text(json.dumps(data))
    with pytest.raises(CardError) as error:
        ModelCard.read(tmp_path)
    assert str(error.value).startswith(str(tmp_path / "model_card.json")) and problem in str(error.value)


def test_a_missing_or_broken_card_file_is_a_card_error(tmp_path):
    with pytest.raises(CardError, match="no model card"):
        ModelCard.read(tmp_path)
    (tmp_path / "model_card.json").write_text("{not json")
    with pytest.raises(CardError, match="not readable JSON"):
        ModelCard.read(tmp_path)
    (tmp_path / "model_card.json").write_text(json.dumps({k: v for k, v in CARD.items() if k != "tolerance"}))
    with pytest.raises(CardError, match=r"fields missing: \['tolerance'\]"):
        ModelCard.read(tmp_path)


def test_a_kind_says_which_optional_fields_it_needs():
    card = ModelCard.parse(CARD, "test")
    card.require("labels")
    with pytest.raises(CardError, match=r"classifier card of shoes:3 lacks \['latent_dim', 'classes'\]"):
        card.require("latent_dim", "classes")


# -- the layout -------------------------------------------------------------------------------


def test_version_folders_and_folder_or_parent(tmp_path):
    for version in ("1", "10", "2", "not-a-version"):
        (tmp_path / version).mkdir()
    (tmp_path / "10" / "saved_model.pb").write_bytes(b"")
    assert versions(tmp_path) == [1, 2, 10] and latest_version_dir(tmp_path) == tmp_path / "10"
    assert version_dir(tmp_path) == tmp_path / "10" == version_dir(tmp_path / "10")
    assert resolve(str(tmp_path)) == (tmp_path / "10", None, None)  # a folder: the card names it
    with pytest.raises(FileNotFoundError, match="no saved_model.pb here, nor numbered version folders"):
        version_dir(tmp_path / "not-a-version")


def test_a_new_version_appears_only_when_complete(tmp_path):
    with pytest.raises(RuntimeError):
        with new_version_folder(tmp_path) as (staging, version):
            assert version == 1 and staging.parent == tmp_path and staging.name.startswith(".")
            (staging / "saved_model.pb").write_bytes(b"half")
            raise RuntimeError("crashed mid-export")
    assert list(tmp_path.iterdir()) == []  # nothing half-written for a server to pick up
    with new_version_folder(tmp_path) as (staging, version):
        (staging / "saved_model.pb").write_bytes(b"whole")
    assert version == 1 and (tmp_path / "1" / "saved_model.pb").read_bytes() == b"whole"


# -- what the generator's graph and the service share ---------------------------------------------


def test_seeded_latents_are_the_same_in_a_graph_and_eagerly():
    @tf.function(input_signature=[tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int32),
                                  tf.TensorSpec([], tf.int32)])
    def graph(seed, count, class_id):
        return seeded_latents(seed, count, 6), seeded_class_ids(class_id, count, 4)

    for seed in (0, 42, 2**32 - 1):  # the largest seed the service takes: an int64 in the graph
        latents, class_ids = graph(tf.constant(seed, tf.int64), tf.constant(5), tf.constant(-1))
        np.testing.assert_array_equal(latents.numpy(), seeded_latents(seed, 5, 6).numpy())
        assert class_ids.numpy().tolist() == seeded_class_ids(-1, 5, 4).numpy().tolist() == [0, 1, 2, 3, 0]
    assert seeded_class_ids(2, 3, 4).numpy().tolist() == [2, 2, 2]



def test_truncated_latents_stay_within_two_psi_and_are_fixed_by_the_seed():
    for psi in (1.0, 0.7, 0.05):
        latents = truncated_latents(7, 500, 16, psi)
        assert latents.dtype == np.float32 and latents.shape == (500, 16)
        assert np.abs(latents).max() <= np.float32(2 * psi)
        np.testing.assert_array_equal(latents, truncated_latents(7, 500, 16, psi))  # the same seed, the same latents
    one = truncated_latents(7, 500, 16, 1.0)
    np.testing.assert_allclose(truncated_latents(7, 500, 16, 0.5), 0.5 * one, rtol=1e-6)  # ψ only scales
    np.testing.assert_array_equal(truncated_latents(7, 1, 16), one[:1])  # the first row does not depend on count
    assert not np.array_equal(truncated_latents(8, 1, 16), one[:1])
    # The truncation resamples only what lies beyond ±2: the rest is a standard normal's draw.
    plain = np.random.RandomState(7).standard_normal(16)
    inside = np.abs(plain) <= 2
    np.testing.assert_allclose(one[0][inside], plain[inside], rtol=1e-6)
    assert 0.85 < one.std() < 0.9  # a standard normal truncated at ±2 has σ 0.88


@pytest.mark.parametrize("psi", [0, -0.5, 1.01, float("nan"), float("inf"), True, "0.5", None])
def test_psi_outside_zero_to_one_is_refused(psi):
    with pytest.raises(ValueError, match=r"must be a number in \(0, 1\]"):
        check_psi(psi)
    assert check_psi(1) == 1.0 and check_psi(np.float32(0.25)) == 0.25


def test_a_stored_report_without_its_digest_is_not_trusted(tmp_path):
    Conversion(b"flatbuffer", {"verified": True, "reason": "ok", "sha256": "0" * 64}).save(tmp_path)
    stored = Conversion.load(tmp_path)
    assert not stored.verified and "sha256 differs" in stored.report["reason"]


EMBEDDING = np.array([[0.5, 0.5000001], [1.0, 2.0]], np.float32)
SWAPPED = np.array([[0.5000002, 0.5000001], [1.0, 2.0]], np.float32)  # row 0's larger entry swaps, 1e-7 apart


def test_the_kinds_check_judges_the_conversion_not_the_outputs_shape():
    """An embedding is a 2-D float output like a classifier's scores: within the tolerance it
    passes the `tolerance` check although its arg-max moved; `top-1` (a classifier's) refuses
    that, and a difference beyond the tolerance fails both."""
    close = measure({"embedding": EMBEDDING}, {"embedding": SWAPPED})
    assert close["top1_agreement"] == 0.5 and close["max_difference"] < 1e-6
    assert judge(close, 1e-6, "tolerance", "x") == {**close, "tolerance": 1e-6, "check": "tolerance",
                                                    "verified": True, "reason": "agrees with TensorFlow on x"}
    refused = judge(close, 1e-6, "top-1", "x")
    assert not refused["verified"] and refused["reason"] == "top-1 differs on 50% of the inputs"
    far = measure({"embedding": EMBEDDING}, {"embedding": EMBEDDING + np.float32(1e-3)})
    assert far["top1_agreement"] == 1.0
    for check in ("tolerance", "top-1"):
        beyond = judge(far, 1e-6, check, "x")
        assert not beyond["verified"] and beyond["reason"] == "largest output difference 0.001 is over 1e-06"
    with pytest.raises(ValueError, match="'cosine' is not a conversion check: one of tolerance, top-1"):
        judge(close, 1e-6, "cosine", "x")


def test_a_stored_conversion_is_judged_again_by_the_serving_kinds_check(tmp_path):
    """training.publish knows no kind and judges by the strictest check; the service judges the
    stored measurements again by its kind's, and the flatbuffer a check refused was kept."""
    measured = measure({"embedding": EMBEDDING}, {"embedding": SWAPPED})
    report = {**judge(measured, 1e-6, "top-1", "2 inputs"), "calibration": "2 inputs", "sha256": hashlib.sha256(b"flat").hexdigest()}
    Conversion(b"flat", report).save(tmp_path)
    stored = Conversion.load(tmp_path)
    assert not stored.verified and stored.judged("top-1") is stored
    embedding = stored.judged("tolerance")
    assert embedding.verified and embedding.flatbuffer == b"flat" and embedding.report["check"] == "tolerance"
    assert embedding.report["reason"] == "agrees with TensorFlow on 2 inputs"
    failed = Conversion(None, {"verified": False, "reason": "the converter failed"})  # nothing measured
    assert failed.judged("tolerance") is failed


# -- a third kind: the core, the registry and the tensor protocols, unchanged ---------------------


class Doubler(ServedModel):
    """A throwaway kind: `x` float32 [N, 3] in, `y` = 2x out. This class is all a kind needs."""

    kind = "doubler"
    tensor_runners = {frozenset({"x"}): "double"}

    async def double(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"y": np.stack(await self.infer(list(x)))}

    def example(self, size: int) -> dict[str, np.ndarray]:
        return {"x": np.zeros((size, 3), np.float32)}

    def run_batch(self, items: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.run({"x": np.stack(items)})["y"])


class DoublerModule(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def double(self, x):
        return {"y": 2 * x}


@pytest.fixture(scope="module")
def doubler(tmp_path_factory) -> Path:
    """A doubler exported as a trainer of that kind would: SavedModel, calibration, card."""
    with new_version_folder(tmp_path_factory.mktemp("doubler")) as (folder, version):
        module = DoublerModule()
        tf.saved_model.save(module, str(folder), signatures={"serving_default": module.double})
        save_calibration(folder, {"x": np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)})
        ModelCard.new(kind="doubler", name="doubler", version=version, image_size=(1, 1), channels=1,
                      numeric_signature="serving_default", tolerance=1e-6).write(folder)
    return folder.parent / str(version)


def test_a_third_kind_is_one_class_and_one_registration_line(doubler, tiny_models):
    kinds = {**KINDS, Doubler.kind: Doubler}  # the registration line
    settings = Settings(classifier=str(tiny_models["classifier"]), generator=str(tiny_models["generator"]),
                        repository={"doubler": {"path": str(doubler)}}, interpreters=1, warmup_rounds=1)
    engine = Engine(settings, kinds)
    engine.load()
    try:
        assert engine.ready, "every model, the third kind's too, loads and warms up"
        info = engine.find("doubler").info
        assert info.kind == "doubler" and info.conversion["verified"] is True, info.conversion  # converted, and proven
        x = np.arange(12, dtype=np.float32).reshape(4, 3)
        answer = asyncio.run(v2.infer(engine, v2.Request("doubler", "", "id-1", {"x": x}, [])))
        assert answer.version == "1" and answer.id == "id-1"
        np.testing.assert_array_equal(answer.outputs["y"], 2 * x)
        metadata = v2.model_metadata(engine, "doubler")
        assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
        assert [model.name for model in engine.models()] == ["classifier", "generator", "doubler"]
        with pytest.raises(NotFound, match="doubler is a doubler, not a generator"):
            engine.get(Generator, "doubler")
    finally:
        engine.close()


def test_a_model_of_an_unregistered_kind_is_refused_at_load(doubler, tiny_models, caplog):
    settings = Settings(classifier=str(tiny_models["classifier"]), generator=str(tiny_models["generator"]),
                        repository={"doubler": {"path": str(doubler)}}, warmup_rounds=0)
    engine = Engine(settings, KINDS)
    engine.load()
    engine.close()
    assert engine.ready, "a broken extra model costs no readiness: the defaults serve"
    assert "holds a model of kind 'doubler'; this service serves ['classifier', 'generator']" in caplog.text
    assert engine.status()["doubler"].versions[1].state == "failed"


def test_signatures_are_read_without_loading_the_model(doubler):
    served = signatures(doubler)
    assert list(served) == ["serving_default"]
    assert served["serving_default"].inputs["x"].shape == (-1, 3)
    # what a version holds once loaded (ServedModel.load), read from its SignatureDefMap alone
    assert signatures_of(signature_defs(doubler))["serving_default"].outputs["y"].dtype == np.float32
