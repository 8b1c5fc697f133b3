"""Versions and machine facts for bug reports (``cnnzip env``)."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess

from cnnzip import __version__
from cnnzip.data import dataset_locations

PACKAGES = ("torch", "numpy", "safetensors", "rich", "faiss-cpu", "constriction",
            "torch-pruning", "onnx", "onnxruntime", "pyyaml", "pydantic", "matplotlib",
            "hls4ml", "optuna", "tensorly", "tflite-micro")


TOOLS = ("gcc", "g++", "arm-none-eabi-gcc", "qemu-system-arm")  # the C export's and bench's


def _tool(name: str) -> str:
    """A tool's version line (the first line of ``NAME --version``), or 'missing'."""
    path = shutil.which(name)
    if path is None:
        return "missing"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return f"{path} (no version)"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else path


def environment() -> dict[str, str]:
    """cnnzip, Python, platform, torch threads, each dependency's version (or 'not
    installed'), the toolchains' versions (or 'missing'), and whether each named dataset is
    at its default location."""
    import torch

    info = {"cnnzip": __version__, "python": platform.python_version(),
            "platform": platform.platform(), "torch threads": str(torch.get_num_threads())}
    for name in PACKAGES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    for name in TOOLS:
        info[name] = _tool(name)
    for name, where in dataset_locations().items():
        info[f"dataset {name}"] = f"{where}" if where else "missing (pass --data-dir)"
    return info
