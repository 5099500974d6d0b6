"""The model repository in-process: version policies, labels, hot reload beside the old
version, drain before unload, broken versions, the memory budget, and the load/unload API,
on the tiny real models of `tiny_models` (copied into repository folders as versions)."""

from __future__ import annotations

import asyncio
import io
import shutil
import threading
from pathlib import Path

import numpy as np
import prometheus_client
import pytest
from PIL import Image

from service.core import Engine, NotFound, Settings, Unauthenticated, ValidationError
from service.core.control import SharedControl
from service.core.repository import ModelConfig, ModelRef, Policy
from service.kinds import KINDS, Classifier
from tests.conftest import eventually

FAST = dict(classifier_runtime="tensorflow", generator_runtime="tensorflow", warmup_rounds=0, interpreters=1,
            poll_s=0, store=False)


def png(value: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((28, 28), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def add_version(root: Path, name: str, number: int, source: Path) -> Path:
    """Copy an export in as version `number`, the way a user rolls out a version: files first,
    into a hidden folder, then one rename (a half-copied folder is never a version)."""
    staging = root / name / f".{number}.partial"
    shutil.copytree(source, staging)
    return staging.rename(root / name / str(number))


@pytest.fixture
def repository(tmp_path, tiny_models) -> Path:
    root = tmp_path / "models"
    for number in (1, 2):
        add_version(root, "shoes", number, tiny_models["classifier"])
    return root


def engine_for(root: Path, tiny_models, config_file: Path | None = None, **settings) -> Engine:
    engine = Engine(Settings(classifier=str(root / "shoes"), generator=str(tiny_models["generator"]),
                             model_root=str(root), **{**FAST, **settings}), KINDS,
                    config_file=str(config_file) if config_file else None)
    engine.load()
    return engine


def classify(engine: Engine, ref: str | None = None) -> str:
    return asyncio.run(engine.get(Classifier, ref).classify([png()], 1)).model.version


def versions(engine: Engine, name: str = "shoes") -> dict[int, str]:
    return {number: slot.state for number, slot in engine.status()[name].versions.items()}


def test_the_policy_says_which_versions_are_served(repository, tiny_models):
    add_version(repository, "shoes", 3, tiny_models["classifier"])
    for policy, served in [("latest:1", {3}), ("latest:2", {2, 3}), ("all", {1, 2, 3}), ("specific:1,3", {1, 3})]:
        engine = engine_for(repository, tiny_models, repository={"shoes": {"versions": policy}})
        try:
            assert engine.ready and set(versions(engine)) == served and set(versions(engine).values()) == {"available"}
            assert classify(engine) == str(max(served))  # no version named: the newest available
            assert classify(engine, f"shoes:{min(served)}") == str(min(served))
        finally:
            engine.close()


def test_labels_name_versions_and_never_an_unavailable_one(repository, tiny_models):
    engine = engine_for(repository, tiny_models, repository={
        "shoes": {"versions": "all", "labels": {"stable": 1, "canary": 2, "next": 7}}})
    try:
        assert classify(engine, "shoes@stable") == "1" and classify(engine, "shoes@canary") == "2"
        with pytest.raises(NotFound, match="version 7 is not available"):
            engine.get(Classifier, "shoes@next")
        with pytest.raises(NotFound, match=r"no label 'beta'; its labels: \['canary', 'next', 'stable'\]"):
            engine.get(Classifier, "shoes@beta")
        with pytest.raises(NotFound, match="no model named 'boots'"):
            engine.get(Classifier, "boots")
    finally:
        engine.close()


def test_a_new_version_is_loaded_beside_the_old_and_the_old_drains_first(repository, tiny_models):
    engine = engine_for(repository, tiny_models, timeout_s=600)  # the drain's bound: longer than this test
    try:
        assert versions(engine) == {2: "available"}
        old = engine.get(Classifier)
        with engine.admit():  # a request in flight on version 2 while version 3 arrives
            add_version(repository, "shoes", 3, tiny_models["classifier"])
            switch = threading.Thread(target=engine.manager.reconcile)
            switch.start()
            assert eventually(lambda: versions(engine).get(2) == "unloading", 120), versions(engine)
            assert list(engine.status()) == ["shoes", "generator"]  # the folder of versions names the model
            assert versions(engine)[3] == "available" and classify(engine) == "3"  # new requests: the new one
            assert asyncio.run(old.classify([png()], 1)).model.version == "2"  # the old one still answers
        switch.join(60)
        assert not switch.is_alive(), "a drain holds up no reload"
        assert eventually(lambda: versions(engine) == {3: "available"}, 60), versions(engine)
        with pytest.raises(RuntimeError, match="closed"):
            old.batcher.submit([png()])  # unloaded once its request left
    finally:
        engine.close()


def test_a_broken_new_version_never_serves_and_the_old_one_keeps_serving(repository, tiny_models, caplog):
    engine = engine_for(repository, tiny_models)
    try:
        broken = add_version(repository, "shoes", 3, tiny_models["classifier"])
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        failures = _sample("diptych_model_loads_total", {"model": "shoes", "outcome": "failed"})
        engine.manager.reconcile()
        slot = engine.status()["shoes"].versions[3]
        assert slot.state == "failed" and slot.reason.startswith("OSError: Cannot parse file"), slot.reason
        assert versions(engine) == {2: "available", 3: "failed"} and classify(engine) == "2"
        assert _sample("diptych_model_loads_total", {"model": "shoes", "outcome": "failed"}) == failures + 1
        assert _sample("diptych_model_versions", {"model": "shoes", "version": "3", "state": "failed"}) == 1
        assert f"could not be loaded from {broken}" in caplog.text
        engine.manager.reconcile()  # not tried again until it changes or a load asks for it
        assert _sample("diptych_model_loads_total", {"model": "shoes", "outcome": "failed"}) == failures + 1
    finally:
        engine.close()


def test_the_memory_budget_refuses_a_load_with_the_reason(repository, tiny_models):
    room = _weights_mb(tiny_models["generator"]) + 2.5 * _weights_mb(tiny_models["classifier"])
    engine = engine_for(repository, tiny_models, repository={"shoes": {"versions": "all"}},
                        memory_budget_mb=room)  # the generator and two classifier versions, not three
    try:
        assert versions(engine) == {1: "available", 2: "available"}
        add_version(repository, "shoes", 3, tiny_models["classifier"])
        engine.manager.reconcile()
        failed = [slot for slot in engine.status()["shoes"].versions.values() if slot.state == "failed"]
        assert failed and "would exceed memory_budget_mb" in failed[0].reason
    finally:
        engine.close()


def test_load_and_unload_on_request(repository, tiny_models):
    engine = engine_for(repository, tiny_models)
    try:
        asyncio.run(engine.load_model("shoes", 1))  # one chosen version, beside the policy's
        assert versions(engine) == {1: "available", 2: "available"} and classify(engine, "shoes:1") == "1"
        asyncio.run(engine.unload_model("shoes", 1))
        assert versions(engine).get(1) in ("unloading", None) and eventually(lambda: versions(engine) == {2: "available"})
        with pytest.raises(ValidationError, match="is a default model"):
            asyncio.run(engine.unload_model("shoes"))
        with pytest.raises(ValidationError, match="version 9 is not in the repository"):
            asyncio.run(engine.load_model("shoes", 9))
        with pytest.raises(NotFound):
            asyncio.run(engine.load_model("boots"))
    finally:
        engine.close()


def test_a_reloaded_config_changes_policies_and_labels(repository, tiny_models):
    engine = engine_for(repository, tiny_models)
    try:
        asyncio.run(engine.configure({"shoes": ModelConfig("shoes", policy=Policy(latest=None, specific=(1,)),
                                                           labels={"stable": 1})}))
        assert versions(engine).get(1) == "available" and classify(engine, "shoes@stable") == "1"
        assert versions(engine).get(2) in ("unloading", None)  # out of the routes now, closed once drained
        assert eventually(lambda: versions(engine) == {1: "available"}), versions(engine)
    finally:
        engine.close()


def test_the_load_api_is_privileged(tmp_path):
    with pytest.raises(Unauthenticated, match="load/unload API is off"):
        Engine(Settings(store=False), KINDS).check_admin(None)
    Engine(Settings(store=False, model_control=True), KINDS).check_admin(None)
    admin = Engine(Settings(store=False, admin_keys=("root-key",), api_keys=("user-key",)), KINDS)
    admin.check_admin("Bearer root-key")
    with pytest.raises(Unauthenticated):
        admin.check_admin("Bearer user-key")
    admin.keys.check("Bearer root-key")  # an admin key is an API key too


@pytest.mark.parametrize("text, ref", [
    ("shoes", ModelRef("shoes")), ("shoes:3", ModelRef("shoes", 3)), ("shoes@canary", ModelRef("shoes", None, "canary")),
])
def test_model_references(text, ref):
    assert ModelRef.parse(text) == ref and str(ref) == text


@pytest.mark.parametrize("text", ["", "shoes:", "shoes:x", "a@b@c", "shoes:3@stable", "two words"])
def test_bad_model_references_are_refused(text):
    with pytest.raises(ValidationError, match="name a model as name, name:version or name@label"):
        ModelRef.parse(text)


@pytest.mark.parametrize("text", ["latest:0", "latest:x", "newest", "specific:", "all:3"])
def test_bad_policies_are_refused(text):
    with pytest.raises(ValueError, match="use latest:N, all, or specific:V1,V2"):
        Policy.parse(text, "repository.shoes")


def _sample(name: str, labels: dict[str, str]) -> float:
    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


def _weights_mb(model: Path) -> float:
    return sum(path.stat().st_size for path in (model / "variables").glob("*")) / 2**20


def test_a_load_request_reaches_every_worker_through_the_shared_control(repository, tiny_models, tmp_path):
    """Two engines stand for two BentoML workers: a call reaches one, the other follows."""
    shared = tmp_path / "control.json"
    first, second = (Engine(Settings(classifier=str(repository / "shoes"), generator=str(tiny_models["generator"]),
                                     model_root=str(repository), **FAST), KINDS, SharedControl(shared))
                     for _ in range(2))
    try:
        first.load(), second.load()
        asyncio.run(first.load_model("shoes", 1))
        assert versions(first) == {1: "available", 2: "available"} and versions(second) == {2: "available"}
        second.manager.reconcile()  # its next pass over the repository
        assert versions(second) == {1: "available", 2: "available"}
        asyncio.run(second.configure({"shoes": ModelConfig("shoes", labels={"stable": 2})}))
        first.manager.reconcile()
        assert classify(first, "shoes@stable") == "2" and versions(first) == {2: "available"}
    finally:
        first.close(), second.close()


# -- traffic: a weighted, sticky split; a shadow; the payload log ----------------------------


def test_the_traffic_split_is_weighted_and_sticky_per_caller(repository, tiny_models):
    from service.core import context

    engine = engine_for(repository, tiny_models, repository={"shoes": {
        "versions": "all", "labels": {"stable": 1, "canary": 2}, "traffic": {"stable": 90, "canary": 10}}})
    try:
        def served(caller: str) -> str:
            context.begin(caller=caller)
            return engine.get(Classifier).info.version

        chosen = [served(f"caller-{index}") for index in range(2000)]
        assert 0.07 < chosen.count("2") / len(chosen) < 0.13  # 10% of the callers get the canary
        assert all(served(f"caller-{index}") == version for index, version in enumerate(chosen[:200]))  # sticky
        context.begin(caller=next(f"caller-{i}" for i, version in enumerate(chosen) if version == "2"))
        assert engine.get(Classifier, "shoes:1").info.version == "1"  # a named version beats the split
    finally:
        engine.close()


def test_a_shadow_gets_a_copy_whose_answers_are_counted_not_returned(repository, tiny_models, tmp_path):
    log = tmp_path / "payloads.jsonl"
    engine = engine_for(repository, tiny_models, payload_log=str(log), repository={"shoes": {
        "versions": "all", "labels": {"stable": 1, "canary": 2}, "traffic": {"stable": 100},
        "shadow": "canary", "log_sample": 1.0}})
    try:
        shadowed = {"model": "shoes", "version": "2", "outcome": "ok"}
        before = _sample("diptych_shadow_requests_total", shadowed)
        assert classify(engine) == "1"  # the answer is stable's
        assert eventually(lambda: _sample("diptych_shadow_requests_total", shadowed) == before + 1)
        assert eventually(lambda: len(_events(log)) == 4)  # stable's request and response, and the shadow's
        events = _events(log)
        request, response = (event for event in events if event["component"] == "predictor")
        shadow = [event for event in events if event["component"] == "shadow"]
        assert len({event["requestid"] for event in events}) == 1  # one request id throughout
        assert len({event["id"] for event in events}) == 4  # and an id of its own for each event
        assert (request["endpoint"], response["endpoint"]) == ("1", "1") and {e["endpoint"] for e in shadow} == {"2"}
        assert shadow[1]["type"] == "org.kubeflow.serving.inference.response" and shadow[1]["data"]["top1"]
        assert response["data"]["top1"][0]["label"] in tiny_models_labels(engine)
    finally:
        engine.close()


def _events(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def tiny_models_labels(engine: Engine) -> list[str]:
    return engine.get(Classifier, "shoes:1").labels


def test_the_config_file_is_read_again_when_it_changes(repository, tiny_models, tmp_path):
    """Labels and weights change by editing the file: the next pass applies them, no restart."""
    config = tmp_path / "diptych.toml"
    config.write_text('[repository.shoes]\nversions = "all"\nlabels = {stable = 1, canary = 2}\n'
                      'traffic = {stable = 100}\n')
    settings = Settings.load({"DIPTYCH_CONFIG": str(config)})
    engine = Engine(Settings(**{**settings.__dict__, "classifier": str(repository / "shoes"),
                                "generator": str(tiny_models["generator"]), "model_root": str(repository), **FAST}),
                    KINDS, config_file=str(config))
    engine.load()
    try:
        assert classify(engine) == "1"
        config.write_text('[repository.shoes]\nversions = "all"\nlabels = {stable = 2, canary = 1}\n'
                          'traffic = {stable = 100}\n')  # the rollback of a bad promotion: one line
        engine.manager.reconcile()
        assert classify(engine) == "2" and classify(engine, "shoes@canary") == "1"
        config.write_text('[repository.shoes]\nversions = "sometimes"\n')  # a mistake is not applied
        engine.manager.reconcile()
        assert classify(engine) == "2" and set(versions(engine)) == {1, 2}
    finally:
        engine.close()
