"""TF Serving's model addressing and status, shared by its REST and gRPC adapters: a model
by name, version (`versions/3`, `ModelSpec.version`) or label (`labels/stable`,
`version_label`), and each version's state, in TF Serving's own words, which its clients
test for ("Servable not found for request: Specific(classifier, 3)")."""

from __future__ import annotations

from .core import Engine, NotFound, ServedModel, VersionState
from .core.repository import ModelRef

STATES = {VersionState.LOADING: "LOADING", VersionState.AVAILABLE: "AVAILABLE",  # ModelVersionStatus.State
          VersionState.UNLOADING: "UNLOADING", VersionState.FAILED: "END"}


def servable(engine: Engine, name: str, version: int | None = None, label: str | None = None) -> ServedModel:
    try:
        return engine.find(ModelRef(name, version, label))
    except NotFound:
        wanted = f"Specific({name}, {version})" if version is not None else \
            f"Labeled({name}, {label})" if label else f"Latest({name})"
        raise NotFound(f"Servable not found for request: {wanted}", "model_spec") from None


def version_status(engine: Engine, name: str, version: int | None = None,
                   label: str | None = None) -> list[tuple[int, str, str]]:
    """(version, TF Serving state, error message) of the model's versions, or the one asked for.
    Only a failed version has an error: an available one's reason (it serves in place of a
    failed one) is no error to TF Serving's clients."""
    model = engine.status().get(name)
    if model is None:
        raise NotFound(f"Could not find any versions of model {name}", "model_spec")
    if label is not None:
        version = model.labels.get(label, -1)
    found = [(number, STATES[status.state], status.reason if status.state is VersionState.FAILED else "")
             for number, status in model.versions.items() if version is None or number == version]
    if not found:
        raise NotFound(f"Could not find version {version if label is None else label} of model {name}", "model_spec")
    return found
