"""The one inference path. Every protocol adapter converts its request into calls on a
served model that the engine hands it, converts the results back, and maps
`ServiceError`s to its own status codes.

The engine loads and warms up every configured model in the background (so liveness
answers at once and readiness turns true only when everything is warm), keeps them in a
registry by name, and admits a bounded number of requests. It knows no kind of model: the
kinds (`service/kinds/`) are handed to it, and the card of each model says which it is.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import TypeVar

from .auth import ApiKeys
from .config import Settings
from .errors import NotFound, NotReady, Overloaded
from .metrics import metrics
from .models import ModelInfo, ServedModel, locate

log = logging.getLogger("diptych")
Kind = TypeVar("Kind", bound=ServedModel)


class Engine:
    def __init__(self, settings: Settings, kinds: Mapping[str, type[ServedModel]]) -> None:
        self.settings = settings
        self.keys = ApiKeys(settings.api_keys)
        self._kinds = dict(kinds)
        self._models: dict[str, ServedModel] = {}  # by name
        self._defaults: dict[str, ServedModel] = {}  # by kind: what a request that names no model gets
        self._ready = threading.Event()
        self._failed = False
        self._in_flight = 0
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Load the models in the background. TensorFlow is imported first, here: imported
        from two threads at once (the loading thread and the gRPC server's, or a request's),
        its package can come out half-initialised (NameError deep inside tensorflow)."""
        import tensorflow  # noqa: F401

        threading.Thread(target=self.load, name="diptych-load", daemon=True).start()

    def load(self) -> None:
        """Every model, each tried even when another fails: one log line per broken model."""
        wanted = [(ref, kind) for kind, ref in self.settings.defaults().items()]
        wanted += [(ref, None) for ref in self.settings.models]
        loaded = [self._load(ref, kind) for ref, kind in wanted]
        if None in loaded:
            self._failed = True  # never ready: nothing is served from a half-loaded service
            return
        for model, (_, default_of) in zip(loaded, wanted):
            self._models[model.info.name] = model
            if default_of:
                self._defaults[default_of] = model
        self._ready.set()

    def _load(self, ref: str, kind: str | None) -> ServedModel | None:
        try:
            info = locate(ref)
            if kind and info.kind != kind:
                raise ValueError(f"{ref} holds a {info.kind}, not a {kind}")
            if info.kind not in self._kinds:
                raise ValueError(f"{ref} holds a model of kind {info.kind!r}; this service serves "
                                 f"{sorted(self._kinds)}")
            model = self._kinds[info.kind].load(info, self.settings)
            model.warm_up()
        except Exception as error:
            reason = next(iter(str(error).strip().splitlines()), "")
            log.error("the %s could not be loaded from %s: %s: %s", kind or "model", ref, type(error).__name__,
                      reason, exc_info=error)
            return None
        info = model.info
        metrics().model_info.labels(kind=info.kind, model=info.name, version=info.version, runtime=info.runtime).set(1)
        log.info("%s %s:%s loaded from %s and warmed up on %s", info.kind, info.name, info.version, info.source,
                 info.runtime)
        return model

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def alive(self) -> bool:
        return not self._failed

    def close(self) -> None:
        for model in self._models.values():
            model.close()

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of `max_concurrency` request slots, or refuse at once: no unbounded queue."""
        with self._lock:
            if self._in_flight >= self.settings.max_concurrency:
                raise Overloaded(f"more than {self.settings.max_concurrency} requests in flight; retry shortly")
            self._in_flight += 1
        metrics().in_flight.inc()
        try:
            yield
        finally:
            metrics().in_flight.dec()
            with self._lock:
                self._in_flight -= 1

    # -- models --------------------------------------------------------------------
    def get(self, kind: type[Kind], name: str | None = None) -> Kind:
        """The model `name` (or the default of its kind), which must be of `kind`."""
        self._check_ready()
        model = self._defaults.get(kind.kind) if name is None else self.find(name)
        if not isinstance(model, kind):
            raise NotFound(f"{name or 'the default model'} is not a {kind.kind}", "model")
        return model

    def find(self, name: str) -> ServedModel:
        """A model by its name, or a kind's default model by the kind's name."""
        self._check_ready()
        model = self._models.get(name) or self._defaults.get(name)
        if model is None:
            raise NotFound(f"no model named {name!r}", "name")
        return model

    def models(self) -> list[ModelInfo]:
        self._check_ready()
        return [model.info for model in self._models.values()]

    def _check_ready(self) -> None:
        if not self.ready:
            raise NotReady("the models are still loading" if self.alive else "the models failed to load")
