"""Runtimes by name (service/core/runtimes.py) and the batch workers (`batch_workers`): a runtime
class registered by name is what the setting chooses and what answers a request; a name that
is not registered is refused with the registered ones; `batch_workers` sets how many batches of a
model run at once, and follows `interpreters` when it is not set."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
from PIL import Image

from contract.runtime import SavedModelRuntime
from service.core import Engine, ServedModel, Settings
from service.core.runtimes import RUNTIMES, register
from service.kinds import KINDS, Classifier
from tests.conftest import toy_model


class CountingRuntime:
    """TensorFlow, counting the batches it runs: what a runtime of one's own looks like."""

    name = "counting"
    calls = 0

    def __init__(self, path: str, signature: str) -> None:
        self._tensorflow = SavedModelRuntime(path, signature)

    @classmethod
    def open(cls, info, settings, check):
        return cls(info.path, info.card.numeric_signature), None

    def run(self, inputs):
        type(self).calls += 1
        return self._tensorflow.run(inputs)


@pytest.fixture
def counting():
    register(CountingRuntime)
    try:
        yield CountingRuntime
    finally:
        RUNTIMES.pop(CountingRuntime.name)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_registered_runtime_is_chosen_by_name_and_answers_the_requests(counting, tiny_models):
    settings = Settings(classifier=str(tiny_models["classifier"]), generator="", store=False, poll_s=0,
                        warmup_rounds=0, interpreters=1, classifier_runtime="counting")
    engine = Engine(settings, KINDS)
    engine.load()
    try:
        before = counting.calls
        answer = asyncio.run(engine.get(Classifier).classify([png()], 3))
        assert counting.calls == before + 1  # the request's batch ran on it
        assert answer.model.runtime == "counting"  # and the answer names it
        assert [model.runtime for model in engine.models()] == ["counting"]
    finally:
        engine.close()


def test_an_unknown_runtime_is_refused_naming_the_registered_ones(counting):
    with pytest.raises(ValueError) as refused:
        Settings.load({"DIPTYCH_CLASSIFIER_RUNTIME": "onnx"})
    message = str(refused.value)
    assert "classifier_runtime" in message and "'onnx'" in message
    assert "(auto, counting, litert, tensorflow)" in message  # the registry's names, the new one too
    assert Settings(generator_runtime="counting").generator_runtime == "counting"


class Gathering(ServedModel):
    """A model whose batches wait until `parties` of them run at once (a barrier)."""

    kind = "gathering"
    parties = 1

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.barrier = threading.Barrier(self.parties, timeout=60)

    def run_batch(self, items: list) -> list:
        self.barrier.wait()  # broken (an error per item) unless `parties` batches run at once
        return list(items)


@pytest.mark.parametrize(("environ", "workers"), [
    ({"DIPTYCH_BATCH_WORKERS": "3", "DIPTYCH_INTERPRETERS": "1"}, 3),
    # unset: one per interpreter, as before `batch_workers` existed; DIPTYCH_WORKERS is the image's
    # count of BentoML processes (deploy/image/entrypoint.py), not this
    ({"DIPTYCH_INTERPRETERS": "2", "DIPTYCH_WORKERS": "1"}, 2),
    ({"DIPTYCH_BATCH_WORKERS": "1", "DIPTYCH_INTERPRETERS": "3"}, 1),
])
def test_batch_workers_is_how_many_batches_of_a_model_run_at_once(environ, workers):
    kind = type("Gathering", (Gathering,), {"kind": f"gathering-{workers}", "parties": workers})
    model = toy_model(kind, Settings.load({**environ, "DIPTYCH_MAX_BATCH_SIZE": "1"}))
    try:
        futures = model.batcher.submit(list(range(workers)))  # one batch each
        assert [future.result(120) for future in futures] == list(range(workers))  # all at once
        running = [thread for thread in threading.enumerate() if thread.name.startswith(f"{kind.kind}-batcher-")]
        assert len(running) == workers  # and no more
    finally:
        model.close()
