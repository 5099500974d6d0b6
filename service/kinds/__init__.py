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
    """The shipped kinds, then the kind each of `kind_modules` defines as `KIND`."""
    kinds = dict(KINDS)
    for name in kind_modules:
        try:
            kind = importlib.import_module(name).KIND
        except (ImportError, AttributeError) as error:
            raise ValueError(f"setting kind_modules: {name}: {error} (a kind module defines KIND)") from None
        if not (isinstance(kind, type) and issubclass(kind, ServedModel) and kind.kind):
            raise ValueError(f"setting kind_modules: {name}.KIND is not a ServedModel subclass with a kind")
        try:
            checked(kind.conversion_check)
        except ValueError as error:
            raise ValueError(f"setting kind_modules: {name}.KIND.conversion_check: {error}") from None
        if kind.kind in kinds and kinds[kind.kind] is not kind:
            raise ValueError(f"setting kind_modules: {name} registers the kind {kind.kind!r} again")
        kinds[kind.kind] = kind
    return kinds


__all__ = ["KINDS", "Classification", "Classifier", "Generation", "Generator", "Scores", "registered"]
