"""The model lifecycle: which versions are loaded, and the switch from one to the next.

TF Serving's aspired-versions manager, with its availability-preserving policy (DESIGN.md
§5): each pass over the repository (every `poll_s`, or on request) loads every aspired
version that is not loaded yet *beside* the ones serving, warms it up (and proves its
LiteRT conversion), and only then routes traffic to it: the switch is one dict replaced
under a lock. A version no longer aspired is taken out of the routes at once, but
unloaded only after every request admitted before that moment has finished (epochs, as
RCU does: a request holds the epoch it was admitted in), and never while it is the model's
last available version and the new one is not available: a version that fails to load is
reported and never takes traffic, and the old one keeps serving. Where none serves (a broken
newest version at start-up), the newest other version on disk that loads does (`_fall_back`).

Loads run one at a time, each pass on a thread of its own at a lower CPU priority than the
request threads: a reload competes with serving for the same cores (TF Serving #385, #1866).
The heaviest part, a LiteRT conversion and its proof, runs in a child process at the lowest
priority (contract/litert.py `convert_apart`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from ..config import Settings
from ..control import Control, SharedControl
from ..epochs import Epochs
from ..feedback import FeedbackStore
from ..loader import BudgetExceeded, Unverified, check_budget, footprint, load_version, release_memory
from ..metrics import metrics
from ..models import ServedModel
from ..payloads import PayloadLog
from ..repository import Found, ModelConfig, Repository, Version
from .control import ModelControl, mtime
from .routing import Routing
from .status import Slot, VersionState

log = logging.getLogger("diptych")

LOADING, AVAILABLE, UNLOADING, FAILED = (VersionState.LOADING, VersionState.AVAILABLE, VersionState.UNLOADING,
                                         VersionState.FAILED)


class Manager(Routing, ModelControl):
    """Which versions are loaded (the slots), which answer (the routes), and the passes that change them."""

    def __init__(self, settings: Settings, kinds: Mapping[str, type[ServedModel]],
                 shared: SharedControl | None = None, config_file: str | None = None) -> None:
        self.settings = settings
        self.kinds = dict(kinds)
        self.repository = Repository(settings)
        self._config_file = config_file  # DIPTYCH_CONFIG: its [repository] tables are read again when it changes
        self._config_seen = mtime(config_file)
        self._config_refused: str | None = None  # why the file's last version was not applied (logged once)
        self.config_reloaded: Callable[[Mapping, Mapping], None] = lambda before, after: None  # promotion's warning
        self._shared = shared  # the load/unload API's changes, shared with sibling workers
        self.payload_log = PayloadLog(settings.payload_log, settings.payload_log_queue,
                                      int(settings.payload_log_max_mb * 2**20), settings.payload_log_files) \
            if settings.payload_log else None
        self.feedback = FeedbackStore(settings.feedback_max_entries, settings.feedback_max_age_s)
        self._lock = threading.Lock()
        self._reconciling = threading.Lock()  # one pass, or one change (control.py), at a time
        self._slots: dict[str, dict[int, Slot]] = {}  # every version with a state, by model
        self._routes: dict[str, dict[int, ServedModel]] = {}  # the available versions: replaced, never mutated
        self._found = Found({}, {}, {})
        self._control = Control()  # versions loaded and models unloaded on request, a reloaded config
        self.epochs = Epochs()  # requests hold one while admitted: a retired version waits for them
        self._stop = threading.Event()
        self.poll_died = False  # the poll loop ended by an error no pass could catch: hot reload is over

    # -- control -------------------------------------------------------------------
    def poll(self) -> None:
        """Reconcile every `poll_s` until stopped (a daemon thread). Should anything end the
        loop but `stop`, `poll_died` says so, and the engine is no longer alive (/livez)."""
        try:
            while not self._stop.wait(self.settings.poll_s):
                try:
                    self.reconcile()
                except Exception:  # a bug here must not end hot reload for the life of the process
                    log.exception("reloading the model repository failed")
        finally:
            if not self._stop.is_set():
                self.poll_died = True
                log.critical("the model repository is no longer polled: hot reload has stopped")

    def stop(self) -> None:
        self._stop.set()
        if self.payload_log is not None:
            self.payload_log.close()
        with self._lock:
            slots = [slot for versions in self._slots.values() for slot in versions.values() if slot.model]
        for slot in slots:
            slot.model.close()
            slot.release()

    def reconcile(self) -> None:
        """One pass: scan, load what is aspired and missing, switch, retire what is not."""
        with self._reconciling:
            self._reload_config()
            self._apply_shared()
            self._found = found = self.repository.scan()
            for name in found.versions:
                self._isolated(name, self._reconcile_model, found, name)
            for name in set(self._slots) - set(found.versions):  # gone from the repository
                self._isolated(name, self._retire, name, set())
            for name in self._routes:
                self._configure_logging(name)  # a changed config applies to loaded versions too

    def _reconcile_model(self, found: Found, name: str) -> None:
        unloaded = name in self._control.unloaded
        aspired = found.aspired(name, self._control.explicit.get(name, set()), unloaded)
        for version in aspired:
            self._ensure_loaded(version)
        keep = {version.number for version in aspired}
        if not unloaded and (keep or name in found.defaults.values()) and not self._serves(name, keep):
            keep |= self._fall_back(found, name, keep)
        self._retire(name, keep)

    def _serves(self, name: str, numbers: set[int]) -> bool:
        return any(slot.state == AVAILABLE for number, slot in self._slots.get(name, {}).items() if number in numbers)

    def _fall_back(self, found: Found, name: str, aspired: set[int]) -> set[int]:
        """None of the model's aspired versions serves (they failed; or, for a default model,
        its policy chooses none of the versions on disk): the newest other version on disk that
        loads serves instead, each tried once, newest first, so a broken newest version at
        start-up is no restart loop. Versions that serve already (a failed reload's old ones)
        are kept, and nothing is loaded. A default named with its version (`generator:99`)
        wants that one: no other is loaded in its place. The versions tried: kept (their state says why)."""
        others = [version for version in reversed(found.versions.get(name, [])) if version.number not in aspired]
        if serving := {version.number for version in others if self._serves(name, {version.number})}:
            return serving
        if found.configs[name].policy.exact:  # a default named `name:3`: no other version in its place
            return set()
        tried = set()
        for version in others:
            tried.add(version.number)
            slot = self._slots.get(name, {}).get(version.number)
            if slot is None or slot.state == FAILED and slot.version != version:
                self._load(version)
                slot = self._slots.get(name, {}).get(version.number)
            if slot is not None and slot.state == AVAILABLE:
                if not slot.reason:  # said once
                    numbers = ", ".join(map(str, sorted(aspired)))
                    slot.reason = (f"serves in place of version{'s' * (len(aspired) > 1)} {numbers}, which failed "
                                   "to load" if aspired else "serves: the policy chooses none of the versions on disk")
                    log.warning("%s:%s %s", name, version.number, slot.reason)
                break
        return tried

    @staticmethod
    def _isolated(name: str, step: Callable[..., None], *args: object) -> None:
        """One model's part of a pass: an error in it is logged, and the other models' go on."""
        try:
            step(*args)
        except Exception:
            log.exception("reconciling model %s failed; the other models are reconciled", name)

    def _ensure_loaded(self, version: Version) -> None:
        slot = self._slots.get(version.name, {}).get(version.number)
        if slot is not None and slot.state == AVAILABLE and slot.version.stamp != version.stamp:
            self._reuploaded(slot, version)
        if slot is not None and (slot.state in (AVAILABLE, LOADING) or
                                 slot.state == FAILED and slot.version == version):
            return  # a failed version is tried again only when it changes (or on a load request)
        self._load(version)

    @staticmethod
    def _reuploaded(slot: Slot, version: Version) -> None:
        """A served version uploaded again: versions are immutable (TF Serving's rule), so the
        loaded copy keeps serving, and the change is said once per upload (log, metric, reason)."""
        note = (f"uploaded again while it serves (card ETag {slot.version.stamp} → {version.stamp}): versions are "
                "immutable, this copy keeps serving; upload a new version number")
        if slot.reason != note:
            slot.reason = note
            metrics().model_versions_reuploaded.labels(model=version.name).inc()
            log.warning("%s:%s %s", version.name, version.number, note)

    def _load(self, version: Version) -> None:
        slot = Slot(version)
        self._set(slot)
        start = time.perf_counter()
        try:
            folder, slot.release = self.repository.fetch(version)  # a local copy: object storage's, cached
            slot.footprint = footprint(folder)
            with self._lock:
                loaded = sum(other.footprint for versions in self._slots.values() for other in versions.values()
                             if other.state in (AVAILABLE, UNLOADING))
            check_budget(slot.footprint, loaded, self.settings)
            model = load_version(version, folder, self.kinds, self.settings)
        except Exception as error:
            self._failed(slot, error, time.perf_counter() - start)
            return
        slot.model = model
        self._set(slot, AVAILABLE)
        self._route(version.name)
        metrics().model_loads.labels(model=version.name, outcome="loaded").inc()
        metrics().model_load_seconds.labels(model=version.name).observe(time.perf_counter() - start)
        info = model.info
        metrics().model_info.labels(kind=info.kind, model=info.name, version=info.version, runtime=info.runtime).set(1)
        log.info("%s %s:%s loaded from %s and warmed up on %s", info.kind, info.name, info.version, version.ref,
                 info.runtime)

    def _failed(self, slot: Slot, error: Exception, seconds: float) -> None:
        slot.release()
        reason = next(iter(str(error).strip().splitlines()), "")
        slot.reason = f"{type(error).__name__}: {reason}"
        self._set(slot, FAILED)
        metrics().model_loads.labels(model=slot.version.name, outcome="failed").inc()
        metrics().model_load_seconds.labels(model=slot.version.name).observe(seconds)
        kind = slot.version.kind or "model"
        log.error("the %s could not be loaded from %s: %s", kind, slot.version.ref, slot.reason,
                  exc_info=None if isinstance(error, (BudgetExceeded, Unverified)) else error)

    def _retire(self, name: str, aspired: set[int]) -> None:
        """Unload the versions not aspired, unless the last available one would go while an
        aspired one is not available (a failed or loading new version: the old one serves)."""
        slots = self._slots.get(name, {})
        serving = [number for number, slot in slots.items() if slot.state == AVAILABLE]
        keep_old = aspired and not aspired & set(serving)
        for number in [number for number in serving if number not in aspired]:
            if keep_old:
                continue
            self._unload(slots[number])
        for number in [number for number, slot in slots.items() if slot.state == FAILED and number not in aspired]:
            self._forget(slots[number])

    def _unload(self, slot: Slot) -> None:
        """Out of the routes now; closed on a thread of its own once drained, so that a long
        request on one model holds up no other model's reload."""
        self._set(slot, UNLOADING)
        self._route(slot.version.name)
        retired_in = self.epochs.advance()
        threading.Thread(target=self._close, args=(slot, retired_in), name="diptych-unload", daemon=True).start()

    def _close(self, slot: Slot, retired_in: int) -> None:
        # Bounded: no request outlives its timeout by much (BentoML's answers 504 at timeout_s + 10).
        self.epochs.wait_past(retired_in, self.settings.timeout_s + 10)
        slot.model.close()
        slot.release()
        info = slot.model.info
        slot.model = None
        if self._forget(slot):  # else the same version was loaded again meanwhile: its metrics are the new copy's
            metrics().model_info.labels(kind=info.kind, model=info.name, version=info.version,
                                        runtime=info.runtime).set(0)
        release_memory()
        log.info("%s %s:%s unloaded", info.kind, info.name, info.version)

    def _forget(self, slot: Slot) -> bool:
        """Drop this slot, by identity: a version unloaded, then loaded again while the old copy
        drained, has a new slot under the same number, which the old one's cleanup must not
        remove. False when `slot` was already replaced."""
        with self._lock:
            versions = self._slots.get(slot.version.name, {})
            if versions.get(slot.version.number) is not slot:
                return False
            del versions[slot.version.number]
            if not versions:
                self._slots.pop(slot.version.name, None)
        for state in VersionState:
            metrics().model_versions.labels(model=slot.version.name, version=str(slot.version.number),
                                            state=state).set(0)
        return True

    def _set(self, slot: Slot, state: VersionState = LOADING) -> None:
        for each in VersionState:
            metrics().model_versions.labels(model=slot.version.name, version=str(slot.version.number),
                                            state=each).set(int(each == state))
        with self._lock:  # a status snapshot sees the state and its time together
            slot.state, slot.since = state, time.time()
            self._slots.setdefault(slot.version.name, {})[slot.version.number] = slot

    def _route(self, name: str) -> None:
        """The switch: the model's routes become its available versions, in one assignment."""
        with self._lock:
            routes = {number: slot.model for number, slot in self._slots.get(name, {}).items()
                      if slot.state == AVAILABLE}
            self._routes = {**self._routes, name: routes}
        self._configure_logging(name)

    def _configure_logging(self, name: str) -> None:
        """The model's payload-log and feedback settings, on each of its available versions."""
        config = self._found.configs.get(name, ModelConfig(name))
        for model in self._routes.get(name, {}).values():
            model.payload_log = self.payload_log
            model.configure(config)
            keep = config.feedback or config.promote is not None or self.settings.feedback  # promote weighs labels
            model.feedback = self.feedback if keep else None
