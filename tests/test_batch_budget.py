"""A classify job holds a bounded number of bytes of files read and not yet decoded (#26:
a folder of 12-megapixel photos must not sit in memory), whatever its part size."""

from __future__ import annotations

import io
import threading

import numpy as np
from PIL import Image

from service.batch import jobs
from service.batch.budget import ByteBudget
from service.kinds import Classifier
from tests.conftest import BlankRuntime, eventually, toy_model

WAIT_S = 30


class HeldRuntime(BlankRuntime):
    """Computes nothing until released: the files read meanwhile are what the job holds."""

    def __init__(self) -> None:
        self.release, self.calls = threading.Event(), 0

    def run(self, inputs):
        self.calls += 1
        self.release.wait(WAIT_S)
        return super().run(inputs)


def test_a_part_is_read_no_faster_than_the_model_decodes_it(tmp_path, monkeypatch):
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(png, "PNG")
    size = len(png.getvalue())
    for index in range(10):
        (tmp_path / f"{index}.png").write_bytes(png.getvalue())
    budget = ByteBudget(3 * size)  # three files in flight
    monkeypatch.setattr(jobs, "in_flight", lambda: budget)
    reads, read_bytes = [], jobs.read_bytes
    monkeypatch.setattr(jobs, "read_bytes", lambda path, limit: reads.append(path) or read_bytes(path, limit))

    model = toy_model(Classifier, labels=["a", "b", "c"])
    model._runtime = runtime = HeldRuntime()
    job = jobs.Classify(tmp_path / "out.jsonl", source=str(tmp_path), top_k=1)
    items, _ = job.items(model)
    started = []
    reader = threading.Thread(target=lambda: started.append(job.start(model, items)))
    try:
        reader.start()
        assert eventually(lambda: budget.waiting == 1 and runtime.calls >= 1, WAIT_S), "the reader never waited"
        assert len(reads) == 3  # the fourth file waits for the model, unread
        runtime.release.set()
        reader.join(WAIT_S)
        rows = job.finish(model, started[0])
    finally:
        runtime.release.set()
        model.close()
    assert [row["path"] for row in rows] == sorted(str(tmp_path / f"{index}.png") for index in range(10))
    assert all(row["error"] is None for row in rows) and len(reads) == 10


def test_a_file_larger_than_the_budget_goes_alone_and_an_unreadable_one_gives_its_bytes_back(tmp_path, monkeypatch):
    budget = ByteBudget(10)
    monkeypatch.setattr(jobs, "in_flight", lambda: budget)
    Image.new("RGB", (8, 8)).save(tmp_path / "big.png")
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    model = toy_model(Classifier, labels=["a", "b"])
    job = jobs.Classify(tmp_path / "out.jsonl", source=str(tmp_path), top_k=1)
    try:
        rows = job.finish(model, job.start(model, job.items(model)[0]))
    finally:
        model.close()
    assert [row["error"] for row in rows] == [None, "not an image (unrecognised format)"]
    assert budget.waiting == 0 and budget.taken == 0
