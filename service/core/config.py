"""Service settings: defaults, then a TOML file (`DIPTYCH_CONFIG`), then `DIPTYCH_*` variables.

Every field can be set either way: field `max_images` is `max_images = 8` in the file
and `DIPTYCH_MAX_IMAGES=8` in the environment; a table (`[repository.classifier]`) is JSON
in a variable (`DIPTYCH_REPOSITORY='{"classifier": {"versions": "latest:2"}}'`). Each kind of model has
a table of its own (`[kinds.classifier] default = "classifier:3", runtime = "litert"`;
`DIPTYCH_KINDS` as JSON): where it is absent, the kind's module says its default
(`ServedModel.default_model`). The settings from before the tables (`classifier`,
`generator`, `classifier_runtime`, `generator_runtime`, and their DIPTYCH_ variables) are
aliases of those tables' keys: an alias and its key set to different values are refused.
API keys come from `DIPTYCH_API_KEYS`
(comma-separated) and/or a mounted file named by `DIPTYCH_API_KEYS_FILE` (one key a line,
`#` comments); they are kept out of `repr()` so they never reach a log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from contract.layout import is_url
from contract.runtime import cores

from .runtimes import runtime_named

ENV_PREFIX = "DIPTYCH_"
KIND_KEYS = ("default", "runtime")  # what a [kinds.<kind>] table may set
# The settings from before the kind tables, kept as aliases: setting -> (kind, key).
ALIASES = {"classifier": ("classifier", "default"), "generator": ("generator", "default"),
           "classifier_runtime": ("classifier", "runtime"), "generator_runtime": ("generator", "runtime")}


class Derived(str):
    """A value the settings copied from another setting: an alias into its kind table, a kind
    table's key back into its alias. `dataclasses.replace` hands it on; a value set directly,
    in its place or in the other, takes precedence (`replace(settings, kinds=...)` kept
    the old aliases' values before)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    # per kind: default (BentoML model tag, or a SavedModel folder; "": none), runtime (a registered runtime)
    kinds: dict = dataclasses.field(default_factory=dict)
    kind_modules: tuple[str, ...] = ()  # modules of more kinds, each defining KIND (docs/architecture.md)
    classifier: str | None = None  # aliases (ALIASES): read back, what the kind table says
    generator: str | None = None
    model_root: str = ""  # a model repository, TF Serving's layout <root>/<name>/<version>/: a folder, s3:// or gs://
    allowed_roots: tuple[str, ...] = ()  # folders (or URLs) besides model_root that a load request's path may name
    cache_dir: str = ""  # where versions from object storage are fetched to; "": ~/.cache/diptych/models
    cache_max_mb: float = 2048.0  # its bound: least recently used versions not served are evicted; 0: none
    store: bool = True  # also serve every model in the BentoML model store (what training.publish fills)
    repository: dict = dataclasses.field(default_factory=dict)  # per model: path, versions (policy), labels
    poll_s: float = 5.0  # how often the repository is scanned for new and removed versions; 0: never
    require_signed: bool = False  # load only versions whose model.sig verifies against trusted_keys
    trusted_keys: tuple[str, ...] = ()  # PEM files: EC public keys, CA certificates; a signature is checked
    # against them before each load (required or not: /models reports it)
    memory_budget_mb: float = 0.0  # refuse a load whose weights would pass this; 0: no budget
    model_control: bool = False  # the load/unload API without admin keys (with admin keys it is on)
    admin_keys: tuple[str, ...] = dataclasses.field(default=(), repr=False)  # keys for the load/unload API
    admin_keys_file: str | None = None
    payload_log: str = ""  # a JSON-lines file, or an http(s) URL to POST CloudEvents to; each model's
    # [repository.<name>] log_sample says the share of its requests logged
    payload_log_queue: int = 1000  # events waiting to be written; more are dropped (and counted)
    payload_log_max_mb: float = 100.0  # a log file is rotated at this size ...
    payload_log_files: int = 5  # ... keeping this many
    feedback: bool = False  # keep every model's answers for labels (POST /feedback); else a model's `feedback = true`
    feedback_max_entries: int = 100_000  # answers kept for labels (one per image); the oldest fall out first ...
    feedback_max_age_s: float = 86_400.0  # ... as do those older than this (both counted: diptych_feedback_evicted)
    classifier_runtime: str | None = None  # auto (LiteRT when verified and faster), litert, tensorflow
    generator_runtime: str | None = None
    interpreters: int = 0  # LiteRT interpreters per model; 0: one per CPU core
    batch_workers: int = 0  # batch workers per model (each runs one batch at a time); 0: one per interpreter
    max_batch_size: int = 32  # items per model call
    batch_window_ms: float = 0.0  # extra wait for a fuller batch while the model is idle
    warmup_rounds: int = 3  # model calls per batch size before reporting ready
    max_body_bytes: int = 16 * 2**20
    body_timeout_s: float = 10.0  # longest wait for a request body to arrive whole (408 past it); 0: none
    max_images: int = 32  # images per classify request
    max_pixels: int = 4096 * 4096  # per image, read from its header before decoding
    max_generate: int = 64  # images per generate request
    max_steps: int = 32  # interpolation steps
    max_concurrency: int = 64  # requests in flight; more are refused with Retry-After
    timeout_s: float = 30.0  # longest wait for a model result
    grpc_port: int = 50051  # the gRPC server in each worker (SO_REUSEPORT); 0: none
    grpc_host: str = "[::]"
    api_keys: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    api_keys_file: str | None = None
    # keys that may label answers (POST /feedback, gRPC Feedback; they are API keys too): with API
    # keys on, labels need one of these or an admin key; with no keys at all, labels are open
    feedback_keys: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    feedback_keys_file: str | None = None
    access_log: bool = False  # BentoML's log line per HTTP request
    log_format: str = "text"  # text (BentoML's lines) or json (one JSON object a line: service/logs.py)
    tracing: bool = False  # BentoML's OpenTelemetry middleware on HTTP requests (spans, X-BentoML-Request-ID)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, (int, float)) and value < 0:
                raise ValueError(f"setting {field.name} must not be negative, got {value}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"setting log_format must be text or json, got {self.log_format!r}")
        if self.require_signed and not self.trusted_keys:
            raise ValueError("setting require_signed needs trusted_keys: the public keys or CA certificates to verify with")
        if self.trusted_keys:
            from contract.signing import trust

            trust(self.trusted_keys)  # a missing file, or one that holds no key, is a start-up error
        tables, named = self._kind_tables()
        object.__setattr__(self, "kinds", tables)
        for alias, (kind, key) in ALIASES.items():  # read back as the table says; `replace` ignores these
            object.__setattr__(self, alias, Derived(self.kind_setting(kind, key)))
        from .sources import check_location

        defaults = [(named.get((kind, "default"), f"kinds.{kind}.default"), self.kind_setting(kind, "default"))
                    for kind in self.kinds]
        for name, ref in [*defaults, ("model_root", self.model_root),
                          *(("allowed_roots", root) for root in self.allowed_roots)]:
            check_location(name, ref)
        self._check_cache_dir([ref for _, ref in defaults] + [self.model_root, *self.allowed_roots])

    def _check_cache_dir(self, refs: list[str | None]) -> None:
        """Where any model comes from object storage, `cache_dir` must be writable now."""
        from .sources import check_cache_dir

        tables = self.repository.values() if isinstance(self.repository, dict) else []
        paths = [table.get("path") for table in tables if isinstance(table, dict)]
        if url := next((ref for ref in [*refs, *paths] if isinstance(ref, str) and is_url(ref)), None):
            check_cache_dir(self.cache_folder(), url)

    def cache_folder(self) -> Path:
        """`cache_dir`, or the user's cache folder (XDG_CACHE_HOME, else ~/.cache)."""
        if self.cache_dir:
            return Path(self.cache_dir)
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diptych" / "models"

    def _kind_tables(self) -> tuple[dict[str, dict[str, str]], dict[tuple[str, str], str]]:
        """`kinds` checked, with the aliases that are set written into it; and, for the errors,
        which setting gave each (kind, key): its alias, or `kinds.<kind>.<key>`."""
        from service.kinds import registered  # the registry: the shipped kinds and `kind_modules`'

        known = registered(self.kind_modules)
        if not isinstance(self.kinds, dict):
            raise ValueError(f"setting kinds must be a table of kinds, got {self.kinds!r}")
        tables, named = {}, {}
        for kind, table in self.kinds.items():
            if kind not in known:
                raise ValueError(f"setting kinds: unknown kind {kind!r}; known: {', '.join(known)}")
            if not isinstance(table, dict) or set(table) - set(KIND_KEYS):
                raise ValueError(f"setting kinds.{kind}: a table of {', '.join(KIND_KEYS)}, got {table!r}")
            tables[kind] = dict(table)
            named |= {(kind, key): f"kinds.{kind}.{key}" for key in table}
        for alias, (kind, key) in ALIASES.items():
            value = getattr(self, alias)
            if value is None or isinstance(value, Derived):  # unset, or read back by an earlier check
                continue
            table = tables.setdefault(kind, {})
            if key in table and not isinstance(table[key], Derived) and table[key] != value:
                raise ValueError(f"settings {alias} ({value!r}) and kinds.{kind}.{key} ({table[key]!r}) disagree: "
                                 f"{alias} is the old name of kinds.{kind}.{key}; set one of them")
            table[key], named[(kind, key)] = Derived(value), alias
        for (kind, key), setting in named.items():
            value = tables[kind][key]
            if key == "default" and not isinstance(value, str):
                raise ValueError(f"setting {setting} must be a model tag or folder, got {value!r}")
            if key == "runtime":
                if not isinstance(value, str):
                    raise ValueError(f"setting {setting} must be a runtime's name, got {value!r}")
                runtime_named(value, setting)
        return tables, named

    def kind_setting(self, kind: str, key: str) -> str:
        """A kind's `default` or `runtime`: its table's, else what its module declares (auto). A
        kind handed to an engine without being registered (a test's) has no default model."""
        from service.kinds import registered

        module = registered(self.kind_modules).get(kind)
        declared = {"default": module.default_model if module else "", "runtime": "auto"}
        return self.kinds.get(kind, {}).get(key, declared[key])

    def with_kind(self, kind: str, **table: str) -> Settings:
        """These settings with `kind`'s table updated (`default=...`, `runtime=...`)."""
        return dataclasses.replace(self, kinds={**self.kinds, kind: {**self.kinds.get(kind, {}), **table}})

    def defaults(self) -> dict[str, str]:
        """The default model of each registered kind: what a request that names no model gets.
        An empty default loads none of that kind (a bulk job loads only the model it runs)."""
        from service.kinds import registered

        return {kind: ref for kind in registered(self.kind_modules) if (ref := self.kind_setting(kind, "default"))}

    def batch_worker_count(self) -> int:
        """Batch workers per model: `batch_workers`, else one per LiteRT interpreter (so a config
        that sets only `interpreters` keeps the workers it always had). Not `workers`:
        DIPTYCH_WORKERS is the image's count of BentoML worker processes (deploy/image)."""
        return self.batch_workers or self.interpreters or cores()

    def runtime_of(self, kind: str) -> str:
        """The runtime choice for models of `kind` (a kind without a setting: auto)."""
        return self.kind_setting(kind, "runtime")

    @classmethod
    def load(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        values: dict[str, object] = {}
        if path := environ.get(ENV_PREFIX + "CONFIG"):
            try:
                values.update(tomllib.loads(Path(path).read_text()))
            except (tomllib.TOMLDecodeError, RecursionError) as error:  # arrays nested thousands deep: recursion
                raise ValueError(f"the config file {path} ({ENV_PREFIX}CONFIG) is not TOML: {error}") from None
        for field in dataclasses.fields(cls):
            if (raw := environ.get(ENV_PREFIX + field.name.upper())) is not None:
                values[field.name] = raw
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        settings = cls(**{f.name: _coerce(f, values[f.name]) for f in dataclasses.fields(cls) if f.name in values})
        for keys in ("api_keys", "admin_keys", "feedback_keys"):
            if path := getattr(settings, f"{keys}_file"):
                lines = Path(path).read_text().splitlines()
                file_keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
                settings = dataclasses.replace(settings, **{keys: getattr(settings, keys) + tuple(file_keys)})
        return settings


def _coerce(field: dataclasses.Field, value: object) -> object:
    kind = field.type
    try:
        if kind == "tuple[str, ...]":
            items = value.split(",") if isinstance(value, str) else value
            return tuple(item.strip() for item in items if item.strip())
        if kind == "bool":
            return _boolean(value)
        if kind == "dict":  # a TOML table, or JSON in a variable
            table = json.loads(value) if isinstance(value, str) else value
            if not isinstance(table, dict):
                raise ValueError(value)
            return table
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if field.name in ALIASES:  # an empty default is a choice: no model of that kind
            return str(value)
        return None if value in ("", None) and kind.endswith("None") else str(value)
    except (TypeError, ValueError):
        raise ValueError(f"setting {field.name}: expected {kind}, got {value!r}") from None


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    words = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
    if not isinstance(value, str) or value.strip().lower() not in words:
        raise ValueError(value)
    return words[value.strip().lower()]
