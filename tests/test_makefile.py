"""`make demo`'s output: TensorFlow's C++ start-up lines are hidden, and nothing else is."""

from __future__ import annotations

import subprocess

from tests.conftest import ROOT

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796399300.988878   27643 port.cc:153] oneDNN custom operations are on. You may see slightly",
    "I0000 00:00:1796399300.989155   27643 cudart_stub.cc:31] Could not find cuda drivers on your machine",
    "E0000 00:00:1796399309.037557   27643 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow",
    "I0000 00:00:1796397220.548429    1674 loader.cc:236] Restoring SavedModel bundle.",
    "W0000 00:00:1796397225.678108    1674 tf_tfl_flatbuffer_helpers.cc:364] Ignored output_format.",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
]
KEPT = [
    "[classifier] data: fashion-mnist, 1000 training + 0 validation images, 10 classes, resized to 96 px",
    "published classifier:1 (LiteRT verified: agrees with TensorFlow on the export's 40 calibration inputs)",
    "E0000 00:00:1796399309.037557   27643 some_kernel.cc:52] a real TensorFlow error is still shown",
    "2026-12-04T15:05:01+0000 [ERROR] [entry_service:diptych:1] the classifier could not be loaded from x",
]


def tf_noise_filter() -> str:
    """The Makefile's TF_NOISE, as make expands it (its database, printed without running anything)."""
    database = subprocess.run(["make", "--no-print-directory", "-p", "-n", "help"], cwd=ROOT, capture_output=True,
                              text=True).stdout
    (definition,) = [line for line in database.splitlines() if line.startswith("TF_NOISE := ")]
    return definition.split(":= ", 1)[1]


def filtered(lines: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", "cat | " + tf_noise_filter()],
                          input="\n".join(lines) + "\n", capture_output=True, text=True)


def test_the_demo_hides_tensorflows_start_up_lines_and_nothing_else():
    shown = filtered(NOISE + KEPT)
    assert shown.returncode == 0 and shown.stdout.splitlines() == KEPT
    nothing_left = filtered(NOISE)
    assert nothing_left.returncode == 0 and nothing_left.stdout == ""  # all hidden is no failure
