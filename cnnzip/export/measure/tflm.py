"""Running a ``.tflite`` in TensorFlow Lite Micro's own interpreter (the ``tflite-micro``
package: TFLM's reference kernels and memory planner, built for the host), one image at a
time as firmware would; and the tensor arena it reports for the model."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import tempfile
from typing import Iterator

import numpy as np

from cnnzip.errors import CnnzipError
from cnnzip.progress import progress_bar

INSTALL = "pip install tflite-micro==0.dev20261023182759 (scripts/setup.sh installs it)"


def _runtime():
    if importlib.util.find_spec("tflite_micro") is None:
        raise CnnzipError(f"tflite-micro is not installed: {INSTALL}")
    from tflite_micro.python.tflite_micro import runtime
    return runtime


@contextlib.contextmanager
def _stderr_to(target) -> Iterator[None]:
    """The C stderr (where TFLM prints) sent to the open file ``target`` meanwhile."""
    saved = os.dup(2)
    os.dup2(target.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def interpreter(model: bytes, arena_bytes: int | None = None):
    """TFLM's interpreter for ``model``, its tensors allocated in an arena of ``arena_bytes``
    (default: ten times the model's size)."""
    runtime = _runtime()
    try:  # TFLM prints its refusals on stderr; they are raised as errors instead
        with open(os.devnull, "wb") as null, _stderr_to(null):
            return runtime.Interpreter.from_bytes(model, arena_size=arena_bytes)
    except (RuntimeError, ValueError) as exc:
        raise CnnzipError(f"TensorFlow Lite Micro refuses the model: {exc}") from None


def run(model: bytes, inputs: np.ndarray, quiet: bool = True) -> np.ndarray:
    """``model``'s int8 outputs for int8 ``inputs`` (batch first, each in the model's input
    shape), one ``invoke`` per input."""
    tflm = interpreter(model)
    outputs = []
    with progress_bar(disable=quiet) as bar:
        task = bar.add_task("TFLM", total=len(inputs), status="")
        for x in inputs:
            tflm.set_input(np.ascontiguousarray(x[None]), 0)
            tflm.invoke()
            outputs.append(np.array(tflm.get_output(0)[0]))
            bar.advance(task)
    return np.stack(outputs)


_ARENA = re.compile(rb"Arena allocation (total|head|tail) (\d+) bytes")


def arena(model: bytes) -> dict[str, int]:
    """The tensor arena TFLM's recording allocator reports for ``model``: ``total`` bytes,
    of which ``head`` (the feature maps, planned over their lifetimes) and ``tail``
    (persistent: tensor structs, each layer's multipliers and shifts). TFLM's own prepare
    step needs a few hundred bytes more while it plans."""
    tflm = interpreter(model)
    with tempfile.TemporaryFile() as captured:
        with _stderr_to(captured):
            tflm.print_allocations()
        captured.seek(0)
        found = {k.decode(): int(v) for k, v in _ARENA.findall(captured.read())}
    if set(found) != {"total", "head", "tail"}:
        raise CnnzipError("TensorFlow Lite Micro did not report its arena")
    return found
