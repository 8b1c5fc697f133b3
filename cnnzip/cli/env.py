"""``cnnzip env``: versions and machine facts for bug reports."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform

from cnnzip import __version__
from cnnzip.cli.common import print_json

PACKAGES = ("torch", "numpy", "safetensors", "rich", "faiss-cpu", "constriction",
            "torch-pruning", "onnx", "onnxruntime", "pyyaml", "pydantic", "matplotlib")


def collect() -> dict[str, str]:
    """cnnzip, Python, platform, torch threads, and each dependency's version (or 'missing')."""
    import torch

    info = {"cnnzip": __version__, "python": platform.python_version(),
            "platform": platform.platform(), "torch threads": str(torch.get_num_threads())}
    for name in PACKAGES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    return info


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="print versions for bug reports",
                       description="Print cnnzip's, Python's and the dependencies' versions.")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print_json(info)
    else:
        for key, value in info.items():
            print(f"{key + ':':16} {value}")
    return 0
