"""Which model a bulk job runs: `--model`, parsed once and resolved through the engine.

`--model` takes what the service's settings take (a SavedModel folder, or a model-store
tag) and the model repository's spelling: `name`, `name:version`, `name@label`. Today the
engine serves what its settings name, so a name is loaded as the store tag
`name:version` (`name:latest` without a version) and the served model's version is then
checked; a label needs the model repository (issue #16). When the engine resolves
versions and labels itself, `settings_for` and `resolve` are the two functions to change.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from contract.layout import is_folder_ref
from service.core import Settings
from service.core.engine import Engine
from service.core.models import ServedModel

Kind = TypeVar("Kind", bound=ServedModel)
LATEST = "latest"


class ModelRefError(ValueError):
    """`--model` is malformed, or names a model the engine does not serve."""


@dataclasses.dataclass(frozen=True)
class ModelRef:
    text: str | None  # as given; None: the kind's default model
    folder: str | None = None
    name: str | None = None
    version: str | None = None
    label: str | None = None


def parse(text: str | None) -> ModelRef:
    """`name`, `name:version`, `name@label`, or a folder (anything with a `/`, or a folder that exists)."""
    if text is None:
        return ModelRef(None)
    if is_folder_ref(text):
        return ModelRef(text, folder=text)
    rest, at, label = text.partition("@")
    name, colon, version = rest.partition(":")
    if not name or (at and not label) or (colon and not version) or (at and colon):
        raise ModelRefError(f"--model {text!r}: use name, name:version, name@label or a model folder")
    return ModelRef(text, name=name, version=version or None, label=label or None)


def settings_for(kind: str, ref: ModelRef, settings: Settings) -> Settings:
    """`settings` that load the one model `ref` names as the default `kind`, and no other."""
    if ref.label:
        raise ModelRefError(f"--model {ref.text}: labels need the model repository (issue #16); "
                            f"give a version (name:version) or a model folder")
    source = ref.folder or (f"{ref.name}:{ref.version or LATEST}" if ref.name else getattr(settings, kind))
    others = {other: "" for other in settings.defaults() if other != kind}
    return dataclasses.replace(settings, **{kind: source}, **others, models=())


def resolve(engine: Engine, kind: type[Kind], ref: ModelRef) -> Kind:
    """The loaded model `ref` names, its version checked against the one asked for."""
    model = engine.get(kind, ref.name)
    if ref.version not in (None, LATEST) and model.info.version != ref.version:
        raise ModelRefError(f"--model {ref.text}: the engine serves {model.info.name} version "
                            f"{model.info.version}, not {ref.version}")
    return model


def load(kind: type[Kind], ref: ModelRef, settings: Settings) -> tuple[Engine, Kind]:
    """An engine with the one model loaded (synchronously: a job has nothing to serve meanwhile)."""
    from service.kinds import KINDS

    engine = Engine(settings_for(kind.kind, ref, settings), KINDS)
    engine.load()
    if not engine.ready:
        raise ModelRefError(f"the {kind.kind} {ref.text or 'default'} could not be loaded (the log above says why)")
    return engine, resolve(engine, kind, ref)
