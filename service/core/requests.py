"""The manager's side of the load/unload API and of a reloaded config: what a request (or an
edited config file) changes in what is served, applied by the next pass over the repository
(manager.py), and shared with the service's other workers (control.py)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from .config import Settings
from .errors import NotFound, ValidationError
from .repository import ModelConfig, parse_configs

log = logging.getLogger("diptych")


FAILED = "failed"  # a version's state after a load that failed (manager.py has them all)


class ControlRequests:
    """Mixed into `Manager`, whose state it changes (`_control`, `repository`, `_slots`)."""

    def load(self, name: str, version: int | None = None) -> None:
        """Serve `name` again (after an unload), and `version` beside its policy's; then reconcile."""
        with self._lock:
            self._control.unloaded.discard(name)
            if version is not None:
                self._control.explicit.setdefault(name, set()).add(version)
        self._share()
        for slot in [slot for slot in self._slots.get(name, {}).values() if slot.state == FAILED]:
            self._forget(slot)  # tried again
        self.reconcile()
        if name not in self._found.versions:
            raise NotFound(f"no model named {name!r} in the repository", "name")
        if version is not None and version not in {found.number for found in self._found.versions[name]}:
            with self._lock:
                self._control.explicit.get(name, set()).discard(version)
            self._share()
            raise ValidationError("version", f"{name} could not be loaded: version {version} is not in the "
                                             "repository")
        failed = [slot for slot in self._slots.get(name, {}).values()
                  if slot.state == FAILED and (version is None or slot.version.number == version)]
        if failed or not self.available(name):
            reason = failed[0].reason if failed else "no version of it is in the repository"
            raise ValidationError("name", f"{name} could not be loaded: {reason}")

    def unload(self, name: str, version: int | None = None) -> None:
        """Stop serving `name` (every version, or one loaded on request), after its requests finish."""
        if name not in self._slots:
            raise NotFound(f"no model named {name!r} is loaded", "name")
        if version is None and name in self._found.defaults.values():
            raise ValidationError("name", f"{name} is a default model: configure another default before "
                                          "unloading it")
        self._apply_shared()  # a sibling worker may have loaded the version
        with self._lock:
            if version is None:
                self._control.unloaded.add(name)
            elif version in self._control.explicit.get(name, set()):
                self._control.explicit[name].discard(version)
            else:  # an answer of OK would change nothing: the policy's versions stay
                raise ValidationError("version", f"{name} version {version} was not loaded on request: change the "
                                                 "model's version policy to stop serving a version it chose")
        self._share()
        self.reconcile()

    def configure(self, configs: Mapping[str, ModelConfig]) -> None:
        """New version policies and labels (a reloaded config), applied now: for the models it
        names, it replaces what load and unload requests changed too."""
        self.repository.configs = dict(configs)
        with self._lock:
            self._control.configs = {name: config.table() for name, config in configs.items()}
            for name in configs:
                self._control.explicit.pop(name, None)
                self._control.unloaded.discard(name)
        self._share()
        self.reconcile()

    def _share(self) -> None:
        if self._shared is not None:
            self._shared.save(self._control)

    def _reload_config(self) -> None:
        """The config file's policies, labels, traffic and logging, when it changed (hot reload;
        as Settings.load reads it, so a DIPTYCH_REPOSITORY variable still wins)."""
        seen = mtime(self._config_file)
        if seen == self._config_seen:
            return
        self._config_seen = seen
        try:
            configs = parse_configs(Settings.load({**os.environ, "DIPTYCH_CONFIG": self._config_file}).repository)
        except (OSError, ValueError) as error:  # a half-saved or mistyped file: keep serving as configured
            log.error("the config file %s was not applied: %s", self._config_file, error)
            return
        self.repository.configs = configs
        with self._lock:
            self._control.configs = None  # the file is now newer than any reload request
        log.info("repository settings reloaded from %s", self._config_file)

    def _apply_shared(self) -> None:
        """What a sibling worker's API call changed, applied before this pass."""
        control = self._shared.changed() if self._shared is not None else None
        if control is not None:
            with self._lock:
                self._control = control
            if control.configs is not None:
                self.repository.configs = parse_configs(control.configs)

    # -- the lifecycle ----------------------------------------------------------------


def mtime(path: str | None) -> int | None:
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None
