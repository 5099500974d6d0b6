"""Request checks shared by every protocol: they turn loose request values into exactly
what the models run, or raise `ValidationError(field, problem)`.

Types are the adapters' job (JSON schema, protobuf); ranges, limits, label sets, latent
shapes and finiteness are checked here, once.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Sequence

import numpy as np

from .config import Settings
from .errors import LimitExceeded, ValidationError
from .images import prepare
from .models import Generator

MAX_SEED = 2**32 - 1  # numpy's RandomState streams are frozen across versions: seeds stay reproducible


@dataclasses.dataclass(frozen=True)
class Latents:
    """What the generator runs: one latent row and class id per image."""

    latents: np.ndarray  # float32 [N, latent_dim]
    class_ids: np.ndarray  # int32 [N]
    seed: int | None  # set when the latents were drawn from a seed


def images(data: Sequence[bytes], settings: Settings) -> list[tuple[bytes, str]]:
    """Encoded images → (bytes the graph decodes, field name) items."""
    if not data:
        raise ValidationError("images", "no images given")
    if len(data) > settings.max_images:
        raise LimitExceeded("images", f"{len(data)} images; at most {settings.max_images} per request")
    return [(prepare(item, f"images[{i}]", settings.max_pixels), f"images[{i}]") for i, item in enumerate(data)]


def top_k(value: int, labels: Sequence[str]) -> int:
    if not 1 <= value <= len(labels):
        raise ValidationError("top_k", f"must be between 1 and {len(labels)} (the number of classes)")
    return value


def class_id(value: int | str | None, generator: Generator, field: str = "class") -> int | None:
    """A class name or id (an int, or a string of digits) → id; None stays None."""
    if value is None:
        return None
    if not generator.conditional:
        raise ValidationError(field, "this generator is unconditional: it takes no class")
    if isinstance(value, str) and value in generator.classes:
        return generator.classes.index(value)
    if isinstance(value, int) or decimal(value) is not None:
        if 0 <= int(value) < len(generator.classes):
            return int(value)
    raise ValidationError(
        field, f"unknown class {value!r}: use a name from {generator.classes} or an id 0-{len(generator.classes) - 1}"
    )


def decimal(text: str) -> int | None:
    """A string of ASCII digits (spaces around allowed) as an int, else None. `str.isdigit`
    alone also takes digits such as "²" that `int()` refuses."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def seed(value: int | None, field: str = "seed") -> int:
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


def latents_for_seed(value: int, count: int, dim: int) -> np.ndarray:
    return np.random.RandomState(value).standard_normal((count, dim)).astype(np.float32)


def latent_rows(value: Sequence[Sequence[float]], dim: int, field: str = "latents") -> np.ndarray:
    for i, row in enumerate(value):
        if len(row) != dim:
            raise ValidationError(f"{field}[{i}]", f"has {len(row)} values; the generator takes {dim}")
    rows = np.asarray(value, dtype=np.float32).reshape(len(value), dim)
    if not np.isfinite(rows).all():
        raise ValidationError(field, "must be finite numbers (no NaN or infinity)")
    return rows


def generation(
    count: int | None,
    seed_value: int | None,
    class_value: int | str | None,
    latents: Sequence[Sequence[float]] | None,
    generator: Generator,
    settings: Settings,
) -> Latents:
    """`latents`, or `count` images from `seed` (random when absent); classes cycle unless given."""
    if latents is not None and seed_value is not None:
        raise ValidationError("seed", "give either latents or a seed, not both")
    if latents is not None:
        if count is not None and count != len(latents):
            raise ValidationError("count", f"is {count} but {len(latents)} latents were given")
        count = len(latents)
    count = image_count(1 if count is None else count, settings, "latents" if latents is not None else "count")
    if latents is not None:
        rows, used_seed = latent_rows(latents, generator.latent_dim), None
    else:
        used_seed = seed(seed_value)
        rows = latents_for_seed(used_seed, count, generator.latent_dim)
    fixed = class_id(class_value, generator)
    ids = np.arange(count) % max(len(generator.classes), 1) if fixed is None else np.full(count, fixed)
    return Latents(rows, (ids if generator.conditional else np.zeros(count)).astype(np.int32), used_seed)


def rows(latents: np.ndarray, class_ids: np.ndarray, generator: Generator, settings: Settings) -> Latents:
    """Explicit rows, as the generator's own signature takes them: a latent and a class id each."""
    if len(class_ids) != len(latents):
        raise ValidationError("class_ids", f"has {len(class_ids)} values for {len(latents)} latents")
    image_count(len(latents), settings, "latents")
    classes = len(generator.classes) if generator.conditional else 1
    for i, value in enumerate(class_ids.tolist()):
        if not 0 <= value < classes:
            raise ValidationError(f"class_ids[{i}]", f"unknown class {value}: use an id 0-{classes - 1}")
    return Latents(latent_rows(latents, generator.latent_dim), np.asarray(class_ids, np.int32), None)


def interpolation(
    seeds: Sequence[int] | None,
    latents: Sequence[Sequence[float]] | None,
    steps: int,
    class_value: int | str | None,
    generator: Generator,
    settings: Settings,
) -> Latents:
    """Two end points (latents, or seeds) → `steps` latents along the great circle between them."""
    if (seeds is None) == (latents is None):
        raise ValidationError("seeds", "give exactly one of seeds or latents (two of them)")
    field, ends = ("seeds", seeds) if seeds is not None else ("latents", latents)
    if len(ends) != 2:
        raise ValidationError(field, f"needs exactly 2 end points, got {len(ends)}")
    if not 2 <= steps <= settings.max_steps:
        raise ValidationError("steps", f"must be between 2 and {settings.max_steps}")
    if seeds is not None:
        start, end = (latents_for_seed(seed(s, f"seeds[{i}]"), 1, generator.latent_dim)[0] for i, s in enumerate(seeds))
    else:
        start, end = latent_rows(latents, generator.latent_dim)
    fixed = class_id(class_value, generator) or 0
    return Latents(slerp(start, end, steps), np.full(steps, fixed, np.int32), None)


def slerp(start: np.ndarray, end: np.ndarray, steps: int) -> np.ndarray:
    """Spherical interpolation keeps Gaussian latents at a typical norm (a straight line sags)."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    cosine = np.dot(start, end) / (np.linalg.norm(start) * np.linalg.norm(end) + 1e-12)
    omega = np.arccos(np.clip(cosine, -1.0, 1.0))
    if omega < 1e-6:
        return ((1 - t) * start + t * end).astype(np.float32)
    return ((np.sin((1 - t) * omega) * start + np.sin(t * omega) * end) / np.sin(omega)).astype(np.float32)
