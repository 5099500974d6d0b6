"""Signed versions (contract/signing.py): a folder signed whole and checked against trusted
keys and CA certificates; the settings that require it; the load path's check; the training
CLIs and `training.publish` that sign. The real server's side is tests/test_signing_server.py."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import prometheus_client
import pytest

from contract.card import ModelCard
from contract.signing import SIGNATURE, Trust, Unverified, hashing_config, sign
from service.core.config import Settings
from service.core.loader import check_signed_identity, verify
from service.core.repository import Repository, Version
from tests.conftest import ROOT, ec_key_pair


def fingerprint(public: Path) -> str:
    """How the service names a key: the SHA-256 of its PEM (`sha256sum key.pub`)."""
    return "sha256:" + hashlib.sha256(public.read_bytes()).hexdigest()


@pytest.fixture
def keys(tmp_path) -> dict[str, tuple[Path, Path]]:
    return {name: ec_key_pair(tmp_path, name) for name in ("trusted", "stranger")}


@pytest.fixture
def model(tmp_path) -> Path:
    """A version folder's shape, without TensorFlow: the signature covers bytes, not meaning."""
    folder = tmp_path / "shoes" / "1"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph" * 100)
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(bytes(range(256)) * 8)
    (folder / "model_card.json").write_text(json.dumps({"kind": "classifier", "version": 1}))
    return folder


def flip_one_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def test_a_signed_folder_verifies_and_names_its_key(model, keys):
    private, public = keys["trusted"]
    sign(model, private)
    provenance = Trust.load([str(keys["stranger"][1]), str(public)]).check(model)
    assert provenance.verified and provenance.reason == ""
    assert provenance.signer == fingerprint(public)


def test_one_changed_byte_is_tampered_and_names_the_file(model, keys):
    private, public = keys["trusted"]
    sign(model, private)
    flip_one_byte(model / "variables" / "variables.data-00000-of-00001")
    provenance = Trust.load([str(public)]).check(model)
    assert (provenance.verified, provenance.reason) == (False, "tampered")
    assert "variables/variables.data-00000-of-00001" in provenance.detail
    assert provenance.signer == fingerprint(public)  # who claims it: still said


def test_a_file_added_or_removed_after_signing_is_tampered(model, keys):
    private, public = keys["trusted"]
    sign(model, private)
    (model / "litert").mkdir()
    (model / "litert" / "model.tflite").write_bytes(b"swapped in")
    (model / "model_card.json").unlink()
    detail = Trust.load([str(public)]).check(model).detail
    assert "extra files: litert/model.tflite" in detail and "missing files: model_card.json" in detail


def test_a_signature_by_a_key_not_trusted_is_untrusted(model, keys):
    sign(model, keys["stranger"][0])
    provenance = Trust.load([str(keys["trusted"][1])]).check(model)
    assert (provenance.verified, provenance.reason) == (False, "untrusted")
    assert provenance.signer == fingerprint(keys["stranger"][1])


def test_unsigned_and_unreadable_signatures(model, keys):
    trust = Trust.load([str(keys["trusted"][1])])
    assert trust.check(model).reason == "unsigned"
    (model / SIGNATURE).write_text("not a signature")
    assert trust.check(model).reason == "invalid"


def linked_to_a_good_signature(path: Path, private: Path) -> None:
    sign(path.parent, private)
    path.rename(path.parent.parent / "elsewhere.sig")
    path.symlink_to(path.parent.parent / "elsewhere.sig")


MALFORMED = {
    "material a list": lambda path, _: path.write_text(json.dumps({"verificationMaterial": []})),
    "an empty certificate chain": lambda path, _: path.write_text(
        json.dumps({"verificationMaterial": {"x509CertificateChain": {"certificates": []}}})),
    "not an object": lambda path, _: path.write_text("[1, 2]"),
    "a link, to a good signature": linked_to_a_good_signature,
    "a folder": lambda path, _: path.mkdir(),
    "over 1 MiB": lambda path, _: path.write_text(
        json.dumps({"verificationMaterial": {"publicKey": {"hint": "ab"}}, "padding": " " * 2**20})),
}


@pytest.mark.parametrize("malformed", MALFORMED)
def test_a_malformed_signature_is_invalid_never_a_crash(model, keys, malformed):
    """Signing off, it is reported and the version loads; required, it is refused as invalid
    and counted. A signature that is not a regular file, or too big to be one, is not read."""
    MALFORMED[malformed](model / SIGNATURE, keys["trusted"][0])
    assert Trust.load([]).check(model).reason == "invalid"
    assert verify("shoes", str(model), Settings()).reason == "invalid"  # off: loads
    before = refused("shoes", "invalid")
    with pytest.raises(Unverified, match="invalid: model.sig"):
        verify("shoes", str(model), Settings(require_signed=True, trusted_keys=(str(keys["trusted"][1]),)))
    assert refused("shoes", "invalid") == before + 1


def test_a_symlink_inside_a_signed_folder_is_refused(model, keys, tmp_path):
    """A link could point anywhere after signing: model-signing refuses to follow it."""
    private, public = keys["trusted"]
    sign(model, private)
    (tmp_path / "elsewhere").write_bytes(b"x")
    (model / "extra").symlink_to(tmp_path / "elsewhere")
    provenance = Trust.load([str(public)]).check(model)
    assert (provenance.verified, provenance.reason) == (False, "invalid") and "symlink" in provenance.detail


def _certificate(subject, issuer, public_key, signer, ca: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    name = lambda common: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])  # noqa: E731
    builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def test_a_certificate_signature_names_its_subject_and_needs_a_trusted_ca(model, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from model_signing import signing

    pem = lambda certificate: certificate.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    ca_key, other_ca_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    private, _ = ec_key_pair(tmp_path, "trainer")
    trainer = serialization.load_pem_private_key(private.read_bytes(), None)
    (tmp_path / "ca.pem").write_bytes(pem(_certificate("diptych CA", "diptych CA", ca_key.public_key(), ca_key, True)))
    (tmp_path / "other-ca.pem").write_bytes(
        pem(_certificate("other CA", "other CA", other_ca_key.public_key(), other_ca_key, True)))
    (tmp_path / "trainer.crt").write_bytes(
        pem(_certificate("trainer", "diptych CA", trainer.public_key(), ca_key, False)))
    signing.Config().set_hashing_config(hashing_config()).use_certificate_signer(
        private_key=private, signing_certificate=tmp_path / "trainer.crt",
        certificate_chain=[tmp_path / "ca.pem"]).sign(model, model / SIGNATURE)

    provenance = Trust.load([str(tmp_path / "ca.pem")]).check(model)
    assert provenance.verified and provenance.signer == "CN=trainer"
    assert Trust.load([str(tmp_path / "other-ca.pem")]).check(model).reason == "untrusted"


@pytest.mark.parametrize("content, problem", [
    (None, "No such file"),
    ("private", "neither a PEM public key nor a certificate"),
    ("text", "neither a PEM public key nor a certificate"),
])
def test_a_trusted_key_file_missing_or_not_a_key_is_a_settings_error(tmp_path, content, problem):
    path = tmp_path / "key.pub"
    if content == "private":
        path = ec_key_pair(tmp_path, "key")[0]
    elif content == "text":
        path.write_text("hello\n")
    with pytest.raises(ValueError, match=f"trusted key {path}: {problem}"):
        Settings.load({"DIPTYCH_TRUSTED_KEYS": str(path), "DIPTYCH_REQUIRE_SIGNED": "true"})


def test_require_signed_needs_trusted_keys():
    with pytest.raises(ValueError, match="require_signed needs trusted_keys"):
        Settings.load({"DIPTYCH_REQUIRE_SIGNED": "true"})


def refused(model: str, reason: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value(
        "diptych_model_verification_failures_total", {"model": model, "reason": reason}) or 0.0


def test_the_load_path_refuses_what_is_not_proven_only_when_required(model, keys):
    """Off (the default), nothing is refused and a signature is still reported; on, a version
    that does not verify raises `Unverified` with its reason, and is counted."""
    private, public = keys["trusted"]
    assert verify("shoes", str(model), Settings()).reason == "unsigned"
    sign(model, private)
    reported = verify("shoes", str(model), Settings())
    assert (reported.verified, reported.reason, reported.signer) == (False, "untrusted", fingerprint(public))
    required = Settings(require_signed=True, trusted_keys=(str(public),))
    assert verify("shoes", str(model), required).verified
    flip_one_byte(model / "saved_model.pb")
    assert verify("shoes", str(model), Settings(trusted_keys=(str(public),))).reason == "tampered"  # loads
    before = refused("shoes", "tampered")
    with pytest.raises(Unverified, match="tampered: changed since signing: saved_model.pb"):
        verify("shoes", str(model), required)
    assert refused("shoes", "tampered") == before + 1


def test_with_require_signed_a_version_serves_only_as_the_name_and_number_its_card_signs(model, keys, tmp_path):
    """A signed cats:2 copied to shoes/9 verifies (the bytes are the signer's) but is refused as
    misplaced, and counted; a `[repository.<name>] path` serving cats under another name is the
    operator's setting: the name compared is the one the folder gives."""
    card = ModelCard.new(kind="classifier", name="cats", version=2, numeric_signature="x", tolerance=0.0)
    required = Settings(require_signed=True, trusted_keys=(str(keys["trusted"][1]),))
    check_signed_identity(Version("cats", 2, "models/cats/2", "classifier"), card, required)
    before = refused("shoes", "misplaced")
    for name, number in (("shoes", 9), ("cats", 9), ("shoes", 2)):
        with pytest.raises(Unverified, match=f"misplaced: signed as cats:2, found as {name}:{number}"):
            check_signed_identity(Version(name, number, f"models/{name}/{number}", "classifier"), card, required)
    assert refused("shoes", "misplaced") == before + 2
    check_signed_identity(Version("shoes", 9, "models/shoes/9", "classifier"), card, Settings())  # off: loads

    for number in (2, 3):
        folder = tmp_path / "elsewhere" / "cats" / str(number)
        shutil.copytree(model, folder)
        ModelCard.new(kind="classifier", name="cats", version=number, numeric_signature="x", tolerance=0.0).write(
            folder)
    found = Repository(Settings(store=False, classifier="", generator="",
                                repository={"pets": {"path": str(tmp_path / "elsewhere" / "cats")}})).scan()
    pets = found.versions["pets"]
    assert [(version.name, version.found_as, version.number) for version in pets] == [("pets", "cats", 2),
                                                                                     ("pets", "cats", 3)]
    check_signed_identity(pets[0], card, required)


# -- the training side -----------------------------------------------------------------------


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=env)


def verifies(folder: Path, public: Path) -> subprocess.CompletedProcess:
    """model-signing's own CLI, independent of contract/signing.py."""
    return subprocess.run([str(Path(sys.executable).with_name("model_signing")), "verify", "key", str(folder),
                           "--signature", str(folder / SIGNATURE), "--public_key", str(public)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("trainer", ["training.classifier", "training.gan"])
def test_a_sign_key_that_is_not_a_private_key_stops_training_before_it_starts(trainer, tmp_path):
    _, public = ec_key_pair(tmp_path, "key")
    run_dir = ["--run-dir", str(tmp_path / "run")] if trainer == "training.gan" else []
    done = run(trainer, "--sign-key", str(public), "--out", str(tmp_path / "out"), *run_dir)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"error: --sign-key {public}: not a readable unencrypted PEM private key" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def signed_export(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The fastest real export, signed by the classifier CLI: (version folder, private key, public key)."""
    tmp = tmp_path_factory.mktemp("signed-export")
    private, public = ec_key_pair(tmp, "trainer")
    done = run("training.classifier", "--data", "fashion-mnist", "--backbone", "scratch", "--per-class", "4",
               "--image-size", "16", "--epochs", "1", "--quick", "--no-evaluate", "--sign-key", str(private),
               "--out", str(tmp / "models"))
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "models" / "1", private, public


@pytest.mark.slow
def test_training_signs_its_export_whole(signed_export):
    folder, _, public = signed_export
    assert verifies(folder, public).returncode == 0
    flip_one_byte(shutil.copytree(folder, folder.parent / "copy") / "calibration.npz")
    assert verifies(folder.parent / "copy", public).returncode != 0  # the calibration sample is covered too


@pytest.mark.slow
def test_publish_signs_the_store_copy_with_its_conversion(signed_export, tmp_path):
    folder, private, public = signed_export
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    unsigned = run("training.publish", str(folder), env=env)
    assert unsigned.returncode == 2 and "is signed" in unsigned.stderr and "--sign-key" in unsigned.stderr
    assert not (tmp_path / "bentoml" / "models").exists() or not any((tmp_path / "bentoml" / "models").iterdir())
    published = run("training.publish", str(folder), "--sign-key", str(private), env=env)
    assert published.returncode == 0, published.stderr[-3000:]
    stored = next((tmp_path / "bentoml" / "models" / "classifier").glob("*/saved_model.pb")).parent
    assert (stored / "litert" / "report.json").is_file() and (stored / "model.yaml").is_file()
    assert verifies(stored, public).returncode == 0
    (stored / "litert" / "report.json").write_text("{}")  # the conversion is covered: changing it shows
    assert verifies(stored, public).returncode != 0
