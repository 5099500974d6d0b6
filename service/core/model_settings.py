"""A model's settings: how a request names it (`ModelRef`), which of its versions are served
(`Policy`), and its labels, traffic split, shadow and payload logging (`ModelConfig`), each
checked whole as it is parsed. The repository (repository.py) finds the versions they choose among.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from contract.layout import MAX_VERSION, ascii_number, is_url

from .errors import ValidationError
from .sources import check_url
from .validation import requested_version

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
        if kind == "exact" and len(numbers) == 1 and None not in numbers:
            return cls(latest=None, specific=tuple(numbers), exact=True)
        raise ValueError(f"{where}: versions = {text!r}: use latest:N, all, or specific:V1,V2 (or exact:V: that "
                         "version only, never another in its place)")

    def choose(self, found: list[int]) -> list[int]:
        if self.specific:
            return [version for version in found if version in self.specific]
        return found if self.latest is None else found[-self.latest:]

    def __str__(self) -> str:
        if self.exact:
            return f"exact:{self.specific[0]}"
        if self.specific:
            return "specific:" + ",".join(map(str, self.specific))
        return "all" if self.latest is None else f"latest:{self.latest}"


KEYS = ("path", "versions", "labels", "traffic", "shadow", "log_sample", "log_thumbnails", "promote", "feedback",
        "abstain_below")
MAX_WEIGHT = 1_000_000  # a traffic weight: enough for shares of a millionth, far from float overflow
MAX_LABELS = 10_000_000  # promote.after: labels per look
LABEL = re.compile(r"[^:@\s]+")  # what a request's `name@label` can name


@dataclasses.dataclass(frozen=True)
class Promote:
    """`promote = {after = 500, max_p = 0.05}`: decide between the stable version and its
    candidate once each has `after` labelled answers, and again after each `after` more, with
    at most `max_p` chance of any wrong decision over all those looks (promotion.py)."""

    after: int = 500
    max_p: float = 0.05

    @classmethod
    def parse(cls, table: Any, where: str, labels: Mapping[str, int], targets: list[str]) -> Promote:
        hint = "a table {after = 500, max_p = 0.05}: labelled answers per look, and the chance of a wrong decision"
        if not isinstance(table, Mapping) or (unknown := sorted(set(map(str, table)) - {"after", "max_p"})):
            raise ValueError(f"{where}: {hint}" + (f" (unknown keys {unknown})" if isinstance(table, Mapping) else ""))
        after, max_p = table.get("after", cls.after), table.get("max_p", cls.max_p)
        if isinstance(after, bool) or not isinstance(after, int) or not 1 <= after <= MAX_LABELS:
            raise ValueError(f"{where}.after: {after!r}: a whole number of labelled answers from 1 to {MAX_LABELS}")
        if isinstance(max_p, bool) or not isinstance(max_p, (int, float)) or not 0 < max_p < 1:
            raise ValueError(f"{where}.max_p: {max_p!r}: a chance between 0 and 1 (exclusive), e.g. 0.05")
        if "stable" not in labels:
            raise ValueError(f"{where}: promotion moves the `stable` label: give the model one, e.g. labels = "
                             "{stable = 3, canary = 4}")
        if numbered := [target for target in targets if target not in labels]:
            raise ValueError(f"{where}: traffic and shadow must name labels, not version numbers "
                             f"({numbered[0]!r}), so that moving `stable` moves the traffic")
        return cls(after, float(max_p))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One model's settings: where it is (optional), its version policy and labels, how a
    request that names no version is split among versions (`traffic`: weights by label or
    version number), which version gets a copy of the traffic (`shadow`), and the share of
    its requests written to the payload log (`log_sample`, with image thumbnails or not), and
    whether every answer is kept for labels fed back (`feedback`, feedback.py), and whether labelled
    evidence promotes or rolls back a candidate (`promote`, which needs `feedback`); for a
    classifier, the top score under which an answer abstains unless a request says otherwise
    (`abstain_below`)."""

    name: str
    path: str | None = None  # a folder of versions, a version folder, or a store tag
    policy: Policy = Policy()
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)
    traffic: Mapping[str, int] = dataclasses.field(default_factory=dict)
    shadow: str | None = None
    log_sample: float = 0.0
    log_thumbnails: bool = False
    promote: Promote | None = None
    feedback: bool = False
    abstain_below: float | None = None

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
        if not isinstance(feedback := table.get("feedback", False), bool):
            raise ValueError(f"{where}.feedback: true or false")
        abstain_below = table.get("abstain_below")
        if abstain_below is not None and not is_share(abstain_below):
            raise ValueError(f"{where}.abstain_below: {abstain_below!r}: a score between 0 and 1, e.g. 0.6")
        if (path := table.get("path") or None) is not None and not isinstance(path, str):
            raise ValueError(f"{where}.path: a folder, an s3:// or gs:// URL, or a model store tag")
        if path is not None and (odd := re.search("[\x00-\x1f\x7f-\x9f\ud800-\udfff]", path)):
            # control characters and lone surrogates: no folder or tag holds one, and file system
            # calls raise for NUL or a lone surrogate (a 500 where they are made)
            raise ValueError(f"{where}.path: {path[:40]!r} holds U+{ord(odd[0]):04X}, a control character: "
                             "a folder, an s3:// or gs:// URL, or a model store tag")
        if path is not None and is_url(path):
            try:
                check_url(path)
            except ValueError as error:
                raise ValueError(f"{where}.path: {error}") from None
        policy = Policy.parse(table["versions"], where) if "versions" in table else Policy()
        promote = Promote.parse(table["promote"], f"{where}.promote", labels, [*traffic, *filter(None, [shadow])]) \
            if table.get("promote") is not None else None
        return cls(name, path, policy, labels, traffic, shadow, float(sample), thumbnails, promote, feedback,
                   None if abstain_below is None else float(abstain_below))

    def table(self) -> dict[str, Any]:
        """The settings table that parses back into this config."""
        table = {"versions": str(self.policy), "labels": dict(self.labels), "traffic": dict(self.traffic),
                 "log_sample": self.log_sample, "log_thumbnails": self.log_thumbnails,
                 "feedback": self.feedback}
        return {**table, **({"path": self.path} if self.path else {}), **({"shadow": self.shadow} if self.shadow else {}),
                **({"promote": dataclasses.asdict(self.promote)} if self.promote else {}),
                **({"abstain_below": self.abstain_below} if self.abstain_below is not None else {})}

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


def is_share(value: Any) -> bool:
    """A number from 0 to 1 (NaN is not: it fails every comparison)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def _numbers(value: Any, where: str, most: int, hint: str) -> dict[str, int]:
    """A table of whole numbers from 0 to `most`, by name; the first that is not is named."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: {hint}")
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= most:
            raise ValueError(f"{where}.{key}: {number!r}: {hint} (whole numbers from 0 to {most})")
    return {str(key): number for key, number in value.items()}


def parse_configs(tables: Mapping[str, Any]) -> dict[str, ModelConfig]:
    return {name: ModelConfig.parse(name, table) for name, table in tables.items()}
