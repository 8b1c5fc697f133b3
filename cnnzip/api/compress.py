"""The Python API for compression: a recipe on a checkpoint, within a budget or not. The one
place budgets are routed, for the CLI, Python callers and benchmarks alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnzip import budget as _budget
from cnnzip import pipeline
from cnnzip.api.deploy import c_latency_us
from cnnzip.budget import Budget
from cnnzip.errors import ArgumentError
from cnnzip.recipes import Recipe


def compress(model_path: str | Path, recipe: str | Recipe, out_dir: str | Path, *,
             budget: Budget | None = None, latency_target: str = "host",
             clock_mhz: float | None = None, **options: Any) -> dict[str, Any]:
    """Compress ``model_path`` with ``recipe`` into ``out_dir`` (``model.cnz``,
    ``report.json``, ``report.md``): :func:`cnnzip.pipeline.compress`, whose options
    (``dataset``, ``data_dir``, ``seed``, ``finetune_epochs``, ``overrides``, ``quiet``,
    ``trust_code``, ``stage_bench``, ``resume``) ``options`` holds; with ``budget``,
    :func:`compress_within`."""
    if budget is None:
        return pipeline.compress(model_path, recipe, out_dir, **options)
    return compress_within(model_path, recipe, out_dir, budget, latency_target=latency_target,
                           clock_mhz=clock_mhz, **options)


def compress_within(model_path: str | Path, recipe: str | Recipe, out_dir: str | Path,
                    budget: Budget, *, latency_target: str = "host",
                    clock_mhz: float | None = None, **options: Any) -> dict[str, Any]:
    """:func:`cnnzip.budget.compress_within`; a latency budget measured by
    :func:`c_latency_us` on ``latency_target`` (``host`` or ``cortex-m4`` at ``clock_mhz``)."""
    if budget.latency_us is not None and latency_target == "cortex-m4" and not clock_mhz:
        raise ArgumentError("a Cortex-M4 latency needs the board's clock (--clock-mhz)")

    def latency(path: Path) -> float:
        return c_latency_us(path, target=latency_target, clock_mhz=clock_mhz,
                            dataset=options.get("dataset"), data_dir=options.get("data_dir"),
                            trust_code=options.get("trust_code", False))
    return _budget.compress_within(model_path, recipe, out_dir, budget, latency=latency,
                                   **options)
