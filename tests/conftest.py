"""Fixtures shared across test modules."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest_plugins = ["tests.skip_policy"]  # in CI, a skip not on tests/allowed_skips.txt fails the run

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_TOOLS = "DIPTYCH_REQUIRE_TOOLS"  # .ci/run sets it to 1


def unavailable(message: str, switch: str = REQUIRE_TOOLS) -> None:
    """Skip, saying why; where the environment variable `switch` is 1 (CI sets it) fail
    instead, so a check CI is meant to run cannot vanish quietly with its tool."""
    if os.environ.get(switch) == "1":
        pytest.fail(f"{message} ({switch}=1)", pytrace=False)
    pytest.skip(message)


def require_tool(tool: str | Path, install: str) -> str:
    """The path of `tool` (a command name or a path), else `unavailable`, with how to install it."""
    found = shutil.which(str(tool))
    if not found:
        unavailable(f"{tool} is not installed: {install}")
    return found


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny real classifier and generator, trained on Fashion-MNIST by the training CLIs
    (all at once, once per session): {"classifier": version folder, "generator": ...}.
    "other_classifier" is the same recipe from another seed: a second version of the same
    model with *different weights*, so that a test of which version answered can see a
    wrong choice."""
    root = tmp_path_factory.mktemp("tiny-models")
    classifier = ["training.classifier", "--backbone", "scratch", "--per-class", "20", "--image-size", "32",
                  "--epochs", "10"]
    commands = {
        "classifier": [*classifier, "--seed", "0"],
        "other_classifier": [*classifier, "--seed", "1"],
        "generator": ["training.gan", "--epochs", "1", "--per-class", "50", "--run-dir", str(root / "gan-run")],
    }
    runs = {
        kind: subprocess.Popen(
            [sys.executable, "-m", *command, "--data", "fashion-mnist", "--quick", "--no-evaluate",
             "--out", str(root / kind)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for kind, command in commands.items()
    }
    for kind, run in runs.items():
        output, _ = run.communicate(timeout=900)
        assert run.returncode == 0, f"training the tiny {kind} failed:\n{output[-3000:]}"
    return {kind: root / kind / "1" for kind in commands}


def ec_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A fresh EC P-256 key pair for model signing, made here (never committed): (private PEM, public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def eventually(check, timeout: float = 30) -> bool:
    """True as soon as `check()` is (polling), False after `timeout` seconds: for what a
    server records or does just after it answers."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`bentoml serve service.service:Diptych` (or another `target`: a Bento's tag) on loopback:
    HTTP and gRPC on free ports (`grpc=False`: DIPTYCH_GRPC_PORT=0, no gRPC)."""

    def __init__(self, env: dict[str, str], log: Path, grpc: bool = True, target: str = "service.service:Diptych",
                 cwd: Path = ROOT) -> None:
        self.port, self.grpc_port = free_port(), free_port() if grpc else 0
        self.url, self.grpc_target = f"http://127.0.0.1:{self.port}", f"127.0.0.1:{self.grpc_port}"
        self.log = log
        env = {**env, "DIPTYCH_GRPC_PORT": str(self.grpc_port), "DIPTYCH_GRPC_HOST": "127.0.0.1"}
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("bentoml")), "serve", target,
             "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait(self, path: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited:\n{self.log.read_text()[-3000:]}"
            try:
                if self.client.get(path).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{path} not 200 after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@contextlib.contextmanager
def repository_server(tmp_path_factory, name: str, **settings: str) -> Iterator[Server]:
    """A ready server over a repository folder, with a clean environment (no DIPTYCH_ variable
    of the caller's), a BENTOML_HOME of its own, models on TensorFlow and no store; `settings`
    are DIPTYCH_ variables (`model_root=...` sets DIPTYCH_MODEL_ROOT)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DIPTYCH_")}
    env.update(BENTOML_HOME=str(tmp_path_factory.mktemp(f"{name}-home")), BENTOML_DO_NOT_TRACK="true",
               TF_CPP_MIN_LOG_LEVEL="3", DIPTYCH_STORE="false", DIPTYCH_POLL_S="0",
               DIPTYCH_CLASSIFIER_RUNTIME="tensorflow")
    env.update({f"DIPTYCH_{key.upper()}": value for key, value in settings.items()})
    server = Server(env, tmp_path_factory.mktemp(f"{name}-server") / "server.log")
    try:
        server.wait("/readyz")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server_env(tiny_models, tmp_path_factory) -> dict[str, str]:
    """A clean environment for `bentoml serve`, with the tiny models published to its own store."""
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {key: value for key, value in os.environ.items() if not key.startswith("DIPTYCH_")}
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", TF_CPP_MIN_LOG_LEVEL="3")
    publish = subprocess.run([sys.executable, "-m", "training.publish", str(tiny_models["classifier"]),
                              str(tiny_models["generator"])], env=env, capture_output=True, text=True, cwd=ROOT)
    assert publish.returncode == 0, publish.stderr[-3000:]
    return env


GRPC_KEYS = ("grpc-key-from-env", "grpc-key-from-file")


@pytest.fixture(scope="session")
def grpc_servers(server_env, tiny_models, tmp_path_factory):
    """Two servers for the gRPC and V2 tests, started once: an open one with the defaults
    (models from the store; feedback on) and a locked-down one (API keys, small limits, one request slot,
    a 1 s batch window that holds every inference call in flight; models from folders, and a
    BENTOML_HOME of its own: `bentoml serve` empties the home's metrics folder as it starts).
    The open one also records what its APIs said while the models were still loading."""
    from tests.grpc_clients import startup_answers

    tmp = tmp_path_factory.mktemp("grpc-servers")
    (tmp / "keys").write_text(f"# mounted secret\n{GRPC_KEYS[1]}\n")
    open_server = Server({**server_env, "DIPTYCH_FEEDBACK": "true"}, tmp / "open.log")  # labels: the accuracy metrics
    locked = Server({**server_env, "BENTOML_HOME": str(tmp / "locked-home"),
                     "DIPTYCH_API_KEYS": GRPC_KEYS[0], "DIPTYCH_API_KEYS_FILE": str(tmp / "keys"),
                     "DIPTYCH_MAX_IMAGES": "2", "DIPTYCH_MAX_BODY_BYTES": "200000", "DIPTYCH_MAX_GENERATE": "4",
                     "DIPTYCH_MAX_CONCURRENCY": "1", "DIPTYCH_BATCH_WINDOW_MS": "1000",
                     "DIPTYCH_CLASSIFIER": str(tiny_models["classifier"]),
                     "DIPTYCH_GENERATOR": str(tiny_models["generator"])}, tmp / "locked.log")
    try:
        open_server.startup = startup_answers(open_server)
        open_server.wait("/readyz")
        locked.wait("/readyz")
        yield open_server, locked
    finally:
        open_server.stop()
        locked.stop()


class BlankRuntime:
    """A runtime that computes nothing: for tests of a kind's request checks, which run
    before any model does (the model itself is tested on `tiny_models`)."""

    name = "tensorflow"

    def run(self, inputs):
        import numpy as np

        rows = len(next(iter(inputs.values())))
        return {"images": np.zeros((rows, 2, 2, 1), np.uint8), "scores": np.zeros((rows, 3), np.float32)}


def toy_model(kind, settings=None, **card):
    """A served model of `kind` over `BlankRuntime`, with a card of `card`'s fields; close() it."""
    from contract.card import ModelCard
    from service.core import ModelInfo, Settings

    fields = {"kind": kind.kind, "name": "toy", "version": 1, "image_size": (2, 2), "channels": 1,
              "numeric_signature": "serving_default", "tolerance": 1.0, **card}
    info = ModelInfo(kind.kind, "toy", "1", "toy", "/nowhere", ModelCard.new(**fields))
    return kind(info, BlankRuntime(), settings or Settings())


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 endpoint on loopback (moto's server) with one bucket, for the tests that run
    the object-storage source in-process (one per session: a process keeps its S3 client)."""
    from tests.object_store import s3_endpoint

    with s3_endpoint(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint
