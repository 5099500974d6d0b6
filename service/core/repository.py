"""Where models and their versions come from, and which versions should be served.

A model is a name with numbered versions. Its versions come from one source, the first
that names it:

1. the settings: a default model given as a folder (`classifier = "models/classifier"`),
   and `[repository.<name>] path = ...` entries (a default given as a name or a store tag,
   `classifier:latest` or `classifier:3`, names a model of the sources below);
2. the repository folder `model_root`, in TF Serving's layout: `<root>/<name>/<version>/`;
3. the BentoML model store (every tag `training.publish` made), when `store` is on.

A version policy per model says which of its versions are *aspired* (TF Serving's word):
`latest:N` (the default, N = 1), `all`, or `specific:3,4`. Labels name versions
(`stable = 3`). `Repository.scan()` is pure bookkeeping: it reads folders, the store and
cards' kinds, never a model; the manager (manager.py) loads what it aspires.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from contract.layout import MAX_VERSION, SAVED_MODEL, ascii_number, is_folder_ref, is_version_name

from .config import Settings
from .errors import ValidationError
from .sources import Sources, Version
from .validation import requested_version

log = logging.getLogger("diptych")

# A version is ASCII digits: `\d` also takes other scripts' digits, which `int()` reads ("١" is 1).
REF = re.compile(r"(?P<name>[^:@\s]+)(?::(?P<version>[0-9]+)|@(?P<label>[^:@\s]+))?")


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """`name`, `name:version` or `name@label`, as a request names a model."""

    name: str
    version: int | None = None
    label: str | None = None

    @classmethod
    def parse(cls, text: str, field: str = "model") -> ModelRef:
        match = REF.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise ValidationError(field, f"{text!r}: name a model as name, name:version or name@label")
        version = match["version"]
        return cls(match["name"], requested_version(version, field) if version else None, match["label"])

    def __str__(self) -> str:
        return self.name + (f":{self.version}" if self.version is not None else "") + \
            (f"@{self.label}" if self.label else "")


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which versions to serve: the newest `latest`, every one (`latest` None), or `specific`."""

    latest: int | None = 1
    specific: tuple[int, ...] = ()
    exact: bool = False  # a default named `name:3`: that version and no other, ever (no fall-back)

    @classmethod
    def parse(cls, text: str, where: str) -> Policy:
        kind, _, value = str(text).strip().partition(":")
        if kind == "all" and not value:
            return cls(latest=None)
        if kind == "latest" and (count := ascii_number(value or "1")):
            return cls(latest=count)
        numbers = [ascii_number(part) for part in value.split(",")]
        if kind == "specific" and value and None not in numbers:
            return cls(latest=None, specific=tuple(sorted(set(numbers))))
        raise ValueError(f"{where}: versions = {text!r}: use latest:N, all, or specific:V1,V2")

    def choose(self, found: list[int]) -> list[int]:
        if self.specific:
            return [version for version in found if version in self.specific]
        return found if self.latest is None else found[-self.latest:]

    def __str__(self) -> str:
        if self.specific:
            return "specific:" + ",".join(map(str, self.specific))
        return "all" if self.latest is None else f"latest:{self.latest}"


KEYS = ("path", "versions", "labels", "traffic", "shadow", "log_sample", "log_thumbnails")
MAX_WEIGHT = 1_000_000  # a traffic weight: enough for shares of a millionth, far from float overflow
LABEL = re.compile(r"[^:@\s]+")  # what a request's `name@label` can name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One model's settings: where it is (optional), its version policy and labels, how a
    request that names no version is split among versions (`traffic`: weights by label or
    version number), which version gets a copy of the traffic (`shadow`), and the share of
    its requests written to the payload log (`log_sample`, with image thumbnails or not)."""

    name: str
    path: str | None = None  # a folder of versions, a version folder, or a store tag
    policy: Policy = Policy()
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)
    traffic: Mapping[str, int] = dataclasses.field(default_factory=dict)
    shadow: str | None = None
    log_sample: float = 0.0
    log_thumbnails: bool = False

    @classmethod
    def parse(cls, name: str, table: Any) -> ModelConfig:
        """The one check of a model's table, whole: whatever a config file, a load request or a
        TF Serving reload says goes through here before anything changes."""
        where = f"repository.{name}"
        if not isinstance(table, Mapping):
            raise ValueError(f"{where}: expected a table of {', '.join(KEYS)}")
        if unknown := sorted(set(map(str, table)) - set(KEYS)):
            raise ValueError(f"{where}: unknown keys {unknown}: use {', '.join(KEYS)}")
        labels = _numbers(table.get("labels", {}), f"{where}.labels", MAX_VERSION,
                          "map each label to a version number, e.g. {stable = 3}")
        for label in labels:
            if not LABEL.fullmatch(label) or ascii_number(label) is not None:
                raise ValueError(f"{where}.labels: {label!r}: a label is a word without spaces, ':' or '@', and "
                                 "not a number (it would hide that version number)")
        traffic = _numbers(table.get("traffic", {}), f"{where}.traffic", MAX_WEIGHT,
                           "map labels or version numbers to weights, e.g. {stable = 90, canary = 10}")
        shadow = table.get("shadow")
        if isinstance(shadow, bool) or not isinstance(shadow, (str, int, type(None))):
            raise ValueError(f"{where}.shadow: a label or a version number, e.g. \"canary\"")
        shadow = str(shadow) if shadow not in (None, "") else None
        for target, key in [*((target, f"traffic.{target}") for target in traffic), (shadow, "shadow")]:
            if target is not None and target not in labels and ascii_number(target) is None:
                raise ValueError(f"{where}.{key}: {target!r} is neither a label of this model "
                                 f"({', '.join(labels) or 'it has none'}) nor a version number")
        if traffic and not sum(traffic.values()):
            raise ValueError(f"{where}.traffic: the weights add up to 0")
        sample = table.get("log_sample", 0.0)
        if isinstance(sample, bool) or not isinstance(sample, (int, float)) or not 0 <= sample <= 1:
            raise ValueError(f"{where}.log_sample: a share between 0 and 1, e.g. 0.1")
        if not isinstance(thumbnails := table.get("log_thumbnails", False), bool):
            raise ValueError(f"{where}.log_thumbnails: true or false")
        if (path := table.get("path") or None) is not None and not isinstance(path, str):
            raise ValueError(f"{where}.path: a folder, or a model store tag")
        if path is not None and (odd := re.search("[\x00-\x1f\x7f-\x9f\ud800-\udfff]", path)):
            # control characters and lone surrogates: no folder or tag holds one, and file system
            # calls raise for NUL or a lone surrogate (a 500 where they are made)
            raise ValueError(f"{where}.path: {path[:40]!r} holds U+{ord(odd[0]):04X}, a control character: "
                             "a folder, or a model store tag")
        policy = Policy.parse(table["versions"], where) if "versions" in table else Policy()
        return cls(name, path, policy, labels, traffic, shadow, float(sample), thumbnails)

    def table(self) -> dict[str, Any]:
        """The settings table that parses back into this config."""
        table = {"versions": str(self.policy), "labels": dict(self.labels), "traffic": dict(self.traffic),
                 "log_sample": self.log_sample, "log_thumbnails": self.log_thumbnails}
        return {**table, **({"path": self.path} if self.path else {}), **({"shadow": self.shadow} if self.shadow else {})}

    def split(self, available: set[int], key: str) -> int:
        """A version by the traffic weights, among the available targets only; one caller
        (its `key`) always gets the same one while the weights stay. No weights: the newest."""
        weights = [(number, weight) for target, weight in self.traffic.items()
                   if (number := self.version_of(target)) in available and weight]
        if not weights:
            return max(available)
        point = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32 * sum(weight for _, weight in weights)
        for number, weight in weights:
            point -= weight
            if point < 0:
                return number
        return weights[-1][0]

    def version_of(self, target: str) -> int | None:
        """A label's version, or a version number given as text."""
        return self.labels.get(target) if target in self.labels else ascii_number(target)


def _numbers(value: Any, where: str, most: int, hint: str) -> dict[str, int]:
    """A table of whole numbers from 0 to `most`, by name; the first that is not is named."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: {hint}")
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= most:
            raise ValueError(f"{where}.{key}: {number!r}: {hint} (whole numbers from 0 to {most})")
    return {str(key): number for key, number in value.items()}


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

    def _add(self, versions: dict[str, list[Version]], ref: str, configs: dict[str, ModelConfig]) -> str | None:
        """A default model's ref: a store tag (`name:latest` serves the policy's versions,
        `name:3` that one) or a folder (of versions, or one version)."""
        if is_folder_ref(ref):
            found = self.sources.read(ref, lambda: self._default_folder(Path(ref)), [])
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

    def _default_folder(self, folder: Path) -> list[Version]:
        return self.sources.folder_versions(folder, None if (folder / SAVED_MODEL).is_file() else folder.name)

    def _from_ref(self, name: str, ref: str, configs: dict[str, ModelConfig]) -> list[Version]:
        """A configured `path`: a folder, or a store tag (`shoes:latest`; `shoes:3` serves that
        version alone, as `specific:3`). Its versions take the configured name, whatever the
        folder or the store calls them."""
        if is_folder_ref(ref):
            found = self.sources.read(ref, lambda: self.sources.folder_versions(Path(ref)), [])
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
        return [dataclasses.replace(version, name=name) for version in found]

    def _from_root(self) -> dict[str, list[Version]]:
        """The repository folder's models; each model folder is a source of its own, so one that
        cannot be read keeps its versions and holds up no other."""
        if not self.settings.model_root:
            return {}
        root = Path(self.settings.model_root)
        return self.sources.read(str(root), lambda: self._root_models(root), {})

    def _root_models(self, root: Path) -> dict[str, list[Version]]:
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder (gone, or not mounted)")
        inside, found = root.resolve(), {}
        for folder in sorted(root.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir() or self.sources.leaves(folder, inside):
                continue
            versions = self.sources.read(str(folder), partial(self.sources.folder_versions, folder, folder.name, inside),
                                         [])
            if versions:
                found[folder.name] = versions
        return found

    def _from_store(self) -> dict[str, list[Version]]:
        return self.sources.read("store", self._store_models, {}) if self.settings.store else {}

    @staticmethod
    def _store_models() -> dict[str, list[Version]]:
        import bentoml

        found: dict[str, list[Version]] = {}
        for model in bentoml.models.list():
            if not (Path(model.path) / SAVED_MODEL).is_file() or not is_version_name(model.tag.version):
                continue  # not a diptych export (training.publish tags versions with the card's number)
            found.setdefault(model.tag.name, []).append(
                Version(model.tag.name, int(model.tag.version), str(model.tag), model.info.labels.get("kind")))
        return {name: sorted(versions, key=lambda version: version.number) for name, versions in found.items()}


def parse_configs(tables: Mapping[str, Any]) -> dict[str, ModelConfig]:
    return {name: ModelConfig.parse(name, table) for name, table in tables.items()}


def _name_of_missing(ref: str) -> None:
    log.warning("no model at %s: no saved_model.pb there, nor numbered version folders holding one", ref)
    return None


def _int(text: str) -> int:
    number = ascii_number(text)
    if number is None:
        raise ValueError(f"model store tag version {text[:24]!r}: use latest or a version number (ASCII digits "
                         f"within int64)")
    return number
