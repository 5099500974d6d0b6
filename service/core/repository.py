"""Where models and their versions come from, and which versions should be served.

A model is a name with numbered versions. Its versions come from one source, the first
that names it:

1. the settings: a default model given as a folder or a URL (`classifier = "models/classifier"`,
   `"s3://bucket/models/classifier"`), and `[repository.<name>] path = ...` entries (a
   default given as a name or a store tag, `classifier:latest` or `classifier:3`, names a
   model of the sources below);
2. the repository `model_root`, a folder or a URL, in TF Serving's layout: `<root>/<name>/<version>/`;
3. the BentoML model store (every tag `training.publish` made), when `store` is on.

Each place is a `Source` (sources/): a folder, the store, object storage through fsspec.

A version policy per model (model_settings.py) says which of its versions are *aspired* (TF Serving's word):
`latest:N` (the default, N = 1), `all`, or `specific:3,4`. Labels name versions
(`stable = 3`). `Repository.scan()` is pure bookkeeping: it reads folders, the store and
cards' kinds, never a model; the manager (manager/lifecycle.py) has a version `fetch`ed as a local
folder (object storage: into the cache) and loads it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from pathlib import Path

from contract.layout import ascii_number, is_location, is_url

from .config import Settings
from .model_settings import ModelConfig, ModelRef, Policy, parse_configs
from .sources import Cache, Release, Sources, StoreSource, Version, fetch, location

__all__ = ["Found", "ModelConfig", "ModelRef", "Policy", "Repository", "Version", "parse_configs"]

log = logging.getLogger("diptych")

@dataclasses.dataclass(frozen=True)
class Found:
    """What one scan found: per model, its versions (lowest first), source and config."""

    versions: dict[str, list[Version]]
    configs: dict[str, ModelConfig]
    defaults: dict[str, str]  # kind → the name of its default model
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)  # source → why it cannot be read now
    ignored: dict[str, str] = dataclasses.field(default_factory=dict)  # folder → why it is not a version

    def aspired(self, name: str, explicit: set[int] = frozenset(), removed: bool = False) -> list[Version]:
        """The versions to serve: the policy's, plus explicitly loaded ones, minus an unload."""
        if removed:
            return []
        found = self.versions.get(name, [])
        chosen = set(self.configs[name].policy.choose([version.number for version in found])) | set(explicit)
        return [version for version in found if version.number in chosen]


class Repository:
    def __init__(self, settings: Settings, configs: Mapping[str, ModelConfig] | None = None,
                 quiet: bool = False) -> None:
        self.settings = settings
        self.configs = dict(configs) if configs is not None else parse_configs(settings.repository)
        # each source's last good read: what a vanished one served keeps serving; quiet: a trial scan
        self.sources = Sources(quiet)
        # rounded up: a positive bound, however small, is a bound (0 bytes would mean none)
        self.cache = Cache(settings.cache_folder(), math.ceil(settings.cache_max_mb * 2**20))

    def scan(self) -> Found:
        """Every model's versions, from the first source that names it."""
        self.sources.begin()
        versions: dict[str, list[Version]] = {}
        configs = dict(self.configs)
        defaults = {}
        for kind, ref in self.settings.defaults().items():
            name = self._add(versions, ref, configs)
            if name:
                defaults[kind] = name
        for name, config in self.configs.items():
            if config.path and name not in versions:
                versions[name] = self._from_ref(name, config.path, configs)
        for name, found in self._from_root().items():
            versions.setdefault(name, found)
        for name, found in self._from_store().items():
            versions.setdefault(name, found)
        for name in versions:
            configs.setdefault(name, ModelConfig(name))
        return Found(versions, configs, defaults, dict(self.sources.unavailable), dict(self.sources.ignored))

    def fetch(self, version: Version) -> tuple[Path, Release]:
        """The version as a local folder, kept until released (an object store's: in the cache)."""
        return fetch(version, self.cache)

    def _add(self, versions: dict[str, list[Version]], ref: str, configs: dict[str, ModelConfig]) -> str | None:
        """A default model's ref: a store tag (`name:latest` serves the policy's versions,
        `name:3` that one) or a folder or URL (of versions, or one version)."""
        if is_location(ref):
            found = self._versions_at(ref)
            if not found:
                return _name_of_missing(ref)
            name = found[-1].name  # a folder of versions is named as TF Serving names it; one version, by its card
            versions.setdefault(name, found)
            return name
        name, _, tag = ref.partition(":")  # its versions come from the repository folder or the store
        if tag and tag != "latest" and name not in self.configs:
            try:
                configs[name] = ModelConfig(name, policy=Policy(latest=None, specific=(_int(tag),), exact=True))
            except ValueError as error:  # the other models are still served
                self.sources.ignore(ref, str(error))
                return None
        return name

    def _versions_at(self, ref: str) -> list[Version]:
        return self.sources.read(ref, lambda: location(ref, self.sources, self.cache).versions(), [])

    def _from_ref(self, name: str, ref: str, configs: dict[str, ModelConfig]) -> list[Version]:
        """A configured `path`: a folder or URL, or a store tag (`shoes:latest`; `shoes:3` serves
        that version alone, as `specific:3`). Its versions take the configured name, whatever the
        folder or the store calls them."""
        if is_location(ref):
            found = self._versions_at(ref)
        else:
            store_name, _, tag = ref.partition(":")
            if tag and tag != "latest":
                try:
                    policy = Policy(latest=None, specific=(_int(tag),))
                    configs[name] = dataclasses.replace(configs[name], policy=policy)
                except ValueError as error:  # the other models are still served
                    self.sources.ignore(ref, str(error))
                    return []
            found = self._from_store().get(store_name, [])
        return [dataclasses.replace(version, name=name, found_as=version.found_as or version.name) for version in found]

    def _from_root(self) -> dict[str, list[Version]]:
        """The repository root's models (a folder: each model folder is a source of its own)."""
        root = self.settings.model_root
        if not root:
            return {}
        where = root.rstrip("/") if is_url(root) else str(Path(root))
        return self.sources.read(where, lambda: location(root, self.sources, self.cache).models(), {})

    def _from_store(self) -> dict[str, list[Version]]:
        return self.sources.read("store", StoreSource().models, {}) if self.settings.store else {}


def _name_of_missing(ref: str) -> None:
    log.warning("no model at %s: no saved_model.pb there, nor numbered version folders holding one "
                "(in object storage: none complete yet)", ref)
    return None


def _int(text: str) -> int:
    number = ascii_number(text)
    if number is None:
        raise ValueError(f"model store tag version {text[:24]!r}: use latest or a version number (ASCII digits "
                         f"within int64)")
    return number
