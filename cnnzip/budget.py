"""Budgets on any recipe: the recipe's main setting (its *knob*: the sensitivity scan's overall
sparsity, the pruning sparsity, the channels' share of parameters, or the weight bits) searched
by bisection so that the written ``model.cnz`` meets a size budget (bytes of the file, or
non-zero parameters, or the MACs of non-zero weights, as fractions of the original's) at the
least compression, or so that the model is as small as it can be within an accuracy drop on
the validation split. (A recipe with a ``channels`` step meets MACs and parameter budgets
directly, by its allocation, when the budget asks nothing else.) Every caller (the CLI, the
Python API, ``cnnzip search``) routes a budget through :func:`compress_within`.

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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnzip import distributed
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
    clears: tuple[str, ...] = ()  # the step's settings a value replaces (set to None)
    when_set: bool = False  # the knob only where the recipe sets ``key`` itself

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
         Knob("channels", "target_params", 0.05, 0.99, False, clears=("target_macs",)),
         Knob("quantize", "budget_bits", 2.0, 8.0, False, when_set=True),
         Knob("quantize", "weight_bits", 1, 8, False, integer=True))

# steps that meet a MACs or parameter budget by their own allocation
ALLOCATING_STEPS = ("channels", "lowrank")


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
        if knob.step not in kinds or (knob.step == "prune" and "sensitivity" in kinds):
            continue
        if knob.when_set and all(getattr(config, knob.key) is None
                                 for kind, config in recipe.steps if kind == knob.step):
            continue
        return knob
    raise CnnzipError(f"recipe {recipe.name!r} has no setting a budget can search: it needs a "
                      "sensitivity, prune, channels or quantize step")


def with_knob(recipe: Recipe, knob: Knob, value: float | int) -> Recipe:
    """``recipe`` with ``knob`` set to ``value`` in every step of its kind (the settings it
    replaces cleared: a searched share of parameters replaces a recipe's share of MACs)."""
    return _with_settings(recipe, knob.step, {knob.key: value, **dict.fromkeys(knob.clears)})


def _with_settings(recipe: Recipe, step: str, settings: dict[str, Any]) -> Recipe:
    """``recipe`` with ``settings`` in every step of kind ``step``, recorded as overrides."""
    steps = tuple((kind, dataclasses.replace(config, **settings))
                  if kind == step else (kind, config) for kind, config in recipe.steps)
    said = tuple(f"{step}.{key}={'null' if value is None else value}"
                 for key, value in settings.items())
    return dataclasses.replace(recipe, steps=steps, overrides=(*recipe.overrides, *said))


def allocated(recipe: Recipe, budget: Budget) -> tuple[Recipe, Budget | None]:
    """A MACs or parameter budget that a step of ``recipe`` meets by its own allocation
    (:data:`ALLOCATING_STEPS`) when nothing else is asked: the recipe with that step's budget
    replaced by the one asked, and None for what is left to search. Any other budget comes
    back as it is, to be searched.

    Raises:
        CnnzipError: both a MACs and a parameter budget for such a step.
    """
    step = _allocating_step(recipe)
    limits = budget.limits()
    if step is None or not set(limits) <= {"macs", "params"} or budget.max_drop is not None:
        return recipe, budget
    if len(limits) == 2:
        raise CnnzipError(f"recipe {recipe.name!r} meets a budget by its {step} step's "
                          "allocation, in MACs or in parameters: give --target-macs or "
                          "--target-params, not both")
    key, value = next(iter(limits.items()))
    other = "params" if key == "macs" else "macs"
    return _with_settings(recipe, step, {f"target_{key}": value, f"target_{other}": None}), None


def _val_drop(report: dict[str, Any]) -> float:
    return 100 * (report["baseline"]["val_accuracy"] - report["compressed"]["val_accuracy"])


def compress_within(model_path: str | Path, recipe: str | Recipe, out_dir: str | Path,
                    budget: Budget, *, overrides: tuple[str, ...] = (), probes: int = 6,
                    quiet: bool = False, latency=None, stage_bench: bool = False,
                    **options: Any) -> dict[str, Any]:
    """:func:`cnnzip.pipeline.compress` with the recipe's knob chosen to meet ``budget``
    (``probes``: bisection steps); ``options`` as ``compress`` takes them. A MACs or parameter
    budget alone on a recipe whose channels or lowrank step allocates to it is that step's
    budget instead, in one run (:func:`allocated`). ``latency``: for a latency budget, the
    function that measures a written ``model.cnz`` (µs per image; see
    :func:`cnnzip.api.compress_within`). ``stage_bench``: time each stage (a run without a
    search only). The report gains ``budget``: what was asked, the knob, the value chosen,
    whether it is met, every probe. Progress goes to stderr.

    Raises:
        CnnzipError: a recipe without a knob, or a budget no setting meets (with the closest
            point reached).
    """
    if budget.latency_us is not None and latency is None:
        raise CnnzipError("a latency budget needs a way to measure the model "
                          "(cnnzip.api.compress_within gives one)")
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    recipe, searched = allocated(recipe, budget)
    if searched is None:
        return _allocate(model_path, recipe, out_dir, budget, quiet=quiet,
                         stage_bench=stage_bench, **options)
    if options.get("resume"):
        raise CnnzipError("--resume continues one run; a budget search starts its own")
    options.pop("resume", None)
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
                  f"{_point(row)}", file=sys.stderr)
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
    report["budget"] = _record(budget, knob.name, chosen["value"], met,
                               [{k: v for k, v in row.items() if k != "folder"}
                                for row in tried])
    _take(chosen["folder"], out)
    shutil.rmtree(work, ignore_errors=True)
    write_report(out, report)
    return report


def _allocating_step(recipe: Recipe) -> str | None:
    return next((kind for kind, _ in recipe.steps if kind in ALLOCATING_STEPS), None)


def _record(budget: Budget, knob: str, value: float | int, met: bool,
            probes: list[dict[str, Any]]) -> dict[str, Any]:
    """``report.json`` → ``budget``."""
    return {"size_kb": budget.size_kb, "max_drop": budget.max_drop, "macs": budget.macs,
            "params": budget.params, "latency_us": budget.latency_us,
            "knob": knob, "value": value, "met": met, "probes": probes}


def _allocate(model_path: str | Path, recipe: Recipe, out_dir: str | Path, budget: Budget, *,
              quiet: bool, stage_bench: bool, **options: Any) -> dict[str, Any]:
    """One run of ``recipe`` whose channels or lowrank step allocates to ``budget`` (MACs or
    parameters) itself; the report's ``budget`` says whether the model meets it."""
    report = compress(model_path, recipe, out_dir, quiet=quiet, stage_bench=stage_bench,
                      **options)
    b, c = report["baseline"], report["compressed"]
    key, limit = next(iter(budget.limits().items()))
    reached = c["macs"] / b["macs"] if key == "macs" else c["params"] / b["params"]
    setting = f"{_allocating_step(recipe)}.target_{key}"
    report["budget"] = _record(budget, setting, limit, reached <= limit + 1e-9, [])
    if distributed.rank() == 0:  # torchrun: rank 0 alone writes (the others wrote nothing)
        write_report(Path(out_dir), report)
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
