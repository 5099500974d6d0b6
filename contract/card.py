"""The model card: `model_card.json` beside `saved_model.pb`, one typed class for both sides.

Training writes it once, after evaluation; serving, publishing and the tools read it with
`ModelCard.read`, which checks it once: the schema version, the types, no unknown keys. A
card it cannot read is refused with a `CardError` that names the file and the problem, so a
model exported by an older diptych fails at load with "export it again", not later with a
KeyError. Fields that only some kinds have (images, labels, latents) are optional here; a
kind says which it needs (`require`), in its own module, and a kind's own fields go in
`kind_fields`, which that kind checks.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

FILE = "model_card.json"
SCHEMA = 2  # 1: the untyped cards before this class (no `schema`, no `numeric_signature`)

# What a card may declare, checked when it is read, before anything is allocated for it: a
# card is read before its model is loaded and warmed up, and warm-up allocates batches of its
# `image_size`, `channels` and `latent_dim` (a card saying 20000×20000 asked for tens of GB and
# the worker was OOM-killed). Numbers: (lowest, highest); lists: (fewest, most) entries.
BOUNDS: dict[str, tuple[float, float]] = {
    "version": (0, 2**63 - 1),  # int64, as TF Serving counts
    "image_size": (1, 2048),  # each of H and W: 2048² × 3 bytes is 12 MiB an image
    "channels": (1, 4),
    "tolerance": (0, 1e6),
    "labels": (1, 100_000),  # the classifier's score width
    "classes": (1, 100_000),
    "latent_dim": (1, 65_536),
    "max_batch": (1, 4096),
    "truncation_psi": (0, 10),
    "temperature": (0.01, 100),
    "ece_uncalibrated": (0, 1),
    "ece_calibrated": (0, 1),
}


class CardError(ValueError):
    """A model card that cannot be read: the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class ModelCard:
    kind: str  # what serves it: a registered model kind (classifier, generator)
    name: str  # the served name, and the model store's tag name
    version: int  # the version folder's number, as TF Serving counts
    numeric_signature: str  # the signature TensorFlow serves and LiteRT converts: numbers in, numbers out
    tolerance: float  # the largest difference of any output that LiteRT may show against TensorFlow
    image_size: tuple[int, int] | None = None  # [H, W] of the images the model takes or makes
    channels: int | None = None
    created: str = ""
    schema: int = SCHEMA
    signatures: dict[str, str] = dataclasses.field(default_factory=dict)  # name → what it takes and returns
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    # classifier
    labels: list[str] | None = None
    backbone: str | None = None
    dataset: str | None = None
    per_class_counts: dict[str, int] | None = None
    # temperature scaling (training/calibration.py), already in the export's scores: absent on
    # older cards (T = 1); the expected calibration error (10 bins) on the test split without and with it
    temperature: float | None = None
    ece_uncalibrated: float | None = None
    ece_calibrated: float | None = None
    # generator
    latent_dim: int | None = None
    classes: list[str] | None = None
    conditional: bool | None = None
    max_batch: int | None = None
    truncation_psi: float | None = None  # the ψ a request without one gets, chosen by measurement (docs/gan.md)
    # a kind's own section, which that kind checks (`ServedModel.check_card`): a new kind's fields
    kind_fields: dict[str, Any] | None = None

    @classmethod
    def new(cls, **fields: Any) -> ModelCard:
        """A card for an export made now."""
        created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        return cls.parse({"created": created, **fields, "schema": SCHEMA}, "the new card")

    @classmethod
    def read(cls, folder: str | os.PathLike) -> ModelCard:
        path = Path(folder) / FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CardError(f"{path}: no model card ({FILE}) beside the SavedModel") from None
        except (OSError, ValueError) as error:
            raise CardError(f"{path}: not readable JSON ({error})") from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: Any, where: str) -> ModelCard:
        if not isinstance(data, dict):
            raise CardError(f"{where}: a model card is a JSON object")
        if data.get("schema") != SCHEMA:
            raise CardError(f"{where}: model card schema {data.get('schema', 1)}; this diptych reads schema "
                            f"{SCHEMA}: export the model again with this version's training commands")
        known = {field.name: field for field in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - set(known)):
            raise CardError(f"{where}: unknown model card fields {unknown}")
        if missing := sorted(name for name, field in known.items() if _required(field) and name not in data):
            raise CardError(f"{where}: model card fields missing: {missing}")
        values = {name: _checked(where, name, value) for name, value in data.items()}
        for name, value in values.items():
            _bounded(where, name, value)
        return cls(**values)

    def require(self, *names: str) -> None:
        """Fail unless these optional fields are set: what a kind needs from its cards."""
        if missing := [name for name in names if getattr(self, name) is None]:
            raise CardError(f"the {self.kind} card of {self.name}:{self.version} lacks {missing}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, without the fields this kind does not have."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items() if value is not None}

    def write(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


_HINTS = typing.get_type_hints(ModelCard)


def _checked(where: str, name: str, value: Any) -> Any:
    """`value` if it fits the field's type (JSON's lists become tuples where the field is one)."""
    hint = _HINTS[name]
    if not _fits(hint, value):
        spelled = str(hint).replace("typing.", "") if typing.get_args(hint) else hint.__name__
        raise CardError(f"{where}: model card field {name!r} must be {spelled}, got {value!r}")
    fixed = any(typing.get_origin(form) is tuple for form in (hint, *typing.get_args(hint)))
    return tuple(value) if fixed and value is not None else value


def _bounded(where: str, name: str, value: Any) -> None:
    """Refuse a value outside `BOUNDS`, and a number that is not finite (NaN passes every comparison)."""
    if name not in BOUNDS or value is None:
        return
    low, high = BOUNDS[name]
    if isinstance(value, list):
        if not low <= len(value) <= high:
            raise CardError(f"{where}: model card field {name!r} has {len(value)} entries; {low:g} to {high:g} are "
                            "allowed")
        return
    for number in value if isinstance(value, tuple) else (value,):
        if not low <= number <= high:  # False for NaN
            raise CardError(f"{where}: model card field {name!r} is {value!r}; each value must be within "
                            f"{low:g} to {high:g}")


def _fits(hint: Any, value: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_fits(arg, value) for arg in args)
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_fits(args[0], item) for item in value)
    if origin is tuple:  # fixed length: image_size [H, W]
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(map(_fits, args, value))
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(key, str) and _fits(args[1], item)
                                               for key, item in value.items())
    return isinstance(value, hint)
