"""The manager's control half: the load/unload API (`model_control`) and a reloaded config,
what a request (or an edited config file) changes in what is served, applied by the next pass
over the repository (lifecycle.py), and shared with the service's other workers
(service/core/control.py).

A change is checked whole before anything changes, and then applied at once, or not at all:
each model's table (`ModelConfig.parse`, the one check), the folders a request names (under
`model_root` or `allowed_roots`: `Forbidden`), and what the repository holds (a `Conflict`:
the change would leave a default model with no version to serve, or its policy chooses none
of a named model's versions). A load whose newly asked-for version then fails to load is
rolled back: its own change, not what other calls changed meanwhile. Changes are made one at
a time, in this worker and among its siblings, each from the freshest shared state (`_changing`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from contract.layout import is_location

from ..config import Settings
from ..control import Control
from ..errors import Conflict, Forbidden, NotFound, ServiceError, ValidationError
from ..repository import Found, ModelConfig, Repository, parse_configs
from ..sources import trusted
from .status import VersionState

log = logging.getLogger("diptych")


FAILED = VersionState.FAILED
UNSAID = ("traffic", "shadow", "log_sample", "log_thumbnails", "promote", "feedback", "abstain_below")  # what TF Serving's ModelConfig cannot say


class ModelControl:
    """Mixed into `Manager`, whose state it changes (`_control`, `repository`, `_slots`)."""

    def load(self, name: str, version: int | None = None, table: Mapping[str, Any] | None = None) -> None:
        """Serve `name` again (after an unload), `version` beside its policy's, and its settings
        `table` if given (the whole table: a V2 load's `config`); then reconcile. When a version
        this change newly asks for fails to load, this change alone is undone (`_undo_load`):
        what other calls changed meanwhile stays."""
        with self._changing():
            configs, control = dict(self.repository.configs), copy.deepcopy(self._control)
            before = configs.get(name), set(control.explicit.get(name, set())), name in control.unloaded
            if table is not None:
                configs[name] = self._admitted(name, table)
                control.explicit.pop(name, None)
            control.unloaded.discard(name)
            if version is not None:
                control.explicit.setdefault(name, set()).add(version)
            found = self._checked(configs, control, {name})
            if version is not None and version not in {held.number for held in found.versions[name]}:
                raise ValidationError("version", f"{name} could not be loaded: version {version} is not in the "
                                                 "repository")
            asked = {held.number for held in set(_aspired(found, control, name)) -
                     set(_aspired(self._found, self._control, name))} | ({version} if version is not None else set())
            self._apply(configs if table is not None else None, control)
        for slot in [slot for slot in self._slots.get(name, {}).values() if slot.state == FAILED]:
            self._forget(slot)  # tried again
        self.reconcile()
        failed = [slot for slot in self._slots.get(name, {}).values() if slot.state == FAILED and
                  slot.version.number in asked]  # a version that failed before and is not asked for again: no matter
        if failed or not self.available(name):
            reason = failed[0].reason if failed else "no version of it is available"
            self._undo_load(name, version, configs.get(name) if table is not None else None, before)
            self.reconcile()
            raise ValidationError("name", f"{name} could not be loaded: {reason} (nothing was changed)")

    def _undo_load(self, name: str, version: int | None, config: ModelConfig | None,
                   before: tuple[ModelConfig | None, set[int], bool]) -> None:
        """Reverse a failed load's own change, on the freshest state: its table (unless another
        call replaced it since), its explicit version, its un-unload."""
        old_config, old_explicit, was_unloaded = before
        with self._changing():
            configs, control = dict(self.repository.configs), copy.deepcopy(self._control)
            explicit = control.explicit.setdefault(name, set())
            if config is not None and configs.get(name) == config:
                configs.pop(name)
                configs.update({name: old_config} if old_config is not None else {})
                explicit |= old_explicit
            if version is not None and version not in old_explicit:
                explicit.discard(version)
            if not explicit:
                control.explicit.pop(name)
            if was_unloaded:
                control.unloaded.add(name)
            self._apply(configs if config is not None else None, control)

    def unload(self, name: str, version: int | None = None) -> None:
        """Stop serving `name` (every version, or one loaded on request), after its requests finish."""
        with self._changing():  # a sibling worker may have loaded the version
            if name not in self._slots:
                raise NotFound(f"no model named {name!r} is loaded", "name")
            if version is None and name in self._found.defaults.values():
                raise Conflict("name", f"{name} is a default model: configure another default before unloading it")
            control = copy.deepcopy(self._control)
            if version is None:
                control.unloaded.add(name)
            elif version in control.explicit.get(name, set()):
                control.explicit[name].discard(version)
            else:  # an answer of OK would change nothing: the policy's versions stay
                raise ValidationError("version", f"{name} version {version} was not loaded on request: change the "
                                                 "model's version policy to stop serving a version it chose")
            self._apply(None, control)
        self.reconcile()

    def configure(self, configs: Mapping[str, ModelConfig]) -> None:
        """New settings for the models `configs` names, now; the others keep theirs. For those
        it names, it replaces what load and unload requests changed too."""
        self._change({name: config.table() for name, config in configs.items()}, replace=False)

    def reload(self, tables: Mapping[str, Mapping[str, Any]]) -> None:
        """TF Serving's ReloadConfig, whose list replaces the served models: each model it names
        gets the list's path, policy and labels (its traffic, shadow and payload log, which TF
        Serving's config cannot say, stay), and every other model is unloaded, as by an unload
        request. Leaving a default model out is a `Conflict`: a reload never retires one."""
        self._change(tables, replace=True)

    def config(self, name: str) -> ModelConfig | None:
        """`name`'s settings now (those `amend` compares with)."""
        return self.repository.configs.get(name)

    def promoting(self) -> list[str]:
        """The models whose settings say `promote` (a cheap look: the feedback path asks per call)."""
        return [name for name, config in self.repository.configs.items() if config.promote is not None]

    def amend(self, name: str, decided_on: ModelConfig, table: Mapping[str, Any]) -> None:
        """`name`'s settings `table`, whole, if they are still those a decision was taken on
        (`decided_on`: promotion.py); else a `Conflict` and nothing changes. Checked and applied
        as a load's table is, the versions loaded on request kept."""
        with self._changing():
            if self.repository.configs.get(name) != decided_on:
                raise Conflict("config", f"{name}: its settings changed since the decision; nothing was changed")
            configs = {**self.repository.configs, name: self._admitted(name, table)}
            control = copy.deepcopy(self._control)
            self._checked(configs, control, {name})
            self._apply(configs, control)
        self.reconcile()

    def _change(self, tables: Mapping[str, Mapping[str, Any]], replace: bool) -> None:
        with self._changing():
            current = self.repository.configs
            if replace:
                tables = {name: {**{key: value for key, value in current.get(name, ModelConfig(name)).table().items()
                                    if key in UNSAID}, **table} for name, table in tables.items()}
            configs = {**current, **{name: self._admitted(name, table) for name, table in tables.items()}}
            control = copy.deepcopy(self._control)
            for name in tables:
                control.explicit.pop(name, None)
                control.unloaded.discard(name)
            if replace:
                control.unloaded |= set(Repository(self.settings, configs, quiet=True).scan().versions) - set(tables)
            self._checked(configs, control, set(tables))
            self._apply(configs, control)
        self.reconcile()

    def _admitted(self, name: str, table: Mapping[str, Any]) -> ModelConfig:
        """A request's table for `name`, parsed, with its folder inside the model roots."""
        try:
            config = ModelConfig.parse(name, table)
        except ValueError as error:
            raise ValidationError("config", str(error)) from None
        if config.path is not None and is_location(config.path) and not self._trusted(name, config.path):
            raise Forbidden(f"{name}: path {config.path!r} is outside the model roots (model_root, allowed_roots); "
                            "nothing was changed", "config.path")
        return config

    def _trusted(self, name: str, path: str) -> bool:
        """Whether the folder or URL `path` is under `model_root` or `allowed_roots` (symlinks
        followed), or is what the model is configured with now (the operator's own config is trusted)."""
        current = self.repository.configs.get(name)
        configured = [ref for ref in (current.path if current else None, *self.settings.defaults().values())
                      if ref and is_location(ref)]
        return trusted(path, [root for root in (self.settings.model_root, *self.settings.allowed_roots) if root],
                       configured)

    def _checked(self, configs: Mapping[str, ModelConfig], control: Control, named: set[str]) -> Found:
        """What the repository would serve after the change, refused (nothing changed) when a
        model it names is not there or its policy chooses none of its versions, or when a default
        model that has versions to serve now would have none."""
        found = Repository(self.settings, configs, quiet=True).scan()
        if missing := sorted(named - set(found.versions)):
            raise NotFound(f"no model named {missing[0]!r} in the repository", "name")
        for kind, name in found.defaults.items():
            if _aspired(self._found, self._control, name) and not _aspired(found, control, name):
                why = "a reload config must name it" if name in control.unloaded else _none_chosen(found, name)
                raise Conflict("config", f"{name} is the default {kind}: the change would leave it no version to "
                                         f"serve ({why}); nothing was changed")
        for name in sorted(named):
            if not _aspired(found, control, name):
                raise Conflict("config", f"{name}: {_none_chosen(found, name)}; nothing was changed")
        return found

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """One change at a time, in this worker (`_reconciling`: not during a pass either) and
        among its siblings (the shared file's lock), each started from the freshest shared
        state: a change never writes back a stale copy of another that was accepted meanwhile.
        Every change of `_control` and of the configs happens inside."""
        with self._reconciling:
            if self._shared is None:
                yield
                return
            with self._shared.locked() as fresh:
                self._take(fresh)
                yield

    def _apply(self, configs: Mapping[str, ModelConfig] | None, control: Control) -> None:
        """The change, at once (`configs` None: the settings tables stay), inside `_changing`."""
        if configs is not None:
            self.repository.configs = dict(configs)
            control.configs = {name: config.table() for name, config in configs.items()}
        with self._lock:
            self._control = control
        if self._shared is not None:
            self._shared.save(control)

    def _reload_config(self) -> None:
        """The config file's policies, labels, traffic and logging, when it changed (hot reload;
        as Settings.load reads it, so a DIPTYCH_REPOSITORY variable still wins). Checked as a
        request's change is: a file that would retire a default model is not applied, and is
        tried again on each pass (what refused it may pass: a version copied in, a root back),
        logged once per distinct refusal."""
        seen = mtime(self._config_file)
        if seen == self._config_seen:
            return
        try:
            configs = parse_configs(Settings.load({**os.environ, "DIPTYCH_CONFIG": self._config_file}).repository)
            self._checked(configs, self._control, set())
        except Exception as error:  # a half-saved or mistyped file, whatever it raises: keep serving and scanning
            reason = str(error) if isinstance(error, (OSError, ValueError, ServiceError)) \
                else f"{type(error).__name__}: {error}"
            if reason != self._config_refused:
                log.error("the config file %s was not applied: %s", self._config_file, reason)
            self._config_refused = reason
            return
        self._config_seen, self._config_refused = seen, None
        self.config_reloaded(self.repository.configs, configs)
        self.repository.configs = configs
        with self._lock:  # the file is now newer than any reload request
            self._control = dataclasses.replace(self._control, configs=None)
        log.info("repository settings reloaded from %s", self._config_file)

    def _apply_shared(self) -> None:
        """What a sibling worker's API call changed, applied before this pass."""
        self._take(self._shared.changed() if self._shared is not None else None)

    def _take(self, control: Control | None) -> None:
        """A sibling's change (None: there is none), as this worker's state."""
        if control is not None:
            with self._lock:
                self._control = control
            if control.configs is not None:
                self.repository.configs = parse_configs(control.configs)

def _aspired(found: Found, control: Control, name: str) -> list:
    """The versions `found` would serve for `name` under `control` (none where it has none)."""
    if name not in found.versions:
        return []
    return found.aspired(name, control.explicit.get(name, set()), name in control.unloaded)


def _none_chosen(found: Found, name: str) -> str:
    held = [version.number for version in found.versions.get(name, [])]
    return f"versions = {found.configs[name].policy} chooses none of the versions the repository holds ({held})"


def mtime(path: str | None) -> int | None:
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None
