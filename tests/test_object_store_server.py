"""A real `bentoml serve` with `model_root = "s3://..."` against a real S3 endpoint on loopback
(moto's server): a version in S3 is served; one uploaded under load is switched to with no
failed request and every answer from the version it names; a partial upload never loads; the
endpoint going away keeps the served version serving and shows the source unavailable. The
tests run in this order on one server (the last one stops the endpoint)."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import Server, eventually
from tests.object_store import s3_endpoint
from tests.reliability import metric
from tests.test_reload_under_load import body, switch_under_load, versions

pytestmark = pytest.mark.slow
ROOT = "models"


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("s3-server")
    with s3_endpoint(folder) as s3:
        s3.upload(tiny_models["classifier"], f"{ROOT}/shoes/1")
        env = {key: value for key, value in os.environ.items() if not key.startswith("DIPTYCH_")}
        env.update(s3.env, BENTOML_HOME=str(folder / "home"), BENTOML_DO_NOT_TRACK="true", TF_CPP_MIN_LOG_LEVEL="3",
                   DIPTYCH_MODEL_ROOT=s3.url(ROOT), DIPTYCH_STORE="false", DIPTYCH_CLASSIFIER="shoes",
                   DIPTYCH_GENERATOR=str(tiny_models["generator"]), DIPTYCH_POLL_S="0.2",
                   DIPTYCH_CACHE_DIR=str(folder / "cache"), DIPTYCH_CLASSIFIER_RUNTIME="tensorflow",
                   DIPTYCH_REPOSITORY=json.dumps({"shoes": {"versions": "latest:1"}}))
        server = Server(env, folder / "server.log", grpc=False)
        try:
            server.wait("/readyz")
            yield server, s3, tiny_models
        finally:
            server.stop()


def sources(server: Server) -> dict[str, dict[str, str]]:
    return server.client.get("/models").json()["sources"]


def test_a_version_in_s3_is_served(served):
    server, s3, _ = served
    answer = server.client.post("/classify", json=body())
    assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
    shoes = [entry for entry in server.client.get("/models").json()["models"] if entry["name"] == "shoes"]
    assert [(entry["version"], entry["state"], entry["source"]) for entry in shoes] == \
        [("1", "available", s3.url(ROOT, "shoes", 1))]
    assert metric(server, "diptych_model_source_available", source=s3.url(ROOT)) == 1


def test_a_version_uploaded_under_load_fails_no_request_and_answers_from_the_version_it_names(served):
    server, s3, tiny_models = served

    def switch() -> None:
        s3.upload(tiny_models["other_classifier"], f"{ROOT}/shoes/2")  # other weights: a wrong answer shows
        assert eventually(lambda: versions(server) == {"2": "available"}, 240), versions(server)

    switch_under_load(server, switch)


def test_a_partial_upload_never_loads(served):
    """An upload cut short (no card: it goes last) is seen, reported, and never loaded; once
    its card arrives it is a version like any other."""
    server, s3, tiny_models = served
    serving = versions(server)
    s3.upload(tiny_models["classifier"], f"{ROOT}/shoes/7", only=4)  # its SavedModel, not its weights
    url = s3.url(ROOT, "shoes", 7)
    # a scan during the upload may find less; once it is cut, the SavedModel is there and the card is not
    assert eventually(lambda: sources(server)["ignored"].get(url, "").startswith("incomplete: no model_card.json yet"),
                      60), sources(server)
    assert versions(server) == serving and server.client.post("/classify", json=body()).headers[
        "x-model-version"] in serving
    s3.upload(tiny_models["classifier"], f"{ROOT}/shoes/7")  # the whole version, the card last
    assert eventually(lambda: versions(server) == {"7": "available"}, 240), versions(server)
    assert url not in sources(server)["ignored"]


def test_the_endpoint_going_away_keeps_the_served_version_serving(served):
    server, s3, _ = served
    serving = versions(server)
    s3.stop()
    root = s3.url(ROOT)
    assert eventually(lambda: root in sources(server)["unavailable"], 120), sources(server)
    assert "connect" in sources(server)["unavailable"][root].lower(), sources(server)
    assert metric(server, "diptych_model_source_available", source=root) == 0
    answer = server.client.post("/classify", json=body())
    assert answer.status_code == 200 and versions(server) == serving
    assert answer.headers["x-model-version"] in serving
