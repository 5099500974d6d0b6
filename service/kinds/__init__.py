"""Kinds of model, as plugins: one module each, owning everything specific to its kind.

A kind is a `ServedModel` subclass (service/core/models.py): the card's `kind` it serves,
its default model, how a batch of its items runs, a warm-up batch, its request checks and
operations, the SavedModel signatures it serves to the tensor protocols, and its wire
(`wire.py`: its HTTP routes, diptych.v1 methods, bulk jobs and playground panel), which
the adapters iterate. The engine and the adapters know no kind: they are handed this
registry. Adding a kind is a module and one line: here for a shipped kind, or the
`kind_modules` setting for one kept elsewhere (docs/architecture.md, "Adding a model kind").
"""

from __future__ import annotations

import functools
import importlib

from contract.checks import checked
from service.core.models import ServedModel

from .classifier import Classification, Classifier, Scores
from .generator import Generation, Generator

KINDS: dict[str, type[ServedModel]] = {kind.kind: kind for kind in (Classifier, Generator)}


@functools.cache
def registered(kind_modules: tuple[str, ...] = ()) -> dict[str, type[ServedModel]]:
    """The shipped kinds, then the kind each of `kind_modules` defines as `KIND`. A module that
    cannot be imported, whatever it raises, and a kind whose `wire` module cannot, are a
    ValueError naming the setting, checked with the settings (not at the first request)."""
    kinds = dict(KINDS)
    for name in kind_modules:
        try:
            kind = importlib.import_module(name).KIND
        except Exception as error:
            raise ValueError(f"setting kind_modules: {name}: {type(error).__name__}: {error} "
                             "(a kind module defines KIND)") from None
        if not (isinstance(kind, type) and issubclass(kind, ServedModel) and kind.kind):
            raise ValueError(f"setting kind_modules: {name}.KIND is not a ServedModel subclass with a kind")
        try:
            checked(kind.conversion_check)
        except ValueError as error:
            raise ValueError(f"setting kind_modules: {name}.KIND.conversion_check: {error}") from None
        if kind.kind in kinds and kinds[kind.kind] is not kind:
            raise ValueError(f"setting kind_modules: {name} registers the kind {kind.kind!r} again")
        _check_wire(name, kind)
        kinds[kind.kind] = kind
    return kinds


def _check_wire(name: str, kind: type[ServedModel]) -> None:
    from .wire import Wire, wire_of

    try:
        wire = wire_of(kind)
    except Exception as error:
        raise ValueError(f"setting kind_modules: {name}: the wire of kind {kind.kind!r}, {kind.wire}: "
                         f"{type(error).__name__}: {error} (a wire module defines WIRE)") from None
    if not isinstance(wire, Wire):
        raise ValueError(f"setting kind_modules: {name}: {kind.wire}.WIRE is not a service.kinds.wire.Wire")


__all__ = ["KINDS", "Classification", "Classifier", "Generation", "Generator", "Scores", "registered"]
