"""BentoML's own build path: `bentoml build` makes a Bento of the service, its pinned
dependencies and the published models (pyproject.toml [tool.bentoml.build]); `bentoml serve
<bento tag>` serves it. Both for real, with the tiny models in a model store of its own."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grpc
import pytest
import yaml

from proto.diptych.v1 import diptych_pb2 as pb
from proto.diptych.v1 import diptych_pb2_grpc
from tests.conftest import ROOT, Server
from tests.grpc_clients import png_bytes

pytestmark = pytest.mark.slow
BENTOML = str(Path(sys.executable).with_name("bentoml"))


@pytest.fixture(scope="module")
def bento(server_env, tmp_path_factory) -> tuple[str, dict[str, str]]:
    """A Bento built from this checkout, in a copy of the test store (the build writes to it)."""
    home = tmp_path_factory.mktemp("bento-home")
    shutil.copytree(Path(server_env["BENTOML_HOME"]) / "models", home / "models")
    env = {**server_env, "BENTOML_HOME": str(home)}
    built = subprocess.run([BENTOML, "build", "--output", "tag"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    return tag, env


def test_the_bento_holds_the_service_its_pins_and_the_models(bento):
    tag, env = bento
    name, version = tag.split(":")
    folder = Path(env["BENTOML_HOME"]) / "bentos" / name / version
    described = yaml.safe_load((folder / "bento.yaml").read_text())
    assert described["service"] == "service.service:Diptych"
    assert {model["tag"] for model in described["models"]} == {"classifier:1", "generator:1"}
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    requirements = (folder / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert all(pin.split(";")[0].strip() in requirements for pin in pins)  # the same exact pins
    sources = {path.relative_to(folder / "src").parts[0] for path in (folder / "src").rglob("*.py")}
    assert sources == {"service", "contract", "proto"}  # training/ stays out, as in the image
    playground = {path.name for path in (folder / "src" / "service" / "http" / "playground").iterdir()}
    assert playground == {"index.html", "playground.js", "playground.css"}  # the page at /ui


def test_bentoml_serve_serves_the_bento(bento, tmp_path):
    """From another folder: the Bento carries the code it serves, its gRPC server included."""
    tag, env = bento
    server = Server(env, tmp_path / "bento.log", target=tag, cwd=tmp_path)
    try:
        server.wait("/readyz")
        answer = server.client.post("/classify", json={"images": [base64.b64encode(png_bytes()).decode()]})
        assert answer.status_code == 200 and answer.headers["x-model-name"] == "classifier"
        assert len(answer.json()["predictions"][0]) == 5
        assert server.client.get("/ui").status_code == 200
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = diptych_pb2_grpc.DiptychStub(channel)
            classified = stub.Classify(pb.ClassifyRequest(images=[png_bytes()], top_k=3), timeout=60)
            listed = stub.ListModels(pb.ListModelsRequest(), timeout=30)
        assert (classified.model.name, classified.model.version) == ("classifier", "1")
        assert [len(prediction.labels) for prediction in classified.predictions] == [3]
        assert {(model.name, model.state) for model in listed.models} == {("classifier", "available"),
                                                                          ("generator", "available")}
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()
