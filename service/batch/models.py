"""Which model a bulk job runs: `--model`, parsed once and resolved through the engine.

`--model` takes what the service's settings take (a SavedModel folder, an object-store
URL, or a model-store tag) and the model repository's spelling: `name`, `name:version`,
`name@label`. The job's engine serves the model repository as the service would (the
settings' `model_root`, the store, the `[repository.<name>]` labels), with that model as the
default of its kind and no polling; the reference is then resolved by the engine, as a
request's would be.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from contract.layout import is_location, is_url
from service.core import Settings
from service.core.engine import Engine
from service.core.models import ServedModel

Kind = TypeVar("Kind", bound=ServedModel)
LATEST = "latest"


class ModelArgumentError(ValueError):
    """`--model` is malformed, or names a model the engine does not serve."""


@dataclasses.dataclass(frozen=True)
class ModelArgument:
    """`--model` as given: a model folder, or a name the engine resolves (`ModelRef`'s spelling)."""

    text: str | None  # as given; None: the kind's default model
    folder: str | None = None
    name: str | None = None
    version: str | None = None
    label: str | None = None


def parse(text: str | None) -> ModelArgument:
    """`name`, `name:version`, `name@label`, or a folder (anything with a `/`, or a folder that
    exists) or an object-store URL (`s3://bucket/models/classifier`)."""
    if text is None:
        return ModelArgument(None)
    if is_url(text):
        from service.core.sources import check_url

        try:
            check_url(text)
        except ValueError as error:
            raise ModelArgumentError(f"--model {error}") from None
    if is_location(text):
        return ModelArgument(text, folder=text)
    from service.core import ValidationError
    from service.core.repository import ModelRef

    try:  # the service's own spelling and checks (`name:latest` is the store's, and the newest)
        ref = ModelRef.parse(text.removesuffix(f":{LATEST}"))
    except ValidationError:
        raise ModelArgumentError(f"--model {text!r}: use name, name:version, name@label or a model folder") from None
    return ModelArgument(text, name=ref.name, version=None if ref.version is None else str(ref.version), label=ref.label)


def settings_for(kind: str, ref: ModelArgument, settings: Settings) -> Settings:
    """`settings` that load the one model `ref` names as the default `kind`, and no other."""
    source = ref.folder or (f"{ref.name}:{ref.version or LATEST}" if ref.name else
                            settings.kind_setting(kind, "default"))
    for other in settings.defaults():
        if other != kind:
            settings = settings.with_kind(other, default="")
    return dataclasses.replace(settings.with_kind(kind, default=source), poll_s=0)


def resolve(engine: Engine, kind: type[Kind], ref: ModelArgument) -> Kind:
    """The loaded model `ref` names, its version checked against the one asked for."""
    from service.core import ServiceError
    from service.core.repository import ModelRef

    if not ref.name:
        return engine.get(kind)
    version = None if ref.version in (None, LATEST) else ref.version
    if version is not None and not version.isdigit():
        raise ModelArgumentError(f"--model {ref.text}: a version is a number")
    try:
        return engine.get(kind, ModelRef(ref.name, int(version) if version else None, ref.label))
    except ServiceError as error:
        raise ModelArgumentError(f"--model {ref.text}: {error.problem}") from None


def load(kind: type[Kind], ref: ModelArgument, settings: Settings) -> tuple[Engine, Kind]:
    """An engine with the one model loaded (synchronously: a job has nothing to serve meanwhile)."""
    from service.kinds import registered

    engine = Engine(settings_for(kind.kind, ref, settings), registered(settings.kind_modules))
    engine.load()
    if not engine.ready:
        raise ModelArgumentError(f"the {kind.kind} {ref.text or 'default'} could not be loaded (the log above says why)")
    return engine, resolve(engine, kind, ref)
