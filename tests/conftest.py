"""Fixtures shared across test modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny real classifier and generator, trained on Fashion-MNIST by the training CLIs
    (both at once, once per session): {"classifier": version folder, "generator": ...}."""
    root = tmp_path_factory.mktemp("tiny-models")
    commands = {
        "classifier": ["training.classifier", "--backbone", "scratch", "--per-class", "20", "--image-size", "32",
                       "--epochs", "10", "--seed", "0"],
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
