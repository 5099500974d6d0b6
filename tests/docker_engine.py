"""A private Docker engine for the image and compose tests, and the diptych image built in it.

    from tests.docker_engine import diptych_image, docker_engine  # the fixtures

`docker_engine` starts Debian's dockerd on its own socket (`dockerd --data-root D
--exec-root E -H unix://S --pidfile P`) with no bridge, no iptables rules and no IP
forwarding: every container runs with host networking on loopback. It skips, saying why,
when dockerd is missing, the tests do not run as root, or dockerd does not start; with
DIPTYCH_REQUIRE_DOCKER=1 (CI) those are failures instead.

The data root lives in the build cache (deploy/image/build.py: /var/cache/diptych as root),
so the base image and the image's layers survive between runs and a rebuild takes seconds;
a second test session running at the same time (or a dockerd someone left on it) gets a
scratch data root instead. Both modules that import the fixtures share one engine and one
image per session.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests import conftest as tools
from tests.conftest import ROOT


def _load_image_build():
    """deploy/image/build.py as a module (a script, not a package): its cache and its client."""
    spec = importlib.util.spec_from_file_location("diptych_image_build", ROOT / "deploy" / "image" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


image_build = _load_image_build()

WRITABLE = ["/tmp", "/home/diptych/bentoml/prometheus_multiproc_dir"]  # the tmpfs a read-only diptych needs
BUILD_CACHE_BUDGET = "5GB"  # BuildKit cache kept in the persistent data root after a session
START_TIMEOUT_S = 60


class DockerEngine:
    """A running dockerd and a client bound to it (`engine.docker("ps")`)."""

    def __init__(self, data_root: Path) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="dptd-"))  # short: unix socket paths are limited
        self.data_root = data_root
        self.socket = self.run_dir / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "1"}
        self.client = image_build.docker_client()
        self.log = self.run_dir / "dockerd.log"
        # The pid file sits beside the data root: dockerd refuses to start while another one
        # still uses it. If pytest dies without stopping it, the kernel sends it SIGTERM.
        self.process = subprocess.Popen(
            ["dockerd", "--data-root", str(data_root), "--exec-root", str(self.run_dir / "exec"),
             "-H", f"unix://{self.socket}", "--pidfile", str(data_root.with_suffix(".pid")),
             "--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_terminate_with_parent,
        )

    def wait_ready(self) -> str | None:
        """None once the engine answers, else why it did not."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return f"dockerd exited with {self.process.returncode}: {self.log.read_text()[-1500:]}"
            if self.docker("version", check=False, timeout=10).returncode == 0:
                return None
            time.sleep(0.5)
        return f"dockerd did not answer within {START_TIMEOUT_S} s: {self.log.read_text()[-1500:]}"

    def docker(self, *args: str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run([self.client, *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result

    def stop(self) -> None:
        """Prune what this session left unreferenced, then stop dockerd by its pid."""
        if self.process.poll() is None:
            self.docker("image", "prune", "--force", check=False)
            self.docker("builder", "prune", "--force", "--keep-storage", BUILD_CACHE_BUDGET, check=False, timeout=300)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # dockerd leaves its default network namespace bind-mounted in the exec root.
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mount in sorted((path for path in mounts if path.startswith(f"{self.run_dir}/")), reverse=True):
            subprocess.run(["umount", mount], capture_output=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent (pytest) dies (prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def _why_no_engine() -> str | None:
    if not shutil.which("dockerd"):
        return "no dockerd binary (apt-get install docker.io)"
    if os.geteuid() != 0:
        return "dockerd needs root and the tests do not run as root"
    try:
        image_build.docker_client()
    except SystemExit as error:
        return str(error)
    return None


class _Shared:
    """One engine (and one image) per session, however many modules import the fixtures."""

    engine: DockerEngine | None = None
    skip_reason: str | None = None
    users = 0
    lock: object = None
    scratch: Path | None = None
    image: str | None = None


def unavailable(message: str) -> None:
    """Skip, saying why; under DIPTYCH_REQUIRE_DOCKER=1 (CI) fail instead."""
    tools.unavailable(message, "DIPTYCH_REQUIRE_DOCKER")


def _data_root() -> Path:
    """The persistent data root if no other session holds it, else a scratch one."""
    cache = image_build.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    lock = (cache / "docker.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _alive(cache / "docker.pid"):  # a dockerd outside any session (started by hand) has it
            raise BlockingIOError
    except BlockingIOError:
        lock.close()
        _Shared.scratch = Path(tempfile.mkdtemp(prefix="diptych-docker-", dir=cache))
        return _Shared.scratch
    _Shared.lock = lock
    return cache / "docker"


@pytest.fixture(scope="session")
def docker_engine():
    if _Shared.engine is None and _Shared.skip_reason is None:
        _Shared.skip_reason = _why_no_engine()
        if _Shared.skip_reason is None:
            engine = DockerEngine(_data_root())
            if reason := engine.wait_ready():
                _Shared.skip_reason = f"dockerd failed to start: {reason}"
                _release(engine)
            else:
                _Shared.engine = engine
    if _Shared.skip_reason:
        unavailable(f"no Docker engine: {_Shared.skip_reason}")
    _Shared.users += 1
    try:
        yield _Shared.engine
    finally:
        _Shared.users -= 1
        if _Shared.users == 0 and _Shared.engine is not None:
            _release(_Shared.engine)


def _release(engine: DockerEngine) -> None:
    """Stop the engine, then free its data root: delete a scratch one, unlock the cache's."""
    engine.stop()
    if _Shared.scratch is not None:
        shutil.rmtree(_Shared.scratch, ignore_errors=True)
    if _Shared.lock is not None:
        _Shared.lock.close()
    _Shared.engine = _Shared.image = _Shared.scratch = _Shared.lock = None


@pytest.fixture(scope="session")
def diptych_image(docker_engine: DockerEngine, tiny_models, tmp_path_factory) -> str:
    """The image as `make image` builds it (deploy/image/build.py), with the tiny models."""
    if _Shared.image is None:
        tag = "diptych:test"
        stage = ROOT / ".cache" / f"image-test-{os.getpid()}"
        log = tmp_path_factory.mktemp("image-build") / "build.log"
        start = time.monotonic()
        try:
            with log.open("w") as out:
                built = subprocess.run(
                    [sys.executable, str(ROOT / "deploy" / "image" / "build.py"), "--tag", tag,
                     "--models", str(tiny_models["classifier"].parent.parent), "--stage", str(stage)],
                    env={**docker_engine.env, "DOCKER": docker_engine.client}, stdout=out, stderr=subprocess.STDOUT,
                    cwd=ROOT, timeout=1800,
                )
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        assert built.returncode == 0, f"the image build failed:\n{log.read_text()[-5000:]}"
        print(f"\nbuilt {tag} in {time.monotonic() - start:.0f} s")
        _Shared.image = tag
    return _Shared.image


@contextlib.contextmanager
def removed_after(engine: DockerEngine, name: str):
    """Yield `name`; remove the container of that name afterwards, whatever happened."""
    try:
        yield name
    finally:
        engine.docker("rm", "--force", "--volumes", name, check=False)
