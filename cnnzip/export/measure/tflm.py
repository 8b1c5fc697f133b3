"""Running a ``.tflite`` in TensorFlow Lite Micro's own interpreter (the ``tflite-micro``
package: TFLM's reference kernels and memory planner, built for the host), one image at a
time as firmware would; and the smallest tensor arena it runs in."""

from __future__ import annotations

import contextlib
import importlib.util
import os
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
def _quiet_stderr() -> Iterator[None]:
    """TFLM prints its refusals on the C stderr; they are raised as errors instead."""
    saved = os.dup(2)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def interpreter(model: bytes, arena_bytes: int | None = None):
    """TFLM's interpreter for ``model``, its tensors allocated in an arena of ``arena_bytes``
    (default: ten times the model's size)."""
    runtime = _runtime()
    try:
        with _quiet_stderr():
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


def smallest_arena(model: bytes, alignment: int = 16) -> int:
    """The smallest tensor arena (bytes, a multiple of ``alignment``) TFLM allocates
    ``model`` in, by bisection over interpreters that succeed or refuse."""
    runtime = _runtime()

    def fits(size: int) -> bool:
        try:
            with _quiet_stderr():
                runtime.Interpreter.from_bytes(model, arena_size=size)
            return True
        except (RuntimeError, ValueError):
            return False

    hi = -(-max(1024, 10 * len(model)) // alignment)  # in units of alignment
    while not fits(hi * alignment):
        hi *= 2
        if hi * alignment > 1 << 30:
            raise CnnzipError("TensorFlow Lite Micro allocates the model in no arena below 1 GiB")
    lo = 0  # an empty arena never fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid * alignment) else (mid, hi)
    return hi * alignment
