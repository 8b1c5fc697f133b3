"""Budgets on any recipe: the recipe's main setting (its *knob*: the sensitivity scan's overall
sparsity, the pruning sparsity, the channels' share of parameters, or the weight bits) searched
by bisection so that the written ``model.cnz`` meets a size budget (bytes of the file, or
non-zero parameters, or the MACs of non-zero weights, as fractions of the original's) at the
least compression, or so that the model is as small as it can be within an accuracy drop on
the validation split. (A recipe with a ``channels`` step meets MACs and parameter budgets
directly, by its allocation: see ``cnnzip compress --target-macs``.)

A size depends on the knob far more than on retraining, so the size search probes the recipe
without retraining (seconds each), then runs it once in full at the setting found, and moves
one step further if retraining left the file over the budget. An accuracy drop needs the
retraining, so that search runs the recipe in full at each probe. Every probe is recorded in
``report.json`` → ``budget``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnzip.errors import CnnzipError
from cnnzip.pipeline import compress
from cnnzip.recipes import Recipe, load_recipe
from cnnzip.report import write_report

KB = 1024


@dataclass(frozen=True)
class Knob:
    """A recipe setting that trades size for accuracy: ``step.key`` in [lo, hi], the model
    smaller toward ``hi`` (``rising``) or toward ``lo``."""

    step: str
    key: str
    lo: float
    hi: float
    rising: bool
    integer: bool = False

    @property
    def name(self) -> str:
        return f"{self.step}.{self.key}"

    def value(self, t: float) -> float | int:
        """The setting at position ``t`` in [0, 1]: 0 the least compression, 1 the most."""
        span = self.hi - self.lo
        v = self.lo + t * span if self.rising else self.hi - t * span
        return int(round(v)) if self.integer else round(v, 4)


KNOBS = (Knob("sensitivity", "target_sparsity", 0.0, 0.99, True),
         Knob("prune", "sparsity", 0.0, 0.99, True),
         Knob("channels", "target_params", 0.05, 1.0, False),
         Knob("quantize", "weight_bits", 1, 8, False, integer=True))


@dataclass(frozen=True)
class Budget:
    """What the user asks for: a file of at most ``size_kb`` KiB, at most ``macs`` of the
    original's MACs (counting non-zero weights only) and at most ``params`` of its parameters
    (non-zero), and/or at most ``max_drop`` points of validation accuracy lost."""

    size_kb: float | None = None
    max_drop: float | None = None
    macs: float | None = None
    params: float | None = None
    latency_us: float | None = None

    def __post_init__(self):
        if self.size_kb is None and self.max_drop is None and not self.limits():
            raise CnnzipError("a budget needs a size (--target-size-kb, --target-macs, "
                              "--target-params) or a drop (--max-drop)")
        if self.size_kb is not None and not self.size_kb > 0:
            raise CnnzipError(f"--target-size-kb must be positive, got {self.size_kb}")
        if self.max_drop is not None and not self.max_drop >= 0:
            raise CnnzipError(f"--max-drop must be 0 or more points, got {self.max_drop}")
        for flag, value in (("--target-macs", self.macs), ("--target-params", self.params)):
            if value is not None and not 0 < value <= 1:
                raise CnnzipError(f"{flag} is the fraction to keep, in (0, 1]; got {value}")
        if self.latency_us is not None and not self.latency_us > 0:
            raise CnnzipError(f"--target-latency-us must be positive, got {self.latency_us}")

    def limits(self) -> dict[str, float]:
        """The size limits asked, by the probe's figure they bound."""
        found = {"bytes": self.size_kb * KB if self.size_kb is not None else None,
                 "macs": self.macs, "params": self.params, "latency_us": self.latency_us}
        return {k: v for k, v in found.items() if v is not None}

    def describe(self) -> str:
        """What is asked, in words."""
        parts = [f"at most {self.size_kb:g} KiB" if self.size_kb is not None else "",
                 f"at most {self.macs:g} of the MACs" if self.macs is not None else "",
                 f"at most {self.params:g} of the parameters" if self.params is not None else "",
                 f"at most {self.latency_us:g} µs per image" if self.latency_us is not None
                 else "",
                 f"at most {self.max_drop:g} points lost" if self.max_drop is not None else ""]
        return " and ".join(p for p in parts if p)


def knob_of(recipe: Recipe) -> Knob:
    """The recipe's knob: the first of :data:`KNOBS` whose step it has (the pruning sparsity
    only where no sensitivity scan sets it)."""
    kinds = [kind for kind, _ in recipe.steps]
    for knob in KNOBS:
        if knob.step in kinds and not (knob.step == "prune" and "sensitivity" in kinds):
            return knob
    raise CnnzipError(f"recipe {recipe.name!r} has no setting a budget can search: it needs a "
                      "sensitivity, prune, channels or quantize step")


def with_knob(recipe: Recipe, knob: Knob, value: float | int) -> Recipe:
    """``recipe`` with ``knob`` set to ``value`` in every step of its kind."""
    steps = tuple((kind, dataclasses.replace(config, **{knob.key: value}))
                  if kind == knob.step else (kind, config) for kind, config in recipe.steps)
    return dataclasses.replace(recipe, steps=steps,
                               overrides=(*recipe.overrides, f"{knob.name}={value}"))


def _val_drop(report: dict[str, Any]) -> float:
    return 100 * (report["baseline"]["val_accuracy"] - report["compressed"]["val_accuracy"])


def compress_within(model_path: str | Path, recipe: str | Recipe, out_dir: str | Path,
                    budget: Budget, *, overrides: tuple[str, ...] = (), probes: int = 6,
                    quiet: bool = False, latency=None, **options: Any) -> dict[str, Any]:
    """:func:`cnnzip.pipeline.compress` with the recipe's knob chosen to meet ``budget``
    (``probes``: bisection steps); ``options`` as ``compress`` takes them. ``latency``: for a
    latency budget, the function that measures a written ``model.cnz`` (µs per image; see
    :func:`cnnzip.api.compress_within`). The report gains ``budget``: what was asked, the
    knob, the value chosen, whether it is met, every probe.

    Raises:
        CnnzipError: a recipe without a knob, or a budget no setting meets (with the closest
            point reached).
    """
    if budget.latency_us is not None and latency is None:
        raise CnnzipError("a latency budget needs a way to measure the model "
                          "(cnnzip.api.compress_within gives one)")
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    knob = knob_of(recipe)
    if knob.step == "quantize" and (budget.macs is not None or budget.params is not None):
        raise CnnzipError(f"recipe {recipe.name!r} searches {knob.name}, which changes neither "
                          "MACs nor parameters; a MACs or parameter budget needs a prune, "
                          "sensitivity or channels step")
    out = Path(out_dir)
    work = out / ".budget"
    shutil.rmtree(work, ignore_errors=True)
    tried: list[dict[str, Any]] = []

    def probe(t: float, full: bool) -> dict[str, Any]:
        value = knob.value(t)
        folder = work / f"probe-{len(tried)}"
        report = compress(model_path, with_knob(recipe, knob, value), folder,
                          quiet=True, stage_bench=False,
                          **{**options, **({} if full else {"finetune_epochs": 0})})
        b, c = report["baseline"], report["compressed"]
        row = {"value": value, "retrained": full, "bytes": c["container_bytes"],
               "macs": round(c["nonzero_macs"] / b["macs"], 4),
               "params": round(c["nonzero_params"] / b["params"], 4),
               "val_drop": round(_val_drop(report), 3), "folder": folder}
        if budget.latency_us is not None:
            row["latency_us"] = round(latency(folder / "model.cnz"), 3)
        tried.append(row)
        if not quiet:
            print(f"budget: {knob.name}={value}{'' if full else ' (no retraining)'}: "
                  f"{_point(row)}")
        return {**row, "report": report}

    limits = budget.limits()

    def fits(row: dict[str, Any]) -> bool:
        return all(row[key] <= limit for key, limit in limits.items())

    if limits:
        chosen = _search_size(probe, knob, fits, probes)
    else:
        chosen = _search_drop(probe, knob, budget.max_drop, probes)
    met = fits(chosen) and (budget.max_drop is None or chosen["val_drop"] <= budget.max_drop)
    if not met:
        raise CnnzipError(
            f"no {knob.name} meets the budget ({budget.describe()}): the closest point reached is "
            f"{_point(chosen)} ({knob.name}={chosen['value']}); the probes are in {work}")
    report = chosen["report"]
    report["budget"] = {"size_kb": budget.size_kb, "max_drop": budget.max_drop,
                        "macs": budget.macs, "params": budget.params,
                        "latency_us": budget.latency_us,
                        "knob": knob.name, "value": chosen["value"], "met": met,
                        "probes": [{k: v for k, v in row.items() if k != "folder"}
                                   for row in tried]}
    _take(chosen["folder"], out)
    shutil.rmtree(work, ignore_errors=True)
    write_report(out, report)
    return report


def _point(row: dict[str, Any]) -> str:
    latency = f", {row['latency_us']:,.1f} µs per image" if "latency_us" in row else ""
    return (f"{row['bytes'] / KB:.1f} KiB, {row['macs']:.3f} of the MACs, {row['params']:.3f} of "
            f"the parameters{latency}, validation drop {row['val_drop']:.2f} points")


def _positions(knob: Knob) -> list[float]:
    """Each value of an integer knob once, least compression first."""
    count = int(knob.hi - knob.lo)
    return [i / count for i in range(count + 1)]


def _search_size(probe, knob: Knob, fits, probes: int) -> dict[str, Any]:
    """The least compression whose probe ``fits`` the limits: bisection without retraining,
    then a full run, moved further while retraining leaves it over."""
    if knob.integer:
        fitting = [t for t in _positions(knob) if fits(probe(t, False))]
        if not fitting:
            return probe(1.0, True)
        t = fitting[0]
        step = 1 / (knob.hi - knob.lo)
    else:
        lo, hi = 0.0, 1.0
        if not fits(probe(hi, False)):
            return probe(hi, True)  # the error reports it as the closest point
        for _ in range(probes):
            mid = (lo + hi) / 2
            if fits(probe(mid, False)):
                hi = mid
            else:
                lo = mid
        t, step = hi, max(hi - lo, 0.01)
    full = probe(t, True)
    for _ in range(3):
        if fits(full) or t >= 1.0:
            break
        t = min(1.0, t + step)
        full = probe(t, True)
    return full


def _search_drop(probe, knob: Knob, max_drop: float, probes: int) -> dict[str, Any]:
    """The most compression within ``max_drop`` points of validation accuracy: every probe
    retrained; an integer knob tried value by value, a continuous one by bisection."""
    best = probe(0.0, True)
    if best["val_drop"] > max_drop:
        return best
    if knob.integer:
        for t in _positions(knob)[1:]:
            row = probe(t, True)
            if row["val_drop"] > max_drop:
                break
            best = row
        return best
    lo, hi = 0.0, 1.0
    for _ in range(probes):
        mid = (lo + hi) / 2
        row = probe(mid, True)
        if row["val_drop"] <= max_drop:
            lo, best = mid, row
        else:
            hi = mid
    return best


def _take(folder: Path, out: Path) -> None:
    """Move a probe's outputs into ``out`` (each file replaced whole)."""
    for item in folder.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
