"""Request checks that every kind of model shares: counts, seeds, digit strings.

Types are the adapters' job (JSON schema, protobuf); what is specific to a kind (label
sets, latent shapes, image headers) is checked in that kind's module; these are the
checks they have in common, written once. Each raises `ValidationError(field, problem)`.
"""

from __future__ import annotations

import secrets

from .config import Settings
from .errors import ValidationError

MAX_SEED = 2**32 - 1  # numpy's RandomState streams are frozen across versions: seeds stay reproducible


def decimal(text: str) -> int | None:
    """A string of ASCII digits (spaces around allowed) as an int, else None. `str.isdigit`
    alone also takes digits such as "²" that `int()` refuses."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def random_seed(value: int | None, field: str = "seed") -> int:
    """A given seed, checked, or a fresh random one (reported back so the call can be repeated)."""
    if value is None:
        return secrets.randbelow(MAX_SEED + 1)
    if not 0 <= value <= MAX_SEED:
        raise ValidationError(field, f"must be between 0 and {MAX_SEED}")
    return value


def image_count(value: int, settings: Settings, field: str = "count") -> int:
    if not 1 <= value <= settings.max_generate:
        raise ValidationError(field, f"must be between 1 and {settings.max_generate} images")
    return value
