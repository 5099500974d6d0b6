"""Signed versions: who made a version folder, and that nothing in it changed since.

An export is signed whole (OpenSSF `model-signing`, offline, with an EC key, or a key and
its certificate): every file of the version folder (SavedModel, variables, calibration
sample, card, LiteRT conversion) is hashed into a manifest, and the signed manifest is
`model.sig` in the same folder, the one file the manifest leaves out. Training signs
(`--sign-key`); `training.publish` signs the store's copy again, with the conversion it adds
(the export's signature cannot cover a file written after it). The service checks a folder
against its trusted public keys and CA certificates right before loading it (`Trust.check`).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import re
import stat
from collections.abc import Iterable
from pathlib import Path

SIGNATURE = "model.sig"  # in the version folder; the only file the signature does not cover
# model-signing's own signatures are a few KiB (a certificate chain: tens); a bigger file is not
# one, and is refused before it is read into memory
MAX_SIGNATURE_BYTES = 2**20
_CHANGED = re.compile(r"Hash mismatch for '([^']+)'")
_EXTRA_OR_MISSING = re.compile(r"(Extra|Missing) files (?:found )?in model '[^']*': ([^\"\]]+)")


class Unverified(Exception):
    """A version whose signature does not prove it (`reason`: unsigned, untrusted, tampered, invalid;
    misplaced: signed as another model's name or version than it is found as)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What a version's signature says: whether it verified against a trusted key, who
    signed (a key's fingerprint, a certificate's subject) and, when it did not verify, why."""

    verified: bool
    signer: str | None = None
    reason: str = ""  # unsigned, untrusted, tampered, invalid; empty when verified
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def hashing_config():
    """The one manifest recipe, for signing and for checking: every file but the signature
    (git's files too: model-signing leaves those out by default)."""
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)


def check_private_key(path: str | Path) -> None:
    """Raise a ValueError saying what is wrong with a signing key: before hours of training, not after."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), None)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"{path}: not a readable unencrypted PEM private key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in ("secp256r1", "secp384r1",
                                                                                  "secp521r1"):
        raise ValueError(f"{path}: model signing takes an EC P-256, P-384 or P-521 key "
                         "(openssl ecparam -name prime256v1 -genkey -noout -out key.pem)")


def sign(folder: str | Path, private_key: str | Path) -> Path:
    """Sign every file in `folder` with an EC private key (PEM); return the signature's path."""
    from model_signing import signing

    check_private_key(private_key)
    signature = Path(folder, SIGNATURE)
    signing.Config().set_hashing_config(hashing_config()).use_elliptic_key_signer(private_key=private_key).sign(
        Path(folder), signature)
    return signature


@dataclasses.dataclass(frozen=True)
class _Trusted:
    path: Path
    certificate: bool  # a CA certificate (chain) rather than a public key


class Trust:
    """The trusted public keys and CA certificates (`trusted_keys`), each a PEM file."""

    def __init__(self, entries: Iterable[_Trusted]) -> None:
        self._entries = tuple(entries)

    @classmethod
    def load(cls, paths: Iterable[str]) -> Trust:
        """Raises a ValueError naming the file for one that is missing or holds no EC public
        key or certificate: a misconfigured trust is a start-up error, not a silent refusal."""
        return cls(_trusted(path) for path in paths)

    def check(self, folder: str | Path) -> Provenance:
        """Verify `folder` against its `model.sig`, with each trusted key in turn."""
        folder = Path(folder).resolve()  # a version folder may be a symlink within the repository
        signature = folder / SIGNATURE
        try:
            found = signature.lstat()
        except FileNotFoundError:
            return Provenance(False, None, "unsigned", f"no {SIGNATURE} in {folder}")
        except OSError as error:
            return Provenance(False, None, "invalid", f"{SIGNATURE} cannot be read: {error.strerror or error}")
        if not stat.S_ISREG(found.st_mode):
            return Provenance(False, None, "invalid", f"{SIGNATURE} is not a regular file (a link, a folder)")
        if found.st_size > MAX_SIGNATURE_BYTES:
            return Provenance(False, None, "invalid", f"{SIGNATURE} is {found.st_size} bytes: a signature is at "
                                                      f"most {MAX_SIGNATURE_BYTES}")
        try:
            claimed = _claimed_signer(signature)
        except Exception as error:  # noqa: BLE001 - whatever its JSON holds, it is a signature that cannot be read
            return Provenance(False, None, "invalid", f"{SIGNATURE} cannot be read: {type(error).__name__}: "
                                                      f"{str(error)[:200]}")
        if not self._entries:
            return Provenance(False, claimed, "untrusted", "no trusted_keys configured to verify it with")
        for entry in self._entries:
            try:
                _verifier(entry).verify(folder, signature)
            except ValueError as error:
                if str(error).startswith("Signature mismatch"):
                    return Provenance(False, claimed, "tampered", _changed_files(str(error)))
                if str(error).startswith("Key mismatch"):
                    continue  # another key's signature
                return Provenance(False, claimed, "invalid", str(error)[:300])  # e.g. a symlink in the folder
            except Exception:  # noqa: BLE001 - a bad signature, a certificate chain that fails, a
                continue  # key's verifier on a certificate's bundle or the reverse: not this entry's
            return Provenance(True, claimed)
        return Provenance(False, claimed, "untrusted", f"signed by {claimed}, which no trusted key or "
                                                       "certificate verifies")


@functools.lru_cache(maxsize=8)
def trust(paths: tuple[str, ...]) -> Trust:
    """The trust for these files, read once per process."""
    return Trust.load(paths)


def _trusted(path: str) -> _Trusted:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"trusted key {path}: {error.strerror or error}") from None
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            x509.load_pem_x509_certificates(data)
        except ValueError as error:
            raise ValueError(f"trusted key {path}: not a PEM certificate ({error})") from None
        return _Trusted(Path(path), certificate=True)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ValueError(f"trusted key {path}: neither a PEM public key nor a certificate "
                         "(openssl ec -in key.pem -pubout -out key.pub)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"trusted key {path}: model signing verifies EC keys only, this is {type(key).__name__}")
    return _Trusted(Path(path), certificate=False)


def _verifier(entry: _Trusted):
    from model_signing import verifying

    config = verifying.Config().set_hashing_config(hashing_config())
    if entry.certificate:
        return config.use_certificate_verifier(certificate_chain=[entry.path])
    return config.use_elliptic_key_verifier(public_key=entry.path)


def _claimed_signer(signature: Path) -> str | None:
    """Who the signature says signed: its key's fingerprint, or its certificate's subject."""
    from cryptography import x509

    material = json.loads(signature.read_text())["verificationMaterial"]
    if "x509CertificateChain" in material:
        leaf = material["x509CertificateChain"]["certificates"][0]["rawBytes"]
        return x509.load_der_x509_certificate(base64.b64decode(leaf)).subject.rfc4514_string()
    hint = material.get("publicKey", {}).get("hint")
    return f"sha256:{hint}" if hint else None


def _changed_files(mismatch: str) -> str:
    """model-signing's mismatch message, without the digests: which files changed, appeared or went."""
    parts = [f"changed since signing: {', '.join(names)}"] if (names := _CHANGED.findall(mismatch)) else []
    parts += [f"{kind.lower()} files: {names.strip()}" for kind, names in _EXTRA_OR_MISSING.findall(mismatch)]
    return "; ".join(parts) or mismatch[:300]
