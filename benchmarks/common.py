"""What the benchmark scripts share (imported as ``common``: they run as scripts)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def recipe_parser(doc: str, models: list[str], recipe: str, out: str) -> argparse.ArgumentParser:
    """The options of a script that runs a recipe over baselines: --models, --recipe, --out,
    and those of :func:`add_recipe_options`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=models)
    parser.add_argument("--recipe", default=recipe)
    parser.add_argument("--out", default=out)
    add_recipe_options(parser)
    return parser


def compress_each(args: argparse.Namespace,
                  overrides: dict[str, list[str]] | None = None,
                  ) -> Iterator[tuple[str, Path, Path, dict[str, Any], float, tuple[str, ...]]]:
    """Compress every baseline in ``args.models`` with ``args.recipe`` (per-model
    ``overrides`` first, then ``--set``); yields (model, checkpoint, output folder, report,
    seconds, overrides)."""
    from cnnzip.pipeline import compress

    for model, checkpoint in baselines(args.models):
        start = time.perf_counter()
        extra = (*(overrides or {}).get(model, ()), *args.overrides)
        out = Path(args.out) / model
        report = compress(checkpoint, args.recipe, out, seed=args.seed,
                          finetune_epochs=args.finetune_epochs, overrides=extra, quiet=True)
        yield model, checkpoint, out, report, time.perf_counter() - start, extra


def write_results(out: str | Path, rows: list[dict[str, Any]]) -> None:
    """``OUT/results.json`` with the runtime, and where it is."""
    from cnnzip.metrics import runtime_name

    path = Path(out) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runtime": runtime_name(), "batch_size": 256, "rows": rows},
                               indent=2))
    print(f"\nruntime: {runtime_name()}, batch 256; results in {path}")
