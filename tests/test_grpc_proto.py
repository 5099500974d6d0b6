"""The committed gRPC code is what `make proto` (`python -m proto.build`) generates from the
.proto files, so the package imports without protoc and never drifts from its protocol."""

from __future__ import annotations

import subprocess
import sys

from proto import build


def test_generated_code_is_up_to_date(tmp_path):
    # In a process of its own: protoc's C++ protobuf must not meet the one TensorFlow loaded here.
    run = subprocess.run([sys.executable, "-m", "proto.build", str(tmp_path)], cwd=build.ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    generated = sorted(path for path in tmp_path.rglob("*_pb2*") if path.is_file())
    assert len(generated) == 3 * len(build.SOURCES)
    for path in generated:
        committed = build.ROOT / path.relative_to(tmp_path)
        assert committed.is_file() and committed.read_bytes() == path.read_bytes(), (
            f"{committed.relative_to(build.ROOT)} is out of date: run `make proto`")
