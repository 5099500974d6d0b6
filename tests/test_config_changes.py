"""Config changes are checked whole, then applied at once or not at all (docs/repository.md,
"Changes are checked whole"): the one check of a model's table, the folders a request may
name, and what the repository holds (a change never leaves a default model without a
version), on a real engine over a repository folder of the tiny models. Each refused change
is seen to change nothing: the versions and their states, readiness and the config."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
from starlette.requests import Request

from contract.layout import ascii_number
from service.core import Conflict, Engine, Forbidden, NotFound, UnsupportedMediaType, ValidationError
from service.core.repository import ModelConfig, Policy
from service.http.v2rest import _json_object
from tests.conftest import eventually
from tests.test_repository import add_version, classify, engine_for, repository, versions  # noqa: F401

SHOES = {"versions": "all", "labels": {"stable": 1, "canary": 2}, "traffic": {"stable": 100}}


@pytest.mark.parametrize("table, where", [
    ({"labels": {"2": 1}}, "labels: '2'"),  # it would hide version 2
    ({"labels": {"two words": 1}}, "labels: 'two words'"),
    ({"labels": {"stable": -1}}, "labels.stable: -1"),
    ({"traffic": {"nothing": 10}}, "traffic.nothing: 'nothing' is neither a label"),
    ({"traffic": {"²": 10}}, "traffic.²"),
    ({"traffic": {"1": -5}}, "traffic.1: -5"),
    ({"traffic": {"1": 10**30}}, "traffic.1: 1000000000000000000000000000000"),
    ({"traffic": {"1": True}}, "traffic.1: True"),
    ({"traffic": {"1": 0}}, "traffic: the weights add up to 0"),
    ({"shadow": "nobody"}, "shadow: 'nobody' is neither"),
    ({"shadow": ["1"]}, "shadow: a label or a version number"),
    ({"versions": "specific:-1"}, "versions = 'specific:-1'"),
    ({"versions": "specific:²"}, "versions = 'specific:²'"),
    ({"versions": "latest:" + "9" * 30}, "versions = 'latest:999"),
    ({"log_sample": 2}, "log_sample"),
    ({"log_thumbnails": "false"}, "log_thumbnails: true or false"),
    ({"feedback": 1}, "feedback: true or false"),
    ({"path": 5}, "path: a folder"),
    ({"path": "/m/\x00"}, "path: '/m/\\x00' holds U+0000, a control character"),  # realpath() raised: a 500
    ({"path": "/m/\ud800"}, "path: '/m/\\ud800' holds U+D800"),
    ({"colour": "red"}, "unknown keys ['colour']"),
    ({**SHOES, "promote": 500}, "promote: a table {after = 500, max_p = 0.05}"),
    ({**SHOES, "promote": {"after": 500, "alpha": 0.05}}, "promote: a table {after = 500, max_p = 0.05}: "
                                                          "labelled answers per look, and the chance of a wrong "
                                                          "decision (unknown keys ['alpha'])"),
    ({**SHOES, "promote": {"after": 0}}, "promote.after: 0: a whole number of labelled answers from 1"),
    ({**SHOES, "promote": {"after": 10.5}}, "promote.after: 10.5"),
    ({**SHOES, "promote": {"after": True}}, "promote.after: True"),
    ({**SHOES, "promote": {"max_p": 0}}, "promote.max_p: 0: a chance between 0 and 1 (exclusive)"),
    ({**SHOES, "promote": {"max_p": 1.5}}, "promote.max_p: 1.5"),
    ({**SHOES, "promote": {"max_p": float("nan")}}, "promote.max_p: nan"),
    ({"labels": {"canary": 2}, "promote": {}}, "promote: promotion moves the `stable` label"),
    ({**SHOES, "traffic": {"1": 90, "canary": 10}, "promote": {}}, "promote: traffic and shadow must name labels, "
                                                                   "not version numbers ('1')"),
    ({**SHOES, "shadow": 2, "promote": {}}, "promote: traffic and shadow must name labels, not version numbers ('2')"),
])
def test_a_model_table_is_refused_naming_the_key(table, where):
    with pytest.raises(ValueError) as refused:
        ModelConfig.parse("shoes", table)
    assert str(refused.value).startswith("repository.shoes") and where in str(refused.value)


def test_a_promote_table_parses_and_round_trips():
    config = ModelConfig.parse("shoes", {**SHOES, "shadow": "canary", "promote": {"after": 200}})
    assert (config.promote.after, config.promote.max_p) == (200, 0.05)
    assert ModelConfig.parse("shoes", config.table()) == config
    assert ModelConfig.parse("shoes", SHOES).promote is None and "promote" not in ModelConfig.parse("shoes", SHOES).table()


def test_an_exact_policy_round_trips_through_its_table():
    """A default named `name:3` serves that version and no other: its table (a decision's undo)
    must say so, or a load of it would let another version stand in."""
    exact = ModelConfig("shoes", policy=Policy(latest=None, specific=(3,), exact=True), labels={"stable": 3})
    assert exact.table()["versions"] == "exact:3" and ModelConfig.parse("shoes", exact.table()) == exact
    assert Policy.parse("specific:3", "here") != exact.policy
    for text in ("exact:", "exact:3,4", "exact:x"):
        with pytest.raises(ValueError, match="exact:V"):
            Policy.parse(text, "here")


def test_version_numbers_are_ascii_digits_within_int64():
    assert ascii_number("3") == 3 and ascii_number(str(2**63 - 1)) == 2**63 - 1
    assert [ascii_number(text) for text in ("²", "٣", "-1", "+1", " 1", "", str(2**63), "9" * 5000)] == [None] * 8
    assert ModelConfig.parse("shoes", {"shadow": 2, "traffic": {"2": 5}}).shadow == "2"  # TOML's shadow = 2


def snapshot(engine: Engine) -> tuple:
    """What a change would change: every version's state, labels and policy, readiness, the config."""
    status = {name: (sorted((number, slot.state) for number, slot in entry.versions.items()), entry.labels,
                     entry.policy) for name, entry in engine.status().items()}
    return status, engine.ready, {name: config.table() for name, config in engine.manager.repository.configs.items()}


@pytest.fixture
def folders(repository, tiny_models, tmp_path) -> dict[str, Path]:
    """The repository (shoes 1 and 2, the default classifier; boots 1), a folder of versions
    outside it, a symlink in it to that folder, and an allowed root with one more model."""
    add_version(repository, "boots", 1, tiny_models["classifier"])
    add_version(tmp_path / "outside", "shoes", 1, tiny_models["classifier"])
    add_version(tmp_path / "allowed", "sandals", 1, tiny_models["classifier"])
    os.symlink(tmp_path / "outside", repository / "link")  # no versions in it: not a model of the root
    return {"root": repository, "outside": tmp_path / "outside" / "shoes", "link": repository / "link" / "shoes",
            "allowed": tmp_path / "allowed"}


def test_a_refused_change_changes_nothing(folders, tiny_models):
    engine = engine_for(folders["root"], tiny_models, allowed_roots=(str(folders["allowed"]),),
                        repository={"shoes": SHOES})
    try:
        before = snapshot(engine)
        assert before[1] and classify(engine) == "1"
        refused = [
            (lambda: engine.load_model("shoes", None, {"versions": "specific:999"}), Conflict, "default classifier"),
            (lambda: engine.configure({"shoes": ModelConfig("shoes", policy=Policy(latest=None, specific=(999,)))}),
             Conflict, "chooses none of the versions the repository holds ([1, 2])"),
            (lambda: engine.load_model("boots", None, {"versions": "specific:7"}), Conflict,
             "boots: versions = specific:7"),
            (lambda: engine.load_model("shoes", None, {"traffic": {"nothing": 1}}), ValidationError, "traffic.nothing"),
            (lambda: engine.load_model("shoes", None, {**SHOES, "promote": {"max_p": 2}}), ValidationError,
             "repository.shoes.promote.max_p: 2"),
            (lambda: engine.load_model("shoes", None, {**SHOES, "path": str(folders["outside"])}), Forbidden,
             "outside the model roots"),
            (lambda: engine.load_model("shoes", None, {**SHOES, "path": str(folders["link"])}), Forbidden,
             "outside the model roots"),
            (lambda: engine.load_model("shoes", None, {**SHOES, "path": str(folders["link"] / "..")}),
             Forbidden, "outside the model roots"),
            (lambda: engine.reload_config({"shoes": SHOES}), Conflict,
             "is the default generator: the change would leave it no version to serve (a reload config must name it)"),
            (lambda: engine.reload_config({"shoes": {"versions": "all", "labels": {"canary": 2}}, "generator": {}}),
             ValidationError, "traffic.stable: 'stable' is neither a label"),  # the traffic it keeps names it
            (lambda: engine.unload_model("shoes"), Conflict, "is a default model"),
            (lambda: engine.load_model("shoes", 9), ValidationError, "version 9 is not in the repository"),
            (lambda: engine.load_model("nowhere", None, {"versions": "all"}), NotFound, "no model named 'nowhere'"),
        ]
        for change, error, message in refused:
            with pytest.raises(error, match=re.escape(message)):
                asyncio.run(change())
            assert snapshot(engine) == before, message
        assert classify(engine) == "1"
    finally:
        engine.close()


def test_a_load_request_may_name_a_folder_under_an_allowed_root(folders, tiny_models):
    engine = engine_for(folders["root"], tiny_models, allowed_roots=(str(folders["allowed"]),))
    try:
        asyncio.run(engine.load_model("sandals", None, {"path": str(folders["allowed"] / "sandals")}))
        assert versions(engine, "sandals") == {1: "available"} and classify(engine, "sandals") == "1"
    finally:
        engine.close()


def test_a_tf_serving_reload_replaces_the_model_list(folders, tiny_models):
    """The list's models get its policy and labels and keep their traffic; the others are unloaded."""
    engine = engine_for(folders["root"], tiny_models, repository={"shoes": SHOES})
    try:
        assert versions(engine, "boots") == {1: "available"}
        asyncio.run(engine.reload_config({"shoes": {"versions": "all", "labels": {"stable": 2, "canary": 1}},
                                          "generator": {}}))
        assert engine.status()["shoes"].labels == {"stable": 2, "canary": 1}
        assert classify(engine) == "2"  # traffic = {stable = 100} stayed, and stable is 2 now
        assert eventually(lambda: "boots" not in engine.status()), engine.status()
        asyncio.run(engine.reload_config({"shoes": SHOES, "generator": {}, "boots": {}}))
        assert versions(engine, "boots") == {1: "available"} and classify(engine) == "1"
    finally:
        engine.close()


def test_a_load_that_fails_rolls_its_config_back(folders, tiny_models):
    engine = engine_for(folders["root"], tiny_models, repository={"shoes": SHOES})
    try:
        broken = add_version(folders["root"], "shoes", 3, tiny_models["classifier"])
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        configs = snapshot(engine)[2]
        with pytest.raises(ValidationError, match="could not be loaded: OSError.*nothing was changed"):
            asyncio.run(engine.load_model("shoes", 3, {**SHOES, "traffic": {"canary": 100}}))
        assert snapshot(engine)[2] == configs and classify(engine) == "1"  # stable's traffic, as before
        assert {number: state for number, state in versions(engine).items() if number < 3} == {
            1: "available", 2: "available"}
    finally:
        engine.close()


def test_a_config_file_that_would_retire_the_default_is_not_applied(repository, tiny_models, tmp_path, caplog):
    config = tmp_path / "diptych.toml"
    config.write_text('[repository.shoes]\nversions = "all"\n')
    engine = engine_for(repository, tiny_models, config_file=config)
    try:
        before = snapshot(engine)
        config.write_text('[repository.shoes]\nversions = "specific:999"\n')
        engine.manager.reconcile()
        assert snapshot(engine) == before and "was not applied: config: shoes is the default classifier" in caplog.text
    finally:
        engine.close()


def test_a_config_file_of_the_wrong_type_is_refused_and_the_pass_goes_on(repository, tiny_models, tmp_path, caplog):
    """A list where a runtime's name goes raised TypeError out of the pass, before its scan,
    on every pass after: hot reload stopped for good, and nothing said which setting."""
    config = tmp_path / "diptych.toml"
    config.write_text("")
    engine = engine_for(repository, tiny_models, config_file=config)
    try:
        config.write_text('[repository.shoes]\nversions = "specific:1"\n[kinds.classifier]\nruntime = ["litert"]\n')
        add_version(repository, "shoes", 3, tiny_models["classifier"])
        engine.manager.reconcile()
        assert "was not applied: setting kinds.classifier.runtime must be a runtime's name" in caplog.text
        assert versions(engine)[3] == "available" and 1 not in versions(engine)  # scanned; latest:1 kept
        config.write_text("versions = " + "[" * 100_000 + "]" * 100_000)  # RecursionError in tomllib
        engine.manager.reconcile()
        assert "(DIPTYCH_CONFIG) is not TOML: maximum recursion depth" in caplog.text
        config.write_text('[repository.shoes]\nversions = "specific:1"\n')
        engine.manager.reconcile()
        assert eventually(lambda: versions(engine) == {1: "available"}), versions(engine)  # the fix applies
    finally:
        engine.close()


def body_request(content_type: str | None, authorization: str | None = None) -> Request:
    headers = [(b"content-type", content_type.encode())] if content_type else []
    headers += [(b"authorization", authorization.encode())] if authorization else []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/", "query_string": b"", "headers": headers}, receive)


@pytest.mark.parametrize("content_type, authorization, changes, accepted", [
    ("application/json", None, True, True),
    ("application/json; charset=utf-8", None, True, True),
    (None, "Bearer admin", True, True),  # tritonclient: no content type, and the admin key
    (None, None, False, True),  # tritonclient's index on an open server: reads only
    (None, None, True, False),  # a page's fetch() with no body type: no preflight either
    ("text/plain", "Bearer admin", True, False),
    ("text/plain;charset=UTF-8", None, False, False),
    ("application/x-www-form-urlencoded", None, True, False),
    ("multipart/form-data; boundary=x", None, True, False),
])
def test_control_routes_take_json_only(content_type, authorization, changes, accepted):
    """The content types a web page sends cross-origin without a CORS preflight are refused."""
    parse = _json_object(body_request(content_type, authorization), changes)
    if accepted:
        assert asyncio.run(parse) == {}
    else:
        with pytest.raises(UnsupportedMediaType, match="send the body as application/json"):
            asyncio.run(parse)
