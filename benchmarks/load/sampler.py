"""The service's memory and CPU over a run, from /proc: each phase reports the server's CPU
per request and image, and the mixed load's RSS series shows whether memory flattens."""

from __future__ import annotations

import threading
import time
from typing import Any

from benchmarks.serving import Service


class Sampler(threading.Thread):
    """Every `every` seconds: RSS of each process of the service (the `bentoml serve` parent and
    its descendants, found through /proc like `Service.cpu_seconds`) and the CPU they used."""

    def __init__(self, service: Service, every: float) -> None:
        super().__init__(daemon=True)
        self.service, self.every = service, every
        self.samples: list[dict[str, Any]] = []  # {"t", "phase", "cpu", "rss": {pid: bytes}}
        self.roles: dict[int, str] = {}
        self.phase = "idle"
        self.stopping = threading.Event()

    def sample(self) -> dict[str, Any]:
        import psutil  # the dev extra's (pyproject.toml): --help and --report run without it

        root = psutil.Process(self.service.process.pid)
        rss = {}
        for process in [root, *root.children(recursive=True)]:
            try:
                rss[process.pid] = process.memory_info().rss
                if process.pid not in self.roles:
                    self.roles[process.pid] = role(process, root.pid)
            except psutil.Error:
                continue
        entry = {"t": time.monotonic(), "phase": self.phase, "cpu": self.service.cpu_seconds(), "rss": rss}
        self.samples.append(entry)
        return entry

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def role(process: Any, root: int) -> str:
    cmdline = " ".join(process.cmdline())
    if process.pid == root:
        return "bentoml serve (parent)"
    if "worker" in cmdline:
        worker = cmdline.split("--worker-id", 1)[1].split()[0] if "--worker-id" in cmdline else "?"
        return f"worker {worker}"
    return process.name()


def memory_report(sampler: Sampler) -> dict[str, Any]:
    """RSS before the first phase and after the last, the peak, and the growth in the first and
    the last third of the time under the sustained mixed load (the pure phases after it are
    lighter): see `trend`."""
    loaded = [s for s in sampler.samples if s["phase"] != "idle"]
    mixed = [s for s in loaded if s["phase"] == "mixed"]
    before = next((s for s in sampler.samples if s["phase"] == "idle"), sampler.samples[0])
    after = sampler.samples[-1]
    processes = {}
    for pid, name in sampler.roles.items():
        series = [s["rss"].get(pid) for s in loaded if pid in s["rss"]]
        processes[f"{name} (pid {pid})"] = {
            "before MiB": mib(before["rss"].get(pid)), "after MiB": mib(after["rss"].get(pid)),
            "peak MiB": mib(max(series) if series else None),
        }
    peak = max((sum(s["rss"].values()) for s in loaded), default=None)
    total = [(s["t"], sum(s["rss"].values())) for s in mixed]
    report: dict[str, Any] = {"processes": processes, "samples": len(total),
                              "total before MiB": mib(sum(before["rss"].values())),
                              "total after MiB": mib(sum(after["rss"].values())), "total peak MiB": mib(peak),
                              "mixed-load series MiB": [[round(t - total[0][0]), mib(v)] for t, v in total]}
    if len(total) >= 6:
        report.update(trend(total))
    return report


def trend(total: list[tuple[float, int]]) -> dict[str, Any]:
    """The growth of the total RSS in the first and the last third of the mixed load: flat when
    the last third grows by at most half the first third's growth, or by under 2% (noise)."""
    span = total[-1][0] - total[0][0]
    first = [v for t, v in total if t <= total[0][0] + span / 3]
    last = [v for t, v in total if t >= total[-1][0] - span / 3]
    growth_first, growth_last = first[-1] - first[0], last[-1] - last[0]
    flat = growth_last <= max(growth_first / 2, 0.02 * last[0])
    return {"growth first third MiB": mib(growth_first), "growth last third MiB": mib(growth_last),
            "minutes under load": span / 60, "flat": flat}


def mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)
