"""docker-compose.yml: diptych + Prometheus + Grafana.

The file must validate (Compose v2's own `config -q`, no engine needed) and hold what
production needs: pinned monitoring images, memory limits, a read-only diptych with tmpfs
where it writes, mounts of files that exist. Then, in the private engine
(tests/docker_engine.py), diptych and Prometheus come up for real with the host-network
override, and Prometheus must scrape diptych: `up == 1` and diptych_* series, with the
repository's alert rules loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, free_port
from tests.docker_engine import WRITABLE, DockerEngine, diptych_image, docker_engine, unavailable  # noqa: F401

COMPOSE = ROOT / "docker-compose.yml"
HOSTNET = ROOT / "deploy" / "compose.hostnet.yml"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DOCKER_COMPOSE = Path(sys.executable).with_name("docker-compose")
HOSTNET_ENV = {"DIPTYCH_HTTP_PORT": "3000", "DIPTYCH_GRPC_PORT": "50051", "PROMETHEUS_PORT": "9090",
               "GRAFANA_PORT": "3001", "PROMETHEUS_CONFIG": str(SCRAPE_CONFIG)}


def compose_command(*args: str, env: dict[str, str] | None = None, files=(COMPOSE,), timeout: float = 60):
    command = [str(DOCKER_COMPOSE), *[option for path in files for option in ("-f", str(path))], *args]
    return subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def resolved(files=(COMPOSE,), env: dict[str, str] | None = None) -> dict:
    result = compose_command("config", "--format", "json", files=files, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_is_valid():
    result = compose_command("config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_hostnet_override_is_valid():
    result = compose_command("config", "--quiet", files=(COMPOSE, HOSTNET), env=HOSTNET_ENV)
    assert result.returncode == 0, result.stderr
    services = resolved((COMPOSE, HOSTNET), HOSTNET_ENV)["services"]
    for name, service in services.items():
        assert service["network_mode"] == "host" and not service.get("ports"), name


def test_services_are_pinned_limited_and_mounted():
    config = resolved()
    services = config["services"]
    assert set(services) == {"diptych", "prometheus", "grafana"}
    assert services["prometheus"]["image"].startswith("prom/prometheus:v")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    for name, service in services.items():
        assert not service["image"].endswith(":latest") or name == "diptych", name  # `make image` tags diptych:latest
        assert int(service["deploy"]["resources"]["limits"]["memory"]) > 0, name
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name} mounts {volume['source']}, which does not exist"
    diptych = services["diptych"]
    assert diptych["read_only"] and set(diptych["tmpfs"]) == set(WRITABLE)
    cache = {volume["target"]: volume for volume in diptych["volumes"]}["/var/cache/diptych"]  # DIPTYCH_CACHE_DIR
    assert cache["type"] == "volume" and cache["source"] in config["volumes"]
    assert {"3000", "50051"} <= {str(port["target"]) for port in diptych["ports"]}
    assert parse_seconds(diptych["stop_grace_period"]) > 30  # DIPTYCH_TIMEOUT_S for calls in flight
    targets = {volume["target"] for volume in services["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= targets


def parse_seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    total, number = 0.0, ""
    for char in duration:
        if char.isdigit() or char == ".":
            number += char
        else:
            total, number = total + float(number) * units[char], ""
    return total


def hostnet_scrape_config(diptych_port: int, folder: Path) -> Path:
    """deploy/prometheus/prometheus.yml with the diptych target on loopback (host networking
    has no service names) and a 1 s scrape interval; everything else as shipped."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "diptych"]
    assert len(jobs) == 1, "prometheus.yml has no scrape job named diptych"
    jobs[0]["static_configs"] = [{"targets": [f"127.0.0.1:{diptych_port}"]}]
    jobs[0]["scrape_interval"] = jobs[0]["scrape_timeout"] = "1s"
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o644)  # read by Prometheus' user in the container
    return path


@pytest.fixture(scope="module")
def prometheus_image(docker_engine: DockerEngine, diptych_image: str, tmp_path_factory) -> str:
    """The stand-in for prom/prometheus: the local base plus the host's Prometheus binary."""
    binary = shutil.which("prometheus")
    if binary is None:
        unavailable("no prometheus binary to put in the image (apt-get install prometheus)")
    context = tmp_path_factory.mktemp("prometheus-image")
    shutil.copy2(binary, context / "prometheus")
    tag = "diptych-prometheus:test"
    docker_engine.docker("build", "--network", "none", "--file", str(ROOT / "deploy/image/prometheus.Dockerfile"),
                         "--tag", tag, str(context), timeout=600)
    return tag


def query(prometheus: str, promql: str) -> list[dict]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    response.raise_for_status()
    return response.json()["data"]["result"]


@pytest.mark.slow
def test_prometheus_scrapes_diptych(docker_engine: DockerEngine, diptych_image: str, prometheus_image: str,
                                    tmp_path):
    ports = {name: str(free_port()) for name in ("DIPTYCH_HTTP_PORT", "DIPTYCH_GRPC_PORT", "PROMETHEUS_PORT",
                                                 "GRAFANA_PORT")}
    env = {**docker_engine.env, **ports, "DIPTYCH_IMAGE": diptych_image, "PROMETHEUS_IMAGE": prometheus_image,
           "PROMETHEUS_CONFIG": str(hostnet_scrape_config(int(ports["DIPTYCH_HTTP_PORT"]), tmp_path))}
    project = f"diptych-test-{os.getpid()}"
    prometheus = f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}"
    files = (COMPOSE, HOSTNET)

    def compose(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return compose_command("--project-name", project, *args, files=files, env=env, timeout=timeout)

    try:
        up = compose("up", "--detach", "--wait", "--wait-timeout", "300", "diptych", "prometheus", timeout=360)
        assert up.returncode == 0, f"{up.stderr[-3000:]}\n{compose('logs', '--no-color').stdout[-4000:]}"
        containers = compose("ps", "--quiet").stdout.split()
        assert len(containers) == 2
        for container in containers:
            memory = docker_engine.docker("inspect", "--format", "{{.HostConfig.Memory}}", container).stdout
            assert int(memory) > 0, "compose did not apply the memory limit"

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            up_series = query(prometheus, 'up{job="diptych"}')
            diptych_series = query(prometheus, 'count({job="diptych", __name__=~"diptych_.+"})')
            if [series["value"][1] for series in up_series] == ["1"] and diptych_series:
                break
            time.sleep(1)
        assert [series["value"][1] for series in up_series] == ["1"], up_series
        assert diptych_series and int(diptych_series[0]["value"][1]) > 0
        assert query(prometheus, 'diptych_model_info{job="diptych"} == 1'), "no model_info series"

        rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        shipped = [group["name"] for group in yaml.safe_load(ALERTS.read_text())["groups"]]
        assert [group["name"] for group in rules] == shipped, "the alert rules did not load"
    finally:
        down = compose("down", "--volumes", "--timeout", "45")
    assert down.returncode == 0, down.stderr
    label = f"label=com.docker.compose.project={project}"
    assert not docker_engine.docker("ps", "--all", "--quiet", "--filter", label).stdout.strip(), "containers left"
    assert not docker_engine.docker("volume", "ls", "--quiet", "--filter", label).stdout.strip(), "volumes left"
