"""Generate the Python modules of diptych's .proto files: `python -m proto.build` (`make proto`).

The generated `*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` files are committed beside their
.proto files, so installing and importing diptych never needs protoc; the test suite
regenerates them into a scratch folder and fails when the committed ones differ. They are
generated with the repository root as the include path, so they import each other as
`proto.<package>...` modules.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("proto/diptych/v1/diptych.proto", "proto/inference/grpc_predict_v2.proto",
           "tests/kinds/embedder.proto")  # the last: a test kind's messages (tests/kinds/embedder.py)


def generate(out: Path = ROOT) -> list[Path]:
    """Write the generated modules under `out` (the repository root by default); return them."""
    well_known = resources.files("grpc_tools") / "_proto"
    args = ["protoc", f"-I{ROOT}", f"-I{well_known}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *SOURCES]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted(path for source in SOURCES for path in (out / source).parent.glob(Path(source).stem + "_pb2*"))


if __name__ == "__main__":  # python -m proto.build [OUT]: OUT defaults to the repository root
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(out):
        print(path.relative_to(out), file=sys.stderr)
