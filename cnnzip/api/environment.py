"""Versions and machine facts for bug reports (``cnnzip env``)."""

from __future__ import annotations

import importlib.metadata
import platform

from cnnzip import __version__

PACKAGES = ("torch", "numpy", "safetensors", "rich", "faiss-cpu", "constriction",
            "torch-pruning", "onnx", "onnxruntime", "pyyaml", "pydantic", "matplotlib",
            "hls4ml", "optuna", "tensorly", "tflite-micro")


def environment() -> dict[str, str]:
    """cnnzip, Python, platform, torch threads, and each dependency's version (or 'not
    installed')."""
    import torch

    info = {"cnnzip": __version__, "python": platform.python_version(),
            "platform": platform.platform(), "torch threads": str(torch.get_num_threads())}
    for name in PACKAGES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    return info
