"""The manager's request side: which available version answers a request, and what the
manager reports of every version. Reads the state the lifecycle (lifecycle.py) keeps:
`_routes` (replaced, never mutated: read without a lock), `_found`, `_slots` (under `_lock`)."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import NotFound
from ..models import ServedModel
from ..repository import ModelConfig, ModelRef
from .status import ModelStatus


class Routing:
    """Mixed into `Manager`."""

    def resolve(self, ref: ModelRef, key: str = "") -> ServedModel:
        """The available version `ref` names: its version, its label's, or, for the model's
        name alone, the traffic split's choice for `key` (the caller), or the newest."""
        routes = self._routes.get(ref.name)
        if routes is None:
            raise NotFound(f"no model named {ref.name!r}", "model")
        number = self._number(ref)
        if number is None and routes:
            number = self._split(ref.name, routes, key)
        model = routes.get(number)
        if model is None:
            state = self._state(ref.name, number)
            raise NotFound(f"{ref}: version {number} is not available{f' ({state})' if state else ''}", "model")
        return model

    def _split(self, name: str, routes: Mapping[int, ServedModel], key: str) -> int:
        config = self._found.configs.get(name)
        return config.split(set(routes), key) if config else max(routes)

    def shadow(self, name: str, primary: ServedModel) -> ServedModel | None:
        """The version the model's `shadow` names, when it is available and not `primary`."""
        config = self._found.configs.get(name)
        number = config.version_of(config.shadow) if config and config.shadow else None
        model = self._routes.get(name, {}).get(number)
        return model if model is not primary else None

    def _number(self, ref: ModelRef) -> int | None:
        if ref.label is None:
            return ref.version
        labels = self._found.configs.get(ref.name, ModelConfig(ref.name)).labels
        if ref.label not in labels:
            raise NotFound(f"model {ref.name!r} has no label {ref.label!r}; its labels: {sorted(labels)}", "model")
        return labels[ref.label]

    def _state(self, name: str, number: int | None) -> str:
        slot = self._slots.get(name, {}).get(number)
        return f"{slot.state}: {slot.reason}" if slot and slot.reason else slot.state if slot else ""

    def sources(self) -> dict[str, dict[str, str]]:
        """The last scan's unavailable sources (what they served keeps serving) and ignored folders."""
        return {"unavailable": dict(self._found.unavailable), "ignored": dict(self._found.ignored)}

    def default(self, kind: str) -> str | None:
        return self._found.defaults.get(kind)

    def knows(self, name: str) -> bool:
        """Whether any version of `name` has a state (cheap: on every request's path)."""
        return name in self._slots

    def available(self, name: str) -> bool:
        return bool(self._routes.get(name))

    def available_versions(self, name: str) -> set[int]:
        return set(self._routes.get(name, {}))

    def status(self) -> dict[str, ModelStatus]:
        """Every model with a version that has a state: its versions' snapshots, labels, policy."""
        configs = self._found.configs
        with self._lock:
            return {name: _model_status(name, versions, configs.get(name)) for name, versions in self._slots.items()}


def _model_status(name: str, slots: Mapping, config: ModelConfig | None) -> ModelStatus:
    labels, policy = dict(config.labels) if config else {}, str(config.policy) if config else ""
    return ModelStatus(name, {number: slots[number].status(labels, policy) for number in sorted(slots)}, labels, policy)
