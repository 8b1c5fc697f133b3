"""What the benchmark scripts share (imported as ``common``: they run as scripts)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

BASELINES = Path(__file__).parent / "baselines"


def baselines(models: list[str]) -> Iterator[tuple[str, Path]]:
    """Each model's trained Fashion-MNIST checkpoint; a model without one is skipped, saying
    how to make it."""
    for model in models:
        path = BASELINES / f"{model}-fashion-mnist.safetensors"
        if path.is_file():
            yield model, path
        else:
            print(f"skip {model}: no baseline at {path} (bash benchmarks/baselines/train.sh "
                  f"{model})", file=sys.stderr)


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """--seed, --finetune-epochs and --set, as the scripts that run recipes take them."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune-epochs", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="STEP.KEY=VALUE", help="recipe options for every run, after "
                        "the per-model ones")
