"""The one inference path. Every protocol adapter converts its request into calls on a
served model that the engine hands it, converts the results back, and maps
`ServiceError`s to its own status codes.

The engine loads and warms up the repository's models in the background (so liveness
answers at once and readiness turns true when every default model is available), hands
out model versions by reference (`name`, `name:version`, `name@label`, or a kind's
default), and admits a bounded number of requests. Which versions are loaded, and the
switch from one to the next, is the manager's (manager/). It knows no kind of model:
the kinds (`service/kinds/`) are handed to it, and the card of each model says which it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

from .auth import ApiKeys, FeedbackKeys
from .config import Settings
from .context import current
from .control import SharedControl
from .errors import NotFound, NotReady, Overloaded, Unauthenticated
from .feedback import Labelled
from .manager import Manager, ModelStatus
from .metrics import metrics
from .models import ModelInfo, ServedModel
from .promotion import Promotion
from .repository import ModelConfig, ModelRef

log = logging.getLogger("diptych")
Kind = TypeVar("Kind", bound=ServedModel)


class Engine:
    def __init__(self, settings: Settings, kinds: Mapping[str, type[ServedModel]],
                 shared: SharedControl | None = None, config_file: str | None = None) -> None:
        self.settings = settings
        # An admin key, and a feedback key, is an API key too, where API keys are on.
        self.keys = ApiKeys(settings.api_keys + settings.admin_keys + settings.feedback_keys
                            if settings.api_keys else ())
        self.admin_keys = ApiKeys(settings.admin_keys)
        self.feedback_keys = FeedbackKeys(self.keys, settings.feedback_keys, settings.admin_keys)  # who labels
        # shared: with the service's other workers; config_file: read again when it changes
        self.manager = Manager(settings, kinds, shared, config_file)
        self.feedback = self.manager.feedback  # answers waiting for labels (POST /feedback), accuracy per version
        self.promotion = Promotion(self.manager, self.feedback)  # weighs the labels of models with `promote`
        self.manager.config_reloaded = self.promotion.warn_reverted  # a config file that undoes a decision
        self._loaded = threading.Event()  # the first pass over the repository is done
        self._ever_ready = False
        self._in_flight = 0
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Load the models in the background, then poll the repository. TensorFlow is
        imported first, here: imported from two threads at once (the loading thread and the
        gRPC server's, or a request's), its package can come out half-initialised."""
        import tensorflow  # noqa: F401

        threading.Thread(target=self._serve_repository, name="diptych-models", daemon=True).start()

    def _serve_repository(self) -> None:
        try:
            self.load()
        except Exception:  # the first pass failed whole: the polls still try again
            log.exception("the first pass over the model repository failed")
        if self.settings.poll_s:
            self.manager.poll()

    def load(self) -> None:
        """The first pass: every aspired version, each tried even when another fails."""
        try:
            self.manager.reconcile()
        finally:
            self._loaded.set()
        for kind, ref in self.settings.defaults().items():
            name = self.manager.default(kind)
            if name is None:
                log.error("the %s could not be loaded from %s: FileNotFoundError: no saved_model.pb there, nor "
                          "numbered version folders holding one", kind, ref)
            elif not self.manager.knows(name):  # nothing was even tried (a failed load logs itself)
                log.error("the %s could not be loaded from %s: NotFound: no such version in the model store or "
                          "repository", kind, ref)

    def _default_available(self, kind: str) -> bool:
        name = self.manager.default(kind)
        return name is not None and self.manager.available(name)

    @property
    def ready(self) -> bool:
        """Every default model has an available version."""
        ready = self._loaded.is_set() and all(self._default_available(kind) for kind in self.settings.defaults())
        self._ever_ready |= ready
        return ready

    @property
    def alive(self) -> bool:
        """False when the first load left a default model unavailable, or when the repository is
        no longer polled (a restart may help); a version that fails later never costs liveness:
        the old one keeps serving."""
        if self.manager.poll_died:
            return False
        return self._ever_ready or not self._loaded.is_set() or self.ready

    def close(self) -> None:
        self.manager.stop()

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of `max_concurrency` request slots, or refuse at once: no unbounded queue.
        The slot also holds the manager's epoch: a version retired meanwhile waits for it."""
        with self._lock:
            if self._in_flight >= self.settings.max_concurrency:
                raise Overloaded(f"more than {self.settings.max_concurrency} requests in flight; retry shortly")
            self._in_flight += 1
        metrics().in_flight.inc()
        epoch = self.manager.epochs.enter()
        try:
            yield
        finally:
            self.manager.epochs.leave(epoch)
            metrics().in_flight.dec()
            with self._lock:
                self._in_flight -= 1

    # -- models --------------------------------------------------------------------
    def get(self, kind: type[Kind], ref: str | ModelRef | None = None) -> Kind:
        """The model `ref` names (or the default of its kind), which must be of `kind`."""
        self._check_ready()
        model = self.find(ModelRef(self.manager.default(kind.kind)) if ref is None else ref)
        if not isinstance(model, kind):
            raise NotFound(f"{ref} is a {model.kind}, not a {kind.kind}", "model")
        return model

    def find(self, ref: str | ModelRef) -> ServedModel:
        """A model version by reference (a kind's name stands for its default model), chosen
        for this request: by the model's traffic split for its caller; and its shadow noted.
        Called once per request, at the edge: the version returned is the request's handle,
        which computes the answer and is named in it (never looked up again by name)."""
        self._check_ready()
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        default = self.manager.default(ref.name)
        if default is not None and not self.manager.knows(ref.name):
            ref = ModelRef(default, ref.version, ref.label)
        context = current()
        model = self.manager.resolve(ref, context.caller or context.id)
        context.shadow = self.manager.shadow(ref.name, model)
        return model

    def models(self) -> list[ModelInfo]:
        """Every available model version."""
        self._check_ready()
        return [version.info for model in self.manager.status().values() for version in model.versions.values()
                if version.info is not None]

    def status(self) -> dict[str, ModelStatus]:
        """Every model's versions (state, reason, labels naming each), labels and policy, loaded or not."""
        return self.manager.status()

    def promotions(self) -> dict[str, dict[str, object]]:
        """Each model's last promotion or rollback by evidence."""
        return self.promotion.decisions()

    async def feed_back(self, items: Sequence[tuple[str, str | int, int]]) -> list[Labelled]:
        """Labels (request id, label, item index) joined to the answers they are for; then each
        model that promotes by evidence weighs what it has (a decision is a manager pass: in
        its own thread, as a load is). Promotion sees each model's settings first: a pairing's
        evidence counts from the first labels under them."""
        promoting = self.manager.promoting()
        for name in promoting:
            self.promotion.observe(name)
        labelled = self.feedback.label_items(items)
        if promoting and any(each.error is None for each in labelled):  # no thread where nothing promotes
            await _in_own_thread(self._weigh_evidence, promoting)
        return labelled

    def _weigh_evidence(self, promoting: list[str]) -> None:
        for name in promoting:
            self.promotion.evaluate(name)

    def sources(self) -> dict[str, dict[str, str]]:
        """Model sources that cannot be read now, and folders ignored, with the reasons."""
        return self.manager.sources()

    # -- the load/unload API (privileged) -------------------------------------------------
    def check_admin(self, authorization: str | None) -> None:
        """Loading and unloading need an admin key when admin keys are set; without them,
        the API is off unless `model_control` turns it on."""
        if self.admin_keys.enabled:
            self.admin_keys.check(authorization)
        elif not self.settings.model_control:
            raise Unauthenticated("the model load/unload API is off: set admin_keys (or model_control = true "
                                  "on a trusted network)", "authorization")

    async def load_model(self, name: str, version: int | None = None,
                         config: Mapping[str, object] | None = None) -> None:
        """Serve `name` (again), `version` beside its policy's, and its settings table `config`
        (labels, traffic weights, shadow, policy, logging) if given: all of it, or none."""
        await _in_own_thread(self.manager.load, name, version, config)

    async def unload_model(self, name: str, version: int | None = None) -> None:
        await _in_own_thread(self.manager.unload, name, version)

    async def configure(self, configs: Mapping[str, ModelConfig]) -> None:
        """New settings for the models `configs` names, now; the other models keep theirs."""
        await _in_own_thread(self.manager.configure, configs)

    async def reload_config(self, tables: Mapping[str, Mapping[str, object]]) -> None:
        """TF Serving's ReloadConfig: the list of models (path, versions, labels) replaces the
        served ones (manager/control.py `reload`)."""
        await _in_own_thread(self.manager.reload, tables)

    def _check_ready(self) -> None:
        if not self.ready:
            raise NotReady("the models are still loading" if self.alive else "the models failed to load")


async def _in_own_thread(function: Callable[..., None], *args: object) -> None:
    """Run a pass of the manager on a fresh thread and wait for it: a load lowers its own
    thread's CPU priority, which a pooled thread would keep for the requests it runs next."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def finish(error: BaseException | None) -> None:
        if not done.done():  # the caller may have gone (cancelled): the pass still completes
            done.set_exception(error) if error else done.set_result(None)

    def run() -> None:
        try:
            function(*args)
        except BaseException as error:  # handed to the caller, which maps ServiceErrors
            loop.call_soon_threadsafe(finish, error)
        else:
            loop.call_soon_threadsafe(finish, None)

    threading.Thread(target=run, name="diptych-models-control", daemon=True).start()
    await done
