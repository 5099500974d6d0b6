"""In CI a skipped test fails the run, unless tests/allowed_skips.txt names it with a reason:
a check that quietly stops running (a tool gone missing, a plain `pytest.skip`) would
otherwise leave CI green. tests/conftest.py loads this as a plugin. CI means
`DIPTYCH_REQUIRE_TOOLS=1` (.ci/run sets it) or `CI=true` (hosted CI services set it)."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest

ALLOWED_SKIPS = Path(__file__).with_name("allowed_skips.txt")


def in_ci() -> bool:
    return os.environ.get("DIPTYCH_REQUIRE_TOOLS") == "1" or os.environ.get("CI", "").lower() == "true"


def allowed_skips(path: Path = ALLOWED_SKIPS) -> dict[str, str]:
    """{test id pattern: reason}; an entry without a reason is refused."""
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        pattern, _, reason = (part.strip() for part in line.partition(" -- "))
        if not reason:
            raise ValueError(f"{path.name}:{number}: {pattern!r} needs ' -- ' and the reason it may be skipped")
        entries[pattern] = reason
    return entries


class SkipPolicy:
    def __init__(self, allowed: dict[str, str]) -> None:
        self.allowed = allowed
        self.refused: list[tuple[str, str]] = []  # (test id, why it skipped)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail") and not any(
                fnmatch.fnmatchcase(report.nodeid, pattern) for pattern in self.allowed):
            why = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.refused.append((report.nodeid, why))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.refused and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.refused:
            terminalreporter.section("skips CI does not allow", red=True)
            for nodeid, why in self.refused:
                terminalreporter.line(f"{nodeid}: {why}")
            terminalreporter.line(f"In CI a skip fails the run; {ALLOWED_SKIPS.name} lists the ones allowed, each "
                                  "with its reason.")


def pytest_configure(config: pytest.Config) -> None:
    if in_ci():
        config.pluginmanager.register(SkipPolicy(allowed_skips()), "diptych-skip-policy")
