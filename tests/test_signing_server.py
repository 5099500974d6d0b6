"""Signed models on a real `bentoml serve` with `require_signed`: what is proven loads and
`/models` names its signer; an unsigned version, one signed by a key not trusted, and one
changed after signing are refused (failed, the reason, a metric) while what served keeps
serving, at start and on hot reload, from a repository folder and from the model store; a
trusted key file that is missing stops the start with a clear error."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contract.card import ModelCard
from contract.signing import sign
from tests.conftest import ROOT, Server, ec_key_pair, eventually
from tests.grpc_clients import png_bytes
from tests.reliability import metric

pytestmark = pytest.mark.slow


def add_version(root: Path, name: str, number: int, source: Path, key: Path | None,
                tamper: str | None = None, signed_as: tuple[str, int] | None = None) -> None:
    """Copy `source` in as `root/name/number`, its card saying `signed_as` (default: that name
    and number, as an export of it says), signed with `key`, then with one byte of `tamper` (a
    file in it) changed; renamed into place whole, as an operator's copy would be."""
    staging = root / name / f".{number}.partial"
    shutil.copytree(source, staging)
    shutil.rmtree(staging / "litert", ignore_errors=True)
    card_name, card_version = signed_as or (name, number)
    dataclasses.replace(ModelCard.read(staging), name=card_name, version=card_version).write(staging)
    if key is not None:
        sign(staging, key)
    if tamper is not None:
        data = bytearray((staging / tamper).read_bytes())
        data[len(data) // 2] ^= 1
        (staging / tamper).write_bytes(bytes(data))
    staging.rename(root / name / str(number))


@pytest.fixture(scope="module")
def signed(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("signed")
    (trusted, trusted_public), (stranger, _) = ec_key_pair(tmp, "trusted"), ec_key_pair(tmp, "stranger")
    root = tmp / "models"
    add_version(root, "shoes", 1, tiny_models["classifier"], trusted)
    add_version(root, "unsigned", 1, tiny_models["classifier"], None)
    add_version(root, "stranger", 1, tiny_models["classifier"], stranger)
    add_version(root, "cats", 9, tiny_models["classifier"], trusted, signed_as=("shoes", 1))  # a copy of shoes:1
    env = {key: value for key, value in os.environ.items() if not key.startswith("DIPTYCH_")}
    env.update(BENTOML_HOME=str(tmp / "home"), BENTOML_DO_NOT_TRACK="true", TF_CPP_MIN_LOG_LEVEL="3")
    published = subprocess.run([sys.executable, "-m", "training.publish", str(tiny_models["classifier"]),
                                "--name", "stored", "--sign-key", str(trusted)],
                               env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert published.returncode == 0, published.stderr[-3000:]
    server = Server({**env, "DIPTYCH_MODEL_ROOT": str(root), "DIPTYCH_STORE": "true", "DIPTYCH_CLASSIFIER": "shoes",
                     "DIPTYCH_GENERATOR": "", "DIPTYCH_POLL_S": "0.5", "DIPTYCH_CLASSIFIER_RUNTIME": "tensorflow",
                     "DIPTYCH_REQUIRE_SIGNED": "true", "DIPTYCH_TRUSTED_KEYS": str(trusted_public)},
                    tmp / "server.log")
    try:
        server.wait("/readyz")
        yield server, root, trusted, trusted_public
    finally:
        server.stop()


def listed(server: Server, name: str) -> dict[str, dict]:
    return {entry["version"]: entry for entry in server.client.get("/models").json()["models"]
            if entry["name"] == name}


def classified_by(server: Server, model: str) -> str:
    answer = server.client.post("/classify", json={"model": model, "images": [base64.b64encode(png_bytes()).decode()]})
    assert answer.status_code == 200, answer.text
    return answer.headers["x-model-version"]


def test_a_signed_version_loads_and_models_names_its_signer(signed):
    server, _, _, public = signed
    fingerprint = "sha256:" + hashlib.sha256(public.read_bytes()).hexdigest()
    for name in ("shoes", "stored"):  # a repository folder, and the model store (signed by publish)
        assert eventually(lambda name=name: listed(server, name).get("1", {}).get("state") == "available", 120), \
            listed(server, name)
        signature = listed(server, name)["1"]["signature"]
        assert signature == {"verified": True, "signer": fingerprint, "reason": "", "detail": ""}
    assert classified_by(server, "shoes") == "1"


@pytest.mark.parametrize("name, reason", [("unsigned", "unsigned"), ("stranger", "untrusted")])
def test_unsigned_and_untrusted_versions_are_refused(signed, name, reason):
    server, _, _, _ = signed
    assert eventually(lambda: listed(server, name).get("1", {}).get("state") == "failed", 120), listed(server, name)
    assert listed(server, name)["1"]["reason"].startswith(f"Unverified: {reason}: ")
    assert metric(server, "diptych_model_verification_failures_total", model=name, reason=reason) >= 1
    answer = server.client.post("/classify", json={"model": name, "images": [base64.b64encode(png_bytes()).decode()]})
    assert answer.status_code == 404  # nothing of it serves


def test_a_signed_version_copied_under_another_name_and_number_is_refused(signed):
    """Its bytes are the signer's, but not as cats:9: swapped or rolled back by whoever can
    write to the repository, it is refused, and counted."""
    server, _, _, _ = signed
    assert eventually(lambda: listed(server, "cats").get("9", {}).get("state") == "failed", 120), listed(server, "cats")
    assert listed(server, "cats")["9"]["reason"] == "Unverified: misplaced: signed as shoes:1, found as cats:9"
    assert metric(server, "diptych_model_verification_failures_total", model="cats", reason="misplaced") >= 1
    answer = server.client.post("/classify", json={"model": "cats", "images": [base64.b64encode(png_bytes()).decode()]})
    assert answer.status_code == 404


def test_a_version_changed_after_signing_is_refused_on_hot_reload_and_the_old_one_keeps_serving(signed, tiny_models):
    server, root, trusted, _ = signed
    assert classified_by(server, "shoes") == "1"
    variables = "variables/variables.data-00000-of-00001"
    add_version(root, "shoes", 2, tiny_models["other_classifier"], trusted, tamper=variables)
    assert eventually(lambda: listed(server, "shoes").get("2", {}).get("state") == "failed", 120), \
        listed(server, "shoes")
    assert listed(server, "shoes")["2"]["reason"] == f"Unverified: tampered: changed since signing: {variables}"
    assert metric(server, "diptych_model_verification_failures_total", model="shoes", reason="tampered") == 1
    assert listed(server, "shoes")["1"]["state"] == "available" and classified_by(server, "shoes") == "1"
    # The same weights, signed and untouched, as version 3: hot reload serves them (the check
    # refuses what changed, not what is new).
    add_version(root, "shoes", 3, tiny_models["other_classifier"], trusted)
    assert eventually(lambda: listed(server, "shoes").get("3", {}).get("state") == "available", 120), \
        listed(server, "shoes")
    assert classified_by(server, "shoes") == "3"


def test_a_trusted_key_file_that_is_missing_stops_the_start(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("DIPTYCH_")}
    missing = tmp_path / "nowhere.pub"
    server = Server({**env, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true",
                     "DIPTYCH_STORE": "false", "DIPTYCH_REQUIRE_SIGNED": "true", "DIPTYCH_TRUSTED_KEYS": str(missing)},
                    tmp_path / "server.log", grpc=False)
    try:
        assert server.process.wait(timeout=180) != 0
        assert f"trusted key {missing}: No such file or directory" in server.log.read_text()
    finally:
        server.stop()
