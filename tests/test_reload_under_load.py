"""Hot reload under load on a real `bentoml serve` (#23): clients classify without pause while a
new version with different weights is copied into the repository and the old folder removed.
Not one request may fail, and every answer must be the one the version it names computes
(benchmarks/rollout.py measures the switch's latency; this test holds the correctness)."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, eventually
from tests.grpc_clients import png_bytes

pytestmark = pytest.mark.slow
CLIENTS = 4
MAX_REQUESTS = 4000  # per client: the loop is bounded in count as well as by the rollout's end


def add_version(root: Path, number: int, source: Path) -> None:
    """Files first, into a hidden folder, then one rename: how a version is rolled out."""
    staging = root / "shoes" / f".{number}.partial"
    shutil.copytree(source, staging)
    staging.rename(root / "shoes" / str(number))


def body() -> dict:
    return {"images": [base64.b64encode(png_bytes()).decode()], "top_k": 10}


def scores(answer: httpx.Response) -> dict[str, float]:
    return {entry["label"]: entry["score"] for entry in answer.json()["predictions"][0]}


def versions(server: Server) -> dict[str, str]:
    return {entry["version"]: entry["state"] for entry in server.client.get("/models").json()["models"]
            if entry["name"] == "shoes"}


@pytest.fixture(scope="module")
def served(server_env, tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout")
    add_version(root, 1, tiny_models["classifier"])
    server = Server({**server_env, "BENTOML_HOME": str(tmp_path_factory.mktemp("rollout-home")),
                     "DIPTYCH_MODEL_ROOT": str(root), "DIPTYCH_STORE": "false", "DIPTYCH_CLASSIFIER": "shoes",
                     "DIPTYCH_GENERATOR": str(tiny_models["generator"]), "DIPTYCH_POLL_S": "0.2",
                     "DIPTYCH_CLASSIFIER_RUNTIME": "tensorflow",
                     "DIPTYCH_REPOSITORY": json.dumps({"shoes": {"versions": "latest:1"}})},
                    tmp_path_factory.mktemp("rollout-server") / "server.log", grpc=False)
    try:
        server.wait("/readyz")
        yield server, root, tiny_models
    finally:
        server.stop()


def test_a_version_switched_under_load_fails_no_request_and_answers_from_the_version_it_names(served):
    server, root, tiny_models = served

    def switch() -> None:
        add_version(root, 2, tiny_models["other_classifier"])  # other weights: a wrong answer shows
        assert eventually(lambda: versions(server) == {"2": "available"}, 240), versions(server)
        shutil.rmtree(root / "shoes" / "1")

    switch_under_load(server, switch)


def switch_under_load(server: Server, switch: Callable[[], None]) -> None:
    """Clients classify without pause while `switch` rolls version 2 out (it returns once 2 is
    available): not one request may fail, both versions must have answered, and every answer
    must be the one the version it names computes. Version 1 is served when it is called."""
    expected = {"1": scores(server.client.post("/classify", json=body()))}
    answers: list[tuple[int, str, dict[str, float] | str]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for _ in range(MAX_REQUESTS):
                if stop.is_set():
                    return
                try:
                    answer = http.post("/classify", json=body())
                except httpx.TransportError as error:
                    answers.append((0, "", repr(error)))
                    continue
                ok = answer.status_code == 200
                answers.append((answer.status_code, answer.headers.get("x-model-version", ""),
                                scores(answer) if ok else answer.text))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        assert eventually(lambda: len(answers) >= 20, 120), "the clients got no answers"
        switch()
        before = len(answers)
        assert eventually(lambda: len(answers) >= before + 20, 120), "no answers after the switch"
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    expected["2"] = scores(server.client.post("/classify", json=body()))
    assert expected["1"] != expected["2"], "the two versions must differ for this test to see a wrong answer"

    failed = [answer for answer in answers if answer[0] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed, e.g. {failed[:3]}"
    served_by = {version for _, version, _ in answers}
    assert served_by == {"1", "2"}, served_by  # both versions answered: the switch happened under load
    for _, version, got in answers:
        assert got == pytest.approx(expected[version], abs=1e-5), f"version {version} answered another's scores"
