"""Model execution behind one small interface, so the engine underneath can change.

A `Runtime` runs one signature of an exported model on a whole batch: named numpy
inputs in, named numpy outputs out (the shapes of docs/architecture.md). Two implement it:
TensorFlow calling the SavedModel's signature, and a pool of LiteRT interpreters running
the flatbuffer converted from it (contract/litert.py); the serving core sees no difference.
Both sides use them: the conversion runs both to prove they agree, the service to serve.
"""

from __future__ import annotations

import math
import os
import queue
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

TENSORFLOW = "tensorflow"
LITERT = "litert"


class Runtime(Protocol):
    name: str  # TENSORFLOW or LITERT: reported with every response and metric

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


CPU_QUOTA_FILES = (  # cgroup v2, then v1: a container's CPU limit (docker --cpus, Kubernetes limits.cpu)
    ("/sys/fs/cgroup/cpu.max",),
    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
)


def cores() -> int:
    """CPU cores this process may use: the CPUs it may run on, capped by its cgroup's CPU
    quota rounded up (a container limited to 1.5 CPUs on a 16-core host gets 2, not 16)."""
    return min(len(os.sched_getaffinity(0)), cpu_quota() or os.cpu_count() or 1)


def cpu_quota(files: tuple[tuple[str, ...], ...] = CPU_QUOTA_FILES) -> int | None:
    """The cgroup CPU quota in whole CPUs (rounded up), or None when there is none."""
    for paths in files:
        try:
            values = " ".join(Path(path).read_text() for path in paths).split()
        except OSError:
            continue
        quota, period = values[0], values[-1]
        if quota in ("max", "-1") or not period.isdigit() or int(period) == 0:
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    return None


class SavedModelRuntime:
    """Calls a loaded signature (a concrete function: compiled, never eager per image).

    Thread-safe: concurrent calls share TensorFlow's own thread pools.
    """

    name = TENSORFLOW

    def __init__(self, path: str, signature: str = "serving_default") -> None:
        import tensorflow as tf

        self._tf = tf
        self._function = tf.saved_model.load(path).signatures[signature]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._function(**{name: self._tf.constant(value) for name, value in inputs.items()})
        return {name: value.numpy() for name, value in outputs.items()}


class LiteRTRuntime:
    """A pool of single-threaded LiteRT interpreters (XNNPACK) over one flatbuffer.

    One interpreter per core beats one interpreter with a thread per core: `invoke()`
    releases the GIL, so the batch workers run them in parallel, and a single-threaded
    interpreter wastes nothing on synchronisation. Each interpreter is allocated once at
    batch 1 and a batch is run one row at a time: measured, that is at least as fast per
    image as a larger batch here, and resizing the input tensors for every new batch size
    costs a re-allocation. A call borrows a free interpreter, so any thread may call `run`.
    """

    name = LITERT

    def __init__(self, flatbuffer: bytes, interpreters: int) -> None:
        self.interpreters = interpreters
        self._free: queue.SimpleQueue[_Interpreter] = queue.SimpleQueue()
        for _ in range(interpreters):
            self._free.put(_Interpreter(flatbuffer))

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        interpreter = self._free.get()
        try:
            rows = [interpreter.run({name: value[i : i + 1] for name, value in inputs.items()})
                    for i in range(len(next(iter(inputs.values()))))]
        finally:
            self._free.put(interpreter)
        return {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}


class _Interpreter:
    """One interpreter of the flatbuffer's only signature, its inputs fixed at batch 1."""

    def __init__(self, flatbuffer: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
        inputs, outputs = self._signature_details()
        self._inputs = {name: detail["index"] for name, detail in inputs.items()}
        self._outputs = {name: detail["index"] for name, detail in outputs.items()}
        for detail in inputs.values():
            self._interpreter.resize_tensor_input(detail["index"], [1, *detail["shape"][1:]], strict=True)
        self._interpreter.allocate_tensors()

    def _signature_details(self) -> tuple[dict, dict]:
        """Tensor details by signature name. The runner must be gone before `allocate_tensors`,
        which refuses to run while anything else holds the interpreter's internals."""
        runner = self._interpreter.get_signature_runner()
        return runner.get_input_details(), runner.get_output_details()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in inputs.items():
            self._interpreter.set_tensor(self._inputs[name], value)
        self._interpreter.invoke()
        return {name: self._interpreter.get_tensor(index) for name, index in self._outputs.items()}
