"""The CI switches on a real pytest run (a subprocess on a tiny test file): DIPTYCH_REQUIRE_TOOLS=1
and DIPTYCH_REQUIRE_DOCKER=1 turn `unavailable` into a failure, and in CI any skip not on
tests/allowed_skips.txt fails the run while the allowed one does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.skip_policy import ALLOWED_SKIPS, allowed_skips

TINY = '''
import pytest
from tests.conftest import unavailable

def test_needs_a_tool():
    unavailable("sometool is not installed", {switch!r})

def test_skips_plainly():
    pytest.skip("no reason CI accepts")

def test_passes():
    pass
'''
ALLOWED = "tests/test_backbones.py::test_keras_application_offline_says_what_to_do"


def run_pytest(folder: Path, *names: str, **environ: str) -> subprocess.CompletedProcess:
    """pytest on `names` in `folder` (its root), with this project's conftest as a plugin and
    `environ` on top of an environment with every CI switch off."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("DIPTYCH_REQUIRE_") and key != "CI"}
    env.update(PYTHONPATH=str(ROOT), **environ)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(folder), "-c", os.devnull, "-rs", *names],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("switch", ["DIPTYCH_REQUIRE_TOOLS", "DIPTYCH_REQUIRE_DOCKER"])
def test_a_require_switch_turns_a_missing_tool_into_a_failure(tmp_path, switch):
    (tmp_path / "test_tiny.py").write_text(TINY.format(switch=switch))
    off = run_pytest(tmp_path, "test_tiny.py::test_needs_a_tool")
    assert off.returncode == 0 and "1 skipped" in off.stdout, off.stdout
    on = run_pytest(tmp_path, "test_tiny.py::test_needs_a_tool", **{switch: "1"})
    assert on.returncode == 1 and "1 failed" in on.stdout and f"sometool is not installed ({switch}=1)" in on.stdout


@pytest.mark.parametrize("ci", [{"DIPTYCH_REQUIRE_TOOLS": "1"}, {"CI": "true"}])
def test_in_ci_a_skip_fails_the_run_unless_allowed(tmp_path, ci):
    (tmp_path / "test_tiny.py").write_text(TINY.format(switch="UNSET_SWITCH"))
    off = run_pytest(tmp_path, "test_tiny.py")
    assert off.returncode == 0 and "2 skipped" in off.stdout, off.stdout
    on = run_pytest(tmp_path, "test_tiny.py", **ci)
    assert on.returncode == 1 and "1 passed, 2 skipped" in on.stdout, on.stdout
    assert "skips CI does not allow" in on.stdout
    assert "test_tiny.py::test_skips_plainly: Skipped: no reason CI accepts" in on.stdout

    # The allow-list's entry, as a test of that id here, skips without failing the run.
    allowed_file, name = ALLOWED.split("::")
    (tmp_path / allowed_file).parent.mkdir()
    (tmp_path / allowed_file).write_text(f"import pytest\n\ndef {name}():\n    pytest.skip('cached')\n")
    allowed = run_pytest(tmp_path, allowed_file, "test_tiny.py::test_passes", **ci)
    assert allowed.returncode == 0 and "1 passed, 1 skipped" in allowed.stdout, allowed.stdout


def test_every_allowed_skip_has_a_reason_and_names_a_test(tmp_path):
    entries = allowed_skips()
    assert ALLOWED in entries and all(len(reason) > 20 for reason in entries.values())
    for pattern in entries:
        path, _, name = pattern.partition("::")
        assert f"def {name}(" in (ROOT / path).read_text(), f"{ALLOWED_SKIPS.name} names no test {pattern}"
    (tmp_path / "allowed.txt").write_text("# comment\ntests/test_x.py::test_y\n")
    with pytest.raises(ValueError, match=r"allowed.txt:2: 'tests/test_x.py::test_y' needs ' -- ' and the reason"):
        allowed_skips(tmp_path / "allowed.txt")
