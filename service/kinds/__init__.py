"""Kinds of model, as plugins: one module each, owning everything specific to its kind.

A kind is a `ServedModel` subclass (service/core/models.py): the card's `kind` it serves,
the card fields it needs, how a batch of its items runs, a warm-up batch, its request
checks and operations (what the protocol adapters call), and the SavedModel signatures it
serves to the tensor protocols (TF Serving, Open Inference Protocol). The engine knows no
kind: it is handed this registry. Adding a kind is a module and one line here
(docs/architecture.md, "Adding a model kind").
"""

from service.core.models import ServedModel

from .classifier import Classification, Classifier, Scores
from .generator import Generation, Generator

KINDS: dict[str, type[ServedModel]] = {kind.kind: kind for kind in (Classifier, Generator)}

__all__ = ["KINDS", "Classification", "Classifier", "Generation", "Generator", "Scores"]
