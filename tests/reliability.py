"""Helpers for the fault and fuzzing tests (tests/test_faults.py, tests/test_fuzz.py):
servers of their own, their worker processes, metrics, raw sockets."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server

WORKER = "_bentoml_impl.worker.service"  # BentoML's worker process: the service, its models and gRPC


def dedicated(server_env: dict[str, str], folder: Path, name: str, prepare: Callable[[Path], None] | None = None,
              **settings: str) -> Server:
    """A server of its own (started, not yet ready): a BENTOML_HOME with a copy of the
    session's model store (`bentoml serve` empties the home's metrics folder as it starts),
    which `prepare(models folder)` may change first."""
    models = folder / f"{name}-home" / "models"
    shutil.copytree(Path(server_env["BENTOML_HOME"]) / "models", models)
    if prepare is not None:
        prepare(models)
    return Server({**server_env, "BENTOML_HOME": str(models.parent), **settings}, folder / f"{name}.log")


def stop(*servers: Server) -> None:
    """SIGTERM them all at once, then wait; whatever is left (workers too) is killed by pid."""
    workers = [process for server in servers for process in worker_processes(server)]
    for server in servers:
        server.client.close()
        if server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGTERM)
    for server in servers:
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
    for process in workers:
        try:
            process.kill()  # a worker is in a process group of its own
        except psutil.NoSuchProcess:
            pass


def worker_processes(server: Server) -> list[psutil.Process]:
    """The BentoML worker processes of `server` (children of its `bentoml serve` arbiter)."""
    try:
        children = psutil.Process(server.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if WORKER in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def worker_rss(server: Server) -> int:
    """Resident memory of the server's workers, in bytes."""
    return sum(process.memory_info().rss for process in worker_processes(server))


def metric(server: Server, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`, from /metrics."""
    wanted = set(labels.items())
    families = text_string_to_metric_families(server.client.get("/metrics").text)
    return sum(sample.value for family in families for sample in family.samples
               if sample.name == name and wanted <= set(sample.labels.items()))


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=60)


def request_head(path: str, length: int | None = None, content_type: str = "application/json",
                 chunked: bool = False, headers: dict[str, str] | None = None) -> bytes:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n{extra}{framing}\r\n\r\n".encode()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length, read to its end."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole response head: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {key.lower(): value.strip() for key, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), body
