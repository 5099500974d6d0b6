"""Publish an exported model into the BentoML model store, where the service finds it.

    python -m training.publish models/classifier/3        # one version
    python -m training.publish models/generator           # its highest version
    python -m training.publish models/classifier models/generator

The store tag is `<card name>:<card version>` (`classifier:3`), so the service's default
`classifier:latest` picks it up; the model card becomes the tag's metadata, its kind,
dataset and backbone its labels. Published under another name (`--name`), the copy's card
says that name: with `require_signed`, the service serves a version only as its signed card names it. Publishing the same export again changes nothing;
a different export under a tag that exists needs --force.

Beside the SavedModel goes its LiteRT conversion (`litert/model.tflite`), verified against
TensorFlow on real inputs, and a report of the check and of both runtimes' measured speed
(`litert/report.json`, contract/litert.py): the service runs the flatbuffer when it
is verified (and, by default, faster), so it need not convert at every start. A model that
fails the check is published all the same; the report says why, and the service uses TensorFlow.

With --sign-key the store's copy is signed whole, conversion and BentoML's `model.yaml`
included (contract/signing.py). An export signed by training cannot keep its signature
here: it does not cover the conversion added, so a signed export needs --sign-key.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shutil
from pathlib import Path
from typing import Any

from contract.card import CardError, ModelCard
from contract.layout import version_dir
from contract.litert import convert_and_verify
from contract.runtime import cores
from contract.signing import SIGNATURE, check_private_key, sign
from training.cli import UserError, run_cli

DIGEST_LABEL = "saved_model_sha256"


def publish(path: str | Path, name: str | None = None, force: bool = False, sign_key: str | None = None) -> str:
    """Import the SavedModel at `path` (a version folder or its parent) with its LiteRT
    conversion, signed with `sign_key` when given; return the tag and what became of the conversion."""
    import bentoml

    try:
        source = version_dir(path)
        card = ModelCard.read(source)
        if sign_key:
            check_private_key(sign_key)
    except (FileNotFoundError, CardError, ValueError) as error:
        raise UserError(str(error)) from None
    if (source / SIGNATURE).is_file() and not sign_key:
        raise UserError(f"{source} is signed, and its signature would not cover the LiteRT conversion publishing "
                        f"adds: pass --sign-key to sign the published model whole")
    tag = bentoml.Tag(name or card.name, str(card.version))
    digest = hashlib.sha256((source / "saved_model.pb").read_bytes()).hexdigest()
    try:
        existing = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        existing = None
    if existing is not None:
        same = existing.info.labels.get(DIGEST_LABEL) == digest
        if same and (not sign_key or (Path(existing.path) / SIGNATURE).is_file()):
            return f"{tag} (already published)"
        if not same and not force:  # the same export, unsigned in the store, is published again signed
            # Typically a second checkout (or an older recipe) published the same version first:
            # the store is per user, the version numbers are per checkout.
            raise UserError(f"{tag} in the BentoML model store ({existing.path}) already holds a "
                            f"different model, published from another export: retrain into a new version, "
                            f"replace it with `python -m training.publish {source} --force`, or publish into "
                            f"another store (BENTOML_HOME=...)")
        bentoml.models.delete(tag)
    labels = {key: str(value) for key in ("kind", "dataset", "backbone") if (value := getattr(card, key)) is not None}
    conversion = convert_and_verify(source, card, cores())
    stored = dataclasses.replace(card, name=tag.name)  # the copy's card says its tag: a signed card binds it
    with bentoml.models.create(tag, labels={**labels, DIGEST_LABEL: digest},
                               metadata=_without_none(stored.to_dict())) as model:
        shutil.copytree(source, model.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns(SIGNATURE))
        if stored != card:
            stored.write(model.path)
        conversion.save(model.path)
    if sign_key:  # after BentoML has written its model.yaml, so that it is covered too
        sign(bentoml.models.get(tag).path, sign_key)
    return f"{tag} ({conversion.summary}{', signed' if sign_key else ''})"


def _without_none(value: Any) -> Any:
    """BentoML metadata takes basic types only: drop the card's nulls (the training flags have some)."""
    if isinstance(value, dict):
        return {key: _without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_none(item) for item in value if item is not None]
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="models/<kind>/<version>, or models/<kind> for its highest version")
    parser.add_argument("--name", help="store name (default: the card's name, which the service looks up); one PATH only")
    parser.add_argument("--force", action="store_true", help="replace a different model published under the same tag")
    parser.add_argument("--sign-key", metavar="PEM", help="sign the published model (with its conversion) with this "
                        "EC private key; needed to publish a signed export")
    args = parser.parse_args(argv)
    if args.name and len(args.paths) > 1:
        raise UserError("--name applies to one PATH only")
    for path in args.paths:
        print(f"published {publish(path, args.name, args.force, args.sign_key)}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
