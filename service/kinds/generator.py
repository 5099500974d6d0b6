"""The generator kind: latent vectors (and class ids) in, images out.

Items are (latent row, class id); each batch is one call of the card's `numeric_signature`
(`serving_default`) or its LiteRT twin. Requests give latents, or a seed to draw them from
(numpy's RandomState: frozen across versions, so a seed's images stay reproducible), or
two end points to walk between. Latents drawn from a seed are truncated and scaled by ψ
(`contract.latents.truncated_latents`, the function the evaluation measures): a request
without ψ gets the card's `truncation_psi`, the value its trainer measured to give better
samples. Given latents are used as they are, so a returned latent always reproduces its
image. The tensor protocols' `generate_seeded` draws exactly as the SavedModel's own graph
does (`contract.latents.seeded_latents`, no truncation), whatever runtime serves the model.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import secrets
from collections.abc import Sequence

import numpy as np

from contract.card import CardError
from contract.latents import check_psi, seeded_class_ids, seeded_latents, truncated_latents
from service.core.config import Settings
from service.core.errors import ValidationError
from service.core.models import ModelInfo, ServedModel
from service.core.validation import decimal, shown

MAX_SEED = 2**32 - 1  # numpy's RandomState streams are frozen across versions: seeds stay reproducible


@dataclasses.dataclass(frozen=True)
class Generation:
    model: ModelInfo
    images: np.ndarray  # uint8 [N, H, W, C]
    latents: np.ndarray  # float32 [N, latent_dim]: feed them back to get the same images
    class_ids: np.ndarray  # int32 [N]
    class_names: list[str | None]
    seed: int | None  # set when the latents were drawn from a seed
    psi: float | None  # the truncation they were drawn with: the same seed and ψ give the same images


@dataclasses.dataclass(frozen=True)
class Latents:
    """What the generator runs for a request: one latent row and class id per image."""

    latents: np.ndarray  # float32 [N, latent_dim]
    class_ids: np.ndarray  # int32 [N]
    seed: int | None  # set when the latents were drawn from a seed
    psi: float | None = None  # set when they were drawn (from seeds) with a truncation


@functools.cache
def images_generated():
    """The generator's own series, beside the core's on /metrics (service/core/metrics.py), made
    once on first use: deploy/prometheus's rules and the dashboards read it by this name."""
    import prometheus_client as prom

    return prom.Counter("diptych_images_generated", "Images generated", ["model", "version"])


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


class Generator(ServedModel):
    kind = "generator"
    default_model = "generator:latest"
    wire = "service.kinds.generator_wire"
    card_fields = ("latent_dim", "classes", "conditional", "image_size", "channels")
    tensor_runners = {frozenset({"latents", "class_ids"}): "render_tensors",
                      frozenset({"seed", "count", "class_id"}): "render_seeded"}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        card = self.info.card
        self.latent_dim: int = card.latent_dim
        self.conditional: bool = card.conditional
        self.classes: list[str] = list(card.classes)
        self._class_count = len(self.classes) if self.conditional else 1  # an unconditional model has class 0
        self.default_psi = self._card_psi()
        self._generated = images_generated().labels(model=self.info.name, version=self.info.version)

    # -- requests ------------------------------------------------------------------
    async def generate(self, count: int | None = None, seed: int | None = None, class_: int | str | None = None,
                       latents: Sequence[Sequence[float]] | None = None, psi: float | None = None) -> Generation:
        return await self.render_plan(self.plan(count, seed, class_, latents, psi))

    async def interpolate(self, seeds: Sequence[int] | None = None,
                          latents: Sequence[Sequence[float]] | None = None, steps: int = 8,
                          class_: int | str | None = None, psi: float | None = None) -> Generation:
        return await self.render_plan(self.plan_interpolation(seeds, latents, steps, class_, psi))

    async def render(self, latents: np.ndarray, class_ids: np.ndarray) -> Generation:
        """One image per (latent row, class id), as the generator's own signature takes them."""
        return await self.render_plan(self.plan_rows(latents, class_ids))

    async def render_plan(self, plan: Latents) -> Generation:
        images = await self.infer(zip(plan.latents, plan.class_ids.tolist()))
        names = [self.classes[i] if self.conditional else None for i in plan.class_ids]
        # The latents and classes make every logged image again.
        self.log_exchange(lambda: {"seed": plan.seed, "psi": plan.psi, "latents": plan.latents.tolist(),
                                   "class_ids": plan.class_ids.tolist()}, lambda: self.describe(images))
        return Generation(self.info, np.stack(images), plan.latents, plan.class_ids, names, plan.seed, plan.psi)

    def describe(self, results: list[np.ndarray]) -> dict[str, list]:
        """The payload log's view of generated images: the sha256 of each one's uint8 pixels."""
        return {"images": [{"sha256": hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()}
                           for image in results]}

    # -- what a request asks for, checked ---------------------------------------------
    def plan(self, count: int | None, seed: int | None, class_: int | str | None,
             latents: Sequence[Sequence[float]] | None, psi: float | None = None) -> Latents:
        """`latents`, or `count` images from `seed` (random when absent) at truncation `psi`
        (the card's default when absent); classes cycle unless given."""
        if latents is not None and seed is not None:
            raise ValidationError("seed", "give either latents or a seed, not both")
        if latents is not None:
            self._no_psi_with_latents(psi)
            if count is not None and count != len(latents):
                raise ValidationError("count", f"is {count} but {len(latents)} latents were given")
            image_count(len(latents), self.settings, "latents")
            return Latents(self.latent_rows(latents), self._class_ids(len(latents), class_), None)
        count = image_count(1 if count is None else count, self.settings)
        seed, psi = random_seed(seed), self.truncation(psi)
        return Latents(self.latents_for_seed(seed, count, psi), self._class_ids(count, class_), seed, psi)

    def plan_interpolation(self, seeds: Sequence[int] | None, latents: Sequence[Sequence[float]] | None,
                           steps: int, class_: int | str | None, psi: float | None = None) -> Latents:
        """Two end points (latents, or seeds drawn at truncation `psi`) → `steps` latents along
        the great circle between them."""
        if (seeds is None) == (latents is None):
            raise ValidationError("seeds", "give exactly one of seeds or latents (two of them)")
        field, ends = ("seeds", seeds) if seeds is not None else ("latents", latents)
        if len(ends) != 2:
            raise ValidationError(field, f"needs exactly 2 end points, got {len(ends)}")
        if not 2 <= steps <= self.settings.max_steps:
            raise ValidationError("steps", f"must be between 2 and {self.settings.max_steps}")
        if seeds is not None:
            psi = self.truncation(psi)
            start, end = (self.latents_for_seed(random_seed(s, f"seeds[{i}]"), 1, psi)[0] for i, s in enumerate(seeds))
        else:
            self._no_psi_with_latents(psi)
            start, end = self.latent_rows(latents)
        fixed = self.class_id(class_) or 0
        return Latents(slerp(start, end, steps), np.full(steps, fixed, np.int32), None, psi)

    def plan_rows(self, latents: np.ndarray, class_ids: np.ndarray) -> Latents:
        if len(class_ids) != len(latents):
            raise ValidationError("class_ids", f"has {len(class_ids)} values for {len(latents)} latents")
        image_count(len(latents), self.settings, "latents")
        for i, value in enumerate(class_ids.tolist()):
            if not 0 <= value < self._class_count:
                raise ValidationError(f"class_ids[{i}]", f"unknown class {value}: use an id 0-{self._class_count - 1}")
        return Latents(self.latent_rows(latents), np.asarray(class_ids, np.int32), None)

    # -- the tensor protocols' signatures --------------------------------------------
    async def render_tensors(self, latents: np.ndarray, class_ids: np.ndarray) -> dict[str, np.ndarray]:
        return {"images": (await self.render(latents, class_ids)).images}

    async def render_seeded(self, seed: np.ndarray, count: np.ndarray, class_id: np.ndarray) -> dict[str, np.ndarray]:
        """`generate_seeded`: the latents the SavedModel's own graph draws for this seed."""
        count = image_count(int(count), self.settings)
        if not -1 <= int(class_id) < self._class_count:
            raise ValidationError("class_id", f"must be -1 (cycle through the classes) or an id 0-"
                                              f"{self._class_count - 1}")
        latents = seeded_latents(int(seed), count, self.latent_dim).numpy()
        class_ids = seeded_class_ids(int(class_id), count, self._class_count).numpy()
        result = await self.render(latents, class_ids)
        return {"images": result.images, "latents": result.latents, "class_ids": result.class_ids}

    def class_id(self, value: int | str | None, field: str = "class") -> int | None:
        """A class name or id (an int, or a string of digits) → id; None stays None."""
        if value is None:
            return None
        if not self.conditional:
            raise ValidationError(field, "this generator is unconditional: it takes no class")
        if isinstance(value, str) and value in self.classes:
            return self.classes.index(value)
        number = value if isinstance(value, int) else decimal(value)
        if number is not None and 0 <= number < len(self.classes):
            return number
        raise ValidationError(
            field, f"unknown class {shown(value)}: use a name from {self.classes} or an id 0-{len(self.classes) - 1}"
        )

    def _class_ids(self, count: int, class_: int | str | None) -> np.ndarray:
        """The given class for every image, or the classes in turn (class 0 when unconditional)."""
        fixed = self.class_id(class_)
        ids = np.arange(count) % self._class_count if fixed is None else np.full(count, fixed)
        return ids.astype(np.int32)

    def latents_for_seed(self, seed: int, count: int, psi: float | None = None) -> np.ndarray:
        """`count` latents from `seed`, truncated at ψ (the card's default when None)."""
        return truncated_latents(seed, count, self.latent_dim, self.truncation(psi))

    def truncation(self, psi: float | None) -> float:
        """The request's ψ, checked, or the card's default."""
        if psi is None:
            return self.default_psi
        try:
            return check_psi(psi)
        except ValueError as error:
            raise ValidationError("psi", str(error)) from None

    def _no_psi_with_latents(self, psi: float | None) -> None:
        """ψ scales the latents drawn from a seed; given latents (a returned image's, say)
        are used as they are, or they would no longer reproduce their image."""
        if psi is not None:
            raise ValidationError("psi", "applies to latents drawn from a seed; given latents are used as they are")

    def _card_psi(self) -> float:
        """The card's measured ψ; 1 (the truncation alone) for a card without one: an export
        made without its evaluation (--no-evaluate), or before ψ existed."""
        psi = self.info.card.truncation_psi
        if psi is None:
            return 1.0
        try:
            return check_psi(psi)
        except ValueError as error:
            model = f"{self.info.name}:{self.info.version}"
            raise CardError(f"the generator card of {model}: truncation_psi {error}") from None

    def latent_rows(self, value: Sequence[Sequence[float]], field: str = "latents") -> np.ndarray:
        for i, row in enumerate(value):
            if len(row) != self.latent_dim:
                raise ValidationError(f"{field}[{i}]", f"has {len(row)} values; the generator takes {self.latent_dim}")
        rows = np.asarray(value, dtype=np.float32).reshape(len(value), self.latent_dim)
        if not np.isfinite(rows).all():
            raise ValidationError(field, "must be finite numbers (no NaN or infinity)")
        return rows

    # -- batches -------------------------------------------------------------------
    def example(self, size: int) -> dict[str, np.ndarray]:
        return {"latents": np.zeros((size, self.latent_dim), np.float32), "class_ids": np.zeros(size, np.int32)}

    def run_batch(self, items: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        latents = np.stack([latent for latent, _ in items]).astype(np.float32)
        class_ids = np.array([class_id for _, class_id in items], np.int32)
        images = self.run({"latents": latents, "class_ids": class_ids})["images"]
        self._generated.inc(len(items))
        return list(images)


def slerp(start: np.ndarray, end: np.ndarray, steps: int) -> np.ndarray:
    """Spherical interpolation keeps Gaussian latents at a typical norm (a straight line sags)."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    cosine = np.dot(start, end) / (np.linalg.norm(start) * np.linalg.norm(end) + 1e-12)
    omega = np.arccos(np.clip(cosine, -1.0, 1.0))
    if omega < 1e-6:
        return ((1 - t) * start + t * end).astype(np.float32)
    return ((np.sin((1 - t) * omega) * start + np.sin(t * omega) * end) / np.sin(omega)).astype(np.float32)
