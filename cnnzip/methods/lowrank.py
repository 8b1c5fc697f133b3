"""Low-rank decomposition: conv and linear layers replaced by sequences of smaller layers (SVD,
Tucker-2 or CP on tensorly), ranks per layer from each layer's spectrum energy or from a
sensitivity scan, under a MACs or parameter budget; then fine-tuning with distillation.

The factors are plain layers, so a later step prunes, quantizes or shares them like any other
(the ``lowrank-vq`` recipe: product quantization of the factors).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from cnnzip import metrics
from cnnzip.errors import CnnzipError
from cnnzip.methods.base import Context, finetune, register
from cnnzip.ops import lowrank
from cnnzip.ops.allocate import allocate_for_target, choose_sparsities
from cnnzip.progress import progress_bar
from cnnzip.surgery.lowrank import Factorization, dense_weight, factorable, factorize, skeleton
from cnnzip.surgery.replace import replace, set_module

DEFAULT_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


class RankAllocation(enum.Enum):
    ENERGY = "energy"  # each layer keeps the same fraction of its spectrum's energy
    SENSITIVITY = "sensitivity"  # the ranks that lose the least measured accuracy per cost cut


@dataclass(frozen=True)
class LowRank:
    """Factorize conv and linear layers into low-rank sequences, then fine-tune.

    A linear or 1×1 layer becomes two (SVD: in → r → out); a k×k convolution becomes a 1×1
    projection to r_in channels, a k×k core to r_out and a 1×1 expansion (``tucker2``, Kim et
    al. 2016), or a 1×1 to R channels, a kh×1 and a 1×kw depthwise convolution and a 1×1 back
    (``cp``, Lebedev et al. 2015), or a k×k to r and a 1×1 (``svd``). A layer is factorized only
    where that saves at least ``min_saving`` of its cost.

    Attributes:
        conv: how k×k convolutions factorize: tucker2, cp or svd.
        allocation: ``energy``: every layer keeps the same fraction of its spectrum's energy
            (the sum of squared singular values of the kernel unfolded along the output and
            along the input channels); with a target, the largest fraction that meets it.
            ``sensitivity``: each layer factorized alone at each of ``fractions`` of its full
            ranks and the validation accuracy measured; with a target, the cuts that lose the
            least accuracy per unit of cost saved, else each layer's largest cut within
            ``max_drop``.
        target_macs: keep at most this fraction of the model's MACs (0.5: 2× fewer).
        target_params: or keep at most this fraction of its parameters.
        energy: energy, no target: the fraction of energy every layer keeps.
        max_drop: sensitivity, no target: the validation accuracy (a fraction) a layer's
            factorization alone may lose.
        fractions: sensitivity: ranks scanned, as fractions of each layer's full ranks.
        layers: only these layers (empty: every plain conv and linear layer).
        exclude: never these layers.
        min_saving: factorize a layer only where its cost (MACs with ``target_macs``, else
            parameters) falls by at least this fraction.
        iterations: Tucker-2 HOOI iterations (CP runs 5× as many ALS iterations).
        samples: sensitivity: validation images per measurement.
        epochs: fine-tuning epochs with distillation after the factorization.
        lr: fine-tuning peak learning rate.
    """

    conv: Factorization = Factorization.TUCKER2
    allocation: RankAllocation = RankAllocation.SENSITIVITY
    target_macs: float | None = None
    target_params: float | None = None
    energy: float = 0.9
    max_drop: float = 0.01
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_saving: float = 0.2
    iterations: int = 20
    samples: int | None = 1000
    epochs: int = 4
    lr: float = 0.005

    def __post_init__(self) -> None:
        for key in ("target_macs", "target_params"):
            value = getattr(self, key)
            if value is not None and not 0 < value < 1:
                raise CnnzipError(f"lowrank: {key} must be in (0, 1), got {value}")
        if self.target_macs is not None and self.target_params is not None:
            raise CnnzipError("lowrank: give target_macs or target_params, not both")
        if not 0 < self.energy <= 1:
            raise CnnzipError(f"lowrank: energy must be in (0, 1], got {self.energy}")
        if not self.fractions or not all(0 < f < 1 for f in self.fractions):
            raise CnnzipError(f"lowrank: fractions must be in (0, 1), got {list(self.fractions)}")
        if not 0 <= self.min_saving < 1:
            raise CnnzipError(f"lowrank: min_saving must be in [0, 1), got {self.min_saving}")


@dataclass
class _Layer:
    """A factorable layer: its input shape (one sample), its cost, and the spectra of its
    kernel unfolded along the output (0) and input (1) channels."""

    module: nn.Module
    kind: Factorization
    in_shape: tuple[int, ...]
    cost: int
    spectra: tuple[Any, Any] | None = None


class _Planner:
    """Candidate ranks for each layer, their costs (counted on the factorized sequence) and
    their factorizations, cached."""

    def __init__(self, model: nn.Module, config: LowRank, in_shape: tuple[int, ...], seed: int):
        self.config, self.seed = config, seed
        self.by = "macs" if config.target_macs is not None else "params"
        shapes: dict[str, tuple[int, ...]] = {}
        modules = dict(model.named_modules())
        names = list(config.layers) or [n for n, m in modules.items() if factorable(m)]
        unknown = [n for n in [*config.layers, *config.exclude] if n not in modules]
        if unknown:
            raise CnnzipError(f"lowrank: no layer named {', '.join(unknown)}")
        refused = [n for n in names if not factorable(modules[n])]
        if refused:
            raise CnnzipError(f"lowrank: {', '.join(refused)} cannot be factorized (a plain "
                              "nn.Linear, or an nn.Conv2d without groups or dilation, can)")
        names = [n for n in names if n not in config.exclude]
        hooks = [modules[n].register_forward_hook(
            lambda m, inputs, _o, n=n: shapes.__setitem__(n, tuple(inputs[0].shape[1:])))
            for n in names]
        try:
            metrics.count_macs(model, in_shape)
        finally:
            for h in hooks:
                h.remove()
        self.layers: dict[str, _Layer] = {}
        for name in names:
            if name not in shapes:
                continue  # not reached by the forward pass
            module = modules[name]
            kind = config.conv if isinstance(module, nn.Conv2d) and \
                module.kernel_size != (1, 1) else Factorization.SVD
            layer = _Layer(module, kind, shapes[name], 0)
            layer.cost = self._count(module, layer.in_shape)
            self.layers[name] = layer
        self._costs: dict[tuple[str, tuple[int, ...]], int] = {}
        self._factors: dict[tuple[str, tuple[int, ...]], nn.Sequential] = {}

    def _count(self, module: nn.Module, in_shape: tuple[int, ...]) -> int:
        stats = metrics.layer_stats(module, in_shape)
        return sum(s.macs if self.by == "macs" else s.params for s in stats)

    def full_ranks(self, name: str) -> tuple[int, int]:
        """The output and input ranks of the layer's kernel (channels out, in·k·k or in)."""
        w = self.layers[name].module.weight
        kind = self.layers[name].kind
        return w.shape[0], (w[0].numel() if kind is Factorization.SVD else w.shape[1])

    def _ranks(self, name: str, r_out: int, r_in: int) -> tuple[int, ...]:
        """The factorization's ranks from an output rank and an input rank: (r,) for SVD (the
        output one) and CP (the larger), (r_out, r_in) for Tucker-2 with r_in = 0 where it
        would not be below the input channels."""
        layer = self.layers[name]
        if layer.kind is Factorization.SVD:
            return (r_out,)
        if layer.kind is Factorization.CP:
            return (max(r_out, r_in),)
        return (r_out, r_in if r_in < layer.module.weight.shape[1] else 0)

    def ranks_at(self, name: str, fraction: float) -> tuple[int, ...]:
        """The ranks at ``fraction`` of the layer's full ranks (rounded up)."""
        out, cin = self.full_ranks(name)
        if self.layers[name].kind is Factorization.SVD:
            out = min(out, cin)
        return self._ranks(name, max(1, math.ceil(fraction * out)),
                           max(1, math.ceil(fraction * cin)))

    def ranks_for_energy(self, name: str, energy: float) -> tuple[int, ...]:
        """The fewest ranks that keep ``energy`` of the kernel's spectra."""
        layer = self.layers[name]
        w = layer.module.weight.detach()
        if layer.spectra is None:
            layer.spectra = ((lowrank.spectrum(w.flatten(1), 0), None)
                             if layer.kind is Factorization.SVD
                             else (lowrank.spectrum(w, 0), lowrank.spectrum(w, 1)))
        r_out = lowrank.energy_rank(layer.spectra[0], energy)
        r_in = r_out if layer.spectra[1] is None else lowrank.energy_rank(layer.spectra[1],
                                                                          energy)
        return self._ranks(name, r_out, r_in)

    def cost(self, name: str, ranks: tuple[int, ...]) -> int:
        key = (name, ranks)
        if key not in self._costs:
            layer = self.layers[name]
            self._costs[key] = self._count(skeleton(layer.module, layer.kind, ranks),
                                           layer.in_shape)
        return self._costs[key]

    def saving(self, name: str, ranks: tuple[int, ...]) -> float:
        """The fraction of the layer's cost the factorization saves (negative: it costs more)."""
        return 1.0 - self.cost(name, ranks) / self.layers[name].cost

    def worth(self, name: str, ranks: tuple[int, ...]) -> bool:
        return self.saving(name, ranks) >= max(self.config.min_saving, 1e-9)

    def factors(self, name: str, ranks: tuple[int, ...]) -> nn.Sequential:
        key = (name, ranks)
        if key not in self._factors:
            layer = self.layers[name]
            self._factors[key] = factorize(layer.module, layer.kind, ranks,
                                           iterations=self.config.iterations, seed=self.seed)
        return self._factors[key]


def _energy_plan(planner: _Planner, config: LowRank, needed: float | None) -> dict[str, tuple]:
    """Ranks at one energy for every layer: ``config.energy``, or with a target (``needed``:
    the cost to save) the largest energy whose factorizations save it."""
    def plan(energy: float) -> dict[str, tuple]:
        chosen = {n: planner.ranks_for_energy(n, energy) for n in planner.layers}
        return {n: r for n, r in chosen.items() if planner.worth(n, r)}

    def saved(chosen: dict[str, tuple]) -> float:
        return sum(planner.layers[n].cost - planner.cost(n, r) for n, r in chosen.items())

    if needed is None:
        return plan(config.energy)
    lo, hi = 0.0, 1.0  # saved(plan(lo)) ≥ needed is checked by the caller's final count
    for _ in range(30):
        mid = (lo + hi) / 2
        if saved(plan(mid)) >= needed:
            lo = mid
        else:
            hi = mid
    return plan(lo)


def _sensitivity_plan(model: nn.Module, planner: _Planner, config: LowRank, ctx: Context,
                      needed: float | None) -> tuple[dict[str, tuple], dict[str, Any]]:
    """Ranks from a scan of each layer factorized alone at each fraction of its full ranks."""
    base = ctx.val_accuracy(model, config.samples)
    table: dict[str, list[tuple[float, float]]] = {}
    ranks: dict[str, dict[float, tuple]] = {}  # layer → saving → ranks
    candidates = {n: sorted({planner.ranks_at(n, f) for f in config.fractions},
                            key=lambda r: planner.cost(n, r)) for n in planner.layers}
    candidates = {n: [r for r in rs if planner.worth(n, r)] for n, rs in candidates.items()}
    with progress_bar(disable=ctx.quiet) as bar:
        task = bar.add_task("rank scan", total=sum(map(len, candidates.values())), status="")
        for name, options in candidates.items():
            table[name], ranks[name] = [], {}
            original = planner.layers[name].module
            for r in options:
                set_module(model, name, planner.factors(name, r))
                table[name].append((planner.saving(name, r), ctx.val_accuracy(model,
                                                                             config.samples)))
                ranks[name][table[name][-1][0]] = r
                bar.update(task, advance=1, status=f"{name} {r}")
            set_module(model, name, original)
    if needed is None:
        cuts = choose_sparsities(table, base, config.max_drop, 1.0)
    else:
        sizes = {n: planner.layers[n].cost for n in table}
        # past what every layer can give, each ends at its largest cut (the caller then says so)
        cuts = allocate_for_target(table, base, sizes, needed / sum(sizes.values()), 1.0)
    chosen = {}
    for name, cut in cuts.items():
        if cut <= 0:
            continue
        # the cheapest-cutting scanned ranks that save at least the allocated cut
        saving = min((s for s in ranks[name] if s >= cut - 1e-12), default=None)
        if saving is not None:
            chosen[name] = ranks[name][saving]
    note = {"baseline_val_accuracy": base,
            "table": {n: [[s, a, list(ranks[n][s])] for s, a in pts] for n, pts in table.items()}}
    return chosen, note


@register("lowrank", LowRank, realized=True,
          after=(("prune", "factorize before unstructured pruning (factors are dense)"),
                 ("share", "factorize before weight sharing"),
                 ("quantize", "factorize before quantization")))
def decompose(model: nn.Module, config: LowRank, ctx: Context) -> nn.Module:
    in_shape = tuple(ctx.splits.info.in_shape)
    if any(getattr(m, "wraps_layer", False) for m in model.modules()):
        raise CnnzipError("lowrank: the model's layers are quantized or shared already; "
                          "factorize the float model first")
    masked = sorted(set(ctx.masks))
    if masked:
        raise CnnzipError("lowrank: the model has pruned layers "
                          f"({', '.join(masked[:3])}{', …' if len(masked) > 3 else ''}); "
                          "factorize before pruning")
    planner = _Planner(model, config, in_shape, ctx.seed)
    if not planner.layers:
        raise CnnzipError("lowrank: the model has no plain conv or linear layer to factorize")
    target = config.target_macs if config.target_macs is not None else config.target_params
    count = metrics.count_macs if planner.by == "macs" else \
        (lambda m, _shape: metrics.count_params(m))
    before = count(model, in_shape)
    needed = None if target is None else before * (1 - target)
    note: dict[str, Any] = {}
    if config.allocation is RankAllocation.ENERGY:
        chosen = _energy_plan(planner, config, needed)
    else:
        chosen, note = _sensitivity_plan(model, planner, config, ctx, needed)
    report: dict[str, Any] = {}
    for name, ranks in chosen.items():
        layer = planner.layers[name]
        seq = planner.factors(name, ranks)
        report[name] = {"factorization": layer.kind.value, "ranks": list(ranks),
                        f"{planner.by}_before": layer.cost,
                        f"{planner.by}_after": planner.cost(name, ranks),
                        "weight_error": lowrank.relative_error(layer.module.weight.detach(),
                                                               dense_weight(seq))}
        ctx.edits.append(replace(model, name, seq))
    after = count(model, in_shape)
    ctx.notes["lowrank"] = {"allocation": config.allocation.value, "conv": config.conv.value,
                            "by": planner.by, "target": target, "before": before,
                            "after": after, "layers": report, **note}
    if target is not None and after > target * before * (1 + 1e-6):
        raise CnnzipError(f"lowrank: factorizing every layer at the smallest scanned ranks "
                          f"keeps {after / before:.3f} of the {planner.by}, above the target "
                          f"{target}; scan smaller fractions, lower min_saving, or combine "
                          "with channel pruning")
    finetune(model, ctx, epochs=config.epochs, lr=config.lr, description="retrain factors")
    return model
