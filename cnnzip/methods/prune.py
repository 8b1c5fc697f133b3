"""Unstructured magnitude pruning: per-layer sensitivity scan, then one-shot, iterative or
gradual (AGP) pruning with retraining. The plan is a sparsity per layer."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from cnnzip.errors import CnnzipError
from cnnzip.methods.base import Context, apply_masks, finetune, register
from cnnzip.metrics import layer_stats
from cnnzip.modules import weight_layers
from cnnzip.ops.allocate import allocate_for_target, choose_sparsities
from cnnzip.ops.prune import agp_sparsity, magnitude_mask, threshold_mask
from cnnzip.progress import progress_bar
from cnnzip.train import TrainConfig

DEFAULT_SPARSITIES = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99)


@dataclass(frozen=True)
class SensitivityScan:
    """Prune one layer at a time and measure validation accuracy ("threshold scanning").

    Attributes:
        tolerance: the accuracy drop (fraction, before retraining) a layer may cause; each
            layer gets the largest scanned sparsity within it.
        target_sparsity: instead of a tolerance, prune this fraction of all conv and linear
            weights, allocated greedily to the layers where the scan shows the least accuracy
            lost per weight removed (retraining recovers the rest).
        by: what ``target_sparsity`` counts: ``weights`` (storage), or ``macs``, the
            multiply-accumulates on those weights (time on a target whose kernels skip zeros,
            such as the C export: a convolution's weight counts once per output position).
        sparsities: the sparsities tried.
        samples: validation images per measurement (None: all).
        max_sparsity: never choose more than this for any layer.
    """

    tolerance: float = 0.02
    target_sparsity: float | None = None
    by: Literal["weights", "macs"] = "weights"
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    samples: int | None = None
    max_sparsity: float = 0.99


class Schedule(enum.Enum):
    ONE_SHOT = "one-shot"  # prune to the target, then retrain
    ITERATIVE = "iterative"  # several prune-and-retrain rounds of rising sparsity
    AGP = "agp"  # sparsity rises along a cubic curve during retraining
    DNS = "dns"  # dynamic network surgery: as agp, but pruned weights keep training and splice
    #             back when they grow (Guo et al. 2016); measured worse than agp on lenet300
    #             (benchmarks/RESULTS.md: the pruned weights' updates, made without them in the
    #             forward pass, splice back weights that hurt)


@dataclass(frozen=True)
class MagnitudePrune:
    """Magnitude pruning of conv and linear weights.

    Attributes:
        sparsity: one sparsity for every layer (None: use the sensitivity scan's choice).
        layers: per-layer sparsity overrides by name.
        quality: instead of sparsities, Deep Compression's threshold ``quality · std(w)``.
        schedule: how the target is reached.
        rounds: prune-and-retrain rounds (iterative) or mask updates (agp, dns) while the
            sparsity rises; dns keeps updating the masks at the same interval afterwards.
        splice_margin: dns: while the sparsity rises, a weight is pruned when its magnitude
            falls below (1 − margin) × the layer's threshold and spliced back when it rises
            above (1 + margin) ×, so masks do not flicker; afterwards the masks are the exact
            magnitude masks of the training weights.
        epochs: retraining epochs in all.
        lr: retraining peak learning rate.
    """

    sparsity: float | None = None
    layers: dict[str, float] = field(default_factory=dict)
    quality: float | None = None
    schedule: Schedule = Schedule.AGP
    rounds: int = 8
    splice_margin: float = 0.1
    epochs: int = 8
    lr: float = 0.01


@register("sensitivity", SensitivityScan, stage=False)
def scan(model: nn.Module, config: SensitivityScan, ctx: Context) -> nn.Module:
    layers = weight_layers(model)
    base = ctx.val_accuracy(model, config.samples)
    table: dict[str, list[tuple[float, float]]] = {}
    chosen: dict[str, float] = {}
    with progress_bar(disable=ctx.quiet) as bar:
        task = bar.add_task("sensitivity scan", total=len(layers) * len(config.sparsities),
                            status="")
        for name, layer in layers.items():
            original = layer.weight.detach().clone()
            table[name], chosen[name] = [], 0.0
            for s in sorted(config.sparsities):
                with torch.no_grad():
                    layer.weight.mul_(magnitude_mask(layer.weight, s))
                table[name].append((s, ctx.val_accuracy(model, config.samples)))
                with torch.no_grad():
                    layer.weight.copy_(original)
                bar.advance(task)
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    if config.by == "macs":
        macs = {stat.name: stat.macs for stat in layer_stats(model, ctx.splits.info.in_shape)}
        sizes = {n: macs.get(n, size) for n, size in sizes.items()}
    if config.target_sparsity is not None:
        chosen = allocate_for_target(table, base, sizes, config.target_sparsity,
                                     config.max_sparsity)
    else:
        chosen = choose_sparsities(table, base, config.tolerance, config.max_sparsity)
    ctx.sparsities = chosen
    ctx.notes["sensitivity"] = {"baseline_val_accuracy": base, "tolerance": config.tolerance,
                                "target_sparsity": config.target_sparsity, "by": config.by,
                                "table": table,
                                "chosen": chosen}
    return model


def _targets(model: nn.Module, config: MagnitudePrune, ctx: Context) -> dict[str, float]:
    layers = weight_layers(model)
    unknown = sorted(set(config.layers) - set(layers))
    if unknown:
        raise CnnzipError(f"prune: no conv or linear layer named {', '.join(unknown)}; "
                          f"layers are {', '.join(layers)}")
    if config.quality is not None:
        return {n: 1.0 - float(threshold_mask(m.weight, config.quality).float().mean())
                for n, m in layers.items()}
    if config.sparsity is not None:
        targets = {n: config.sparsity for n in layers}
    elif ctx.sparsities is not None:
        targets = dict(ctx.sparsities)
    else:
        raise CnnzipError("prune: give a sparsity or run a sensitivity scan first")
    return {**targets, **config.layers}


def _set_masks(model: nn.Module, targets: dict[str, float], fraction: float,
               ctx: Context) -> None:
    layers = weight_layers(model)
    for name, final in targets.items():
        ctx.masks[name] = magnitude_mask(layers[name].weight, final * fraction)
    apply_masks(model, ctx.masks)


@register("prune", MagnitudePrune)
def prune(model: nn.Module, config: MagnitudePrune, ctx: Context) -> nn.Module:
    targets = _targets(model, config, ctx)
    ctx.notes["prune"] = {"targets": targets, "schedule": config.schedule.value}
    epochs = ctx.epochs(config.epochs)
    if config.schedule is Schedule.ONE_SHOT or epochs == 0:
        _set_masks(model, targets, 1.0, ctx)
        finetune(model, ctx, epochs=config.epochs, lr=config.lr, description="retrain")
        return model
    if config.schedule is Schedule.ITERATIVE:
        rounds = max(1, min(config.rounds, epochs))
        per_round = [epochs // rounds + (i < epochs % rounds) for i in range(rounds)]
        for i, e in enumerate(per_round):
            fraction = agp_sparsity(1.0, i + 1, rounds)  # rising toward 1, cubic
            _set_masks(model, targets, fraction, ctx)
            finetune(model, ctx, epochs=e, lr=config.lr, description=f"prune round {i + 1}")
        return model
    if config.schedule is Schedule.DNS:
        _surgery(model, targets, config, ctx)
        return model
    # AGP: masks are recomputed along the cubic curve over the first ~2/3 of the steps.
    ramp, every = _ramp(config, ctx)
    counter = {"step": 0}

    def update(m: nn.Module) -> None:
        counter["step"] += 1
        step = counter["step"]
        if step <= ramp and (step % every == 0 or step == ramp):
            _set_masks(m, targets, agp_sparsity(1.0, step, ramp), ctx)

    _set_masks(model, targets, agp_sparsity(1.0, 0, ramp), ctx)
    finetune(model, ctx, epochs=config.epochs, lr=config.lr, description="gradual prune",
             after_step=update)
    _set_masks(model, targets, 1.0, ctx)  # exactly the targets, whatever the step count was
    return model


def _ramp(config: MagnitudePrune, ctx: Context) -> tuple[int, int]:
    """(steps over which the sparsity rises, steps between mask updates): the first ~2/3 of
    the retraining, ``config.rounds`` updates."""
    steps_per_epoch = TrainConfig().steps_per_epoch(len(ctx.splits.train))  # finetune's
    ramp = max(1, int(steps_per_epoch * ctx.epochs(config.epochs) * 2 / 3))
    return ramp, max(1, ramp // max(1, config.rounds))


def _spliced(latent: torch.Tensor, mask: torch.Tensor, sparsity: float,
             margin: float) -> torch.Tensor:
    """Dynamic network surgery's mask: prune below (1 − margin)·t, splice above (1 + margin)·t,
    keep the state in between (t: the magnitude at ``sparsity``)."""
    if sparsity <= 0:
        return torch.ones_like(mask)
    size = latent.abs()
    k = min(size.numel(), max(1, int(round(sparsity * size.numel()))))
    t = float(size.flatten().kthvalue(k).values)
    return (size > (1 + margin) * t) | (mask & (size > (1 - margin) * t))


def _surgery(model: nn.Module, targets: dict[str, float], config: MagnitudePrune,
             ctx: Context) -> None:
    """Dynamic network surgery: every layer's dense weights keep training (each optimiser
    step's update lands on pruned weights too, the forward pass uses only the unpruned ones),
    and its mask is recomputed from them as the sparsity rises, so a weight pruned early can
    come back. The last mask is exact (``magnitude_mask`` of the trained weights)."""
    layers = weight_layers(model)
    for name in targets:
        ctx.masks.pop(name, None)  # the surgery's masks replace any earlier one
    latent = {n: layers[n].weight.detach().clone() for n in targets}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in latent.items()}
    ramp, every = _ramp(config, ctx)
    counter = {"step": 0}

    def recompute(step: int) -> None:
        for n, final in targets.items():
            sparsity = final * agp_sparsity(1.0, step, ramp)
            masks[n] = (_spliced(latent[n], masks[n], sparsity, config.splice_margin)
                        if step < ramp else magnitude_mask(latent[n], sparsity))

    def write() -> None:
        with torch.no_grad():
            for n in targets:
                layers[n].weight.copy_(latent[n] * masks[n])

    def update(_m: nn.Module) -> None:  # fine-tuning trains ``model`` in place: ``layers``
        counter["step"] += 1
        with torch.no_grad():
            for n in targets:  # the step's update, pruned positions included (they were 0)
                latent[n] += layers[n].weight - latent[n] * masks[n]
        if counter["step"] % every == 0:
            recompute(counter["step"])
        write()

    finetune(model, ctx, epochs=config.epochs, lr=config.lr, description="network surgery",
             after_step=update)
    recompute(max(ramp, counter["step"]))  # exactly the targets, whatever the step count was
    write()
    for n in targets:
        ctx.masks[n] = masks[n]


def sparsity_of(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in each conv and linear weight."""
    return {n: 1.0 - float(torch.count_nonzero(m.weight)) / m.weight.numel()
            for n, m in weight_layers(model).items()}
