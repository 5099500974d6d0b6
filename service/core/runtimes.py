"""Runtimes by name: the `classifier_runtime` / `generator_runtime` settings name a class
registered here, and choosing one is a lookup in `RUNTIMES` (so is checking the setting).

A registered class has a `name` and a class method `open(info, settings, check)` that returns
the `Runtime` (contract/runtime.py) that will run the model, and the report of any conversion
it made (shown in `ModelInfo.conversion`), or None; `check` names how the model's kind compares
a conversion's outputs with TensorFlow's (contract/checks.py). The runtime it returns may be another one's:
`litert` falls back to TensorFlow when its conversion does not prove itself, `auto` chooses.
A new runtime (ONNX Runtime, TensorFlow on a GPU) is one module with one such class under
`@register`, and its import line at the end of this module, so that it registers before any
settings are read (docs/architecture.md, "Adding a runtime").
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from contract.litert import Conversion, convert_apart
from contract.runtime import LITERT, TENSORFLOW, LiteRTRuntime, Runtime, SavedModelRuntime, cores

if TYPE_CHECKING:
    from .config import Settings
    from .models import ModelInfo

log = logging.getLogger("diptych")


class RuntimeClass(Protocol):
    name: ClassVar[str]

    @classmethod
    def open(cls, info: ModelInfo, settings: Settings, check: str) -> tuple[Runtime, dict[str, Any] | None]: ...


RUNTIMES: dict[str, type[RuntimeClass]] = {}


def register(runtime: type[RuntimeClass]) -> type[RuntimeClass]:
    """Make `runtime` selectable by its name (a class decorator)."""
    RUNTIMES[runtime.name] = runtime
    return runtime


def runtime_named(name: str, setting: str = "runtime") -> type[RuntimeClass]:
    """The class registered as `name`; a ValueError naming the registered ones otherwise."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ValueError(f"setting {setting} must be one of the registered runtimes ({', '.join(sorted(RUNTIMES))}), "
                         f"got {name!r}") from None


def described(info: ModelInfo) -> str:
    return f"{info.kind} {info.name}:{info.version}"


@register
class TensorFlow:
    """The SavedModel's signature, called by TensorFlow: never converts."""

    name = TENSORFLOW

    @classmethod
    def open(cls, info: ModelInfo, settings: Settings, check: str) -> tuple[Runtime, dict[str, Any] | None]:
        log.info("%s runs on TensorFlow, as configured", described(info))
        return cls.saved_model(info), None

    @staticmethod
    def saved_model(info: ModelInfo) -> Runtime:
        return SavedModelRuntime(info.path, info.card.numeric_signature)


@register
class LiteRT:
    """A pool of `interpreters` LiteRT interpreters whenever the conversion proves itself by
    the kind's `check` (stored by training.publish, else made now in a process of its own);
    TensorFlow, with a warning that says why, when it does not."""

    name = LITERT

    @classmethod
    def open(cls, info: ModelInfo, settings: Settings, check: str) -> tuple[Runtime, dict[str, Any] | None]:
        model, interpreters = described(info), settings.interpreters or cores()
        conversion = Conversion.load(info.path)
        if conversion is None:
            log.info("%s has no stored LiteRT conversion: converting it now, in a process of its own "
                     "(training.publish stores one)", model)
            conversion = convert_apart(info.path, info.card, interpreters)
        conversion = conversion.judged(check)
        if not conversion.verified:
            log.warning("%s runs on TensorFlow: its LiteRT conversion is not used: %s", model,
                        conversion.report["reason"])
        elif cls.prefers(conversion):
            log.info("%s runs on LiteRT, %d single-threaded interpreters (%s; CPU ms per image as measured: %s)",
                     model, interpreters, conversion.report["reason"], conversion.report["cpu_ms_per_image"])
            return LiteRTRuntime(conversion.flatbuffer, interpreters), conversion.report
        else:
            log.info("%s runs on TensorFlow: it measured cheaper than LiteRT (CPU ms per image: %s)", model,
                     conversion.report["cpu_ms_per_image"])
        return TensorFlow.saved_model(info), conversion.report

    @staticmethod
    def prefers(conversion: Conversion) -> bool:
        """Whether a verified conversion is used."""
        return True


@register
class Auto(LiteRT):
    """LiteRT where its verified conversion measured cheaper in CPU per image, else TensorFlow
    (on a CPU: what DESIGN.md §6 measured)."""

    name = "auto"

    @staticmethod
    def prefers(conversion: Conversion) -> bool:
        return conversion.faster
