"""Layer merging: BatchNorms folded (exact), and non-essential layers merged into important ones.

``merge`` scores every nonlinearity whose removal would let layers merge and every residual
block by the validation accuracy of the model without it, removes the least essential ones
(nonlinearities gradually during fine-tuning: the blend moves from the nonlinearity to its linear
counterpart), then merges the now-linear neighbours exactly. The network gets shallower.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import nn

from cnnzip import metrics
from cnnzip.errors import CnnzipError
from cnnzip.methods.base import Context, finetune, register
from cnnzip.models.fold import fold_batchnorm, foldable_pairs
from cnnzip.models.merge import Candidate, candidates, finish_linearizing, linearize, merge_all
from cnnzip.modules import CodebookLayer, Linearizing
from cnnzip.progress import progress_bar
from cnnzip.train import TrainConfig


@dataclass(frozen=True)
class FoldBatchNorm:
    """Fold every BatchNorm that reads only a conv or linear layer's output into that layer.

    The model computes the same function in eval mode (checked in the tests with allclose);
    it has fewer layers and runs faster. Later retraining trains the folded layers directly.
    """


@dataclass(frozen=True)
class MergeLayers:
    """Remove the least essential nonlinearities and residual blocks, then merge exactly.

    Candidates are taken greedily, the one whose removal keeps the highest validation accuracy
    first (each round re-scores the rest with the earlier choices applied).

    Attributes:
        activations: consider activations and max poolings (a pooling becomes an average
            pooling and merges into the convolution before it).
        blocks: consider skipping residual blocks.
        max_drop: stop when the next removal would leave the model (before retraining) more
            than this validation accuracy (a fraction) below the original.
        target_layers: instead, remove candidates until this fraction of the conv and linear
            layers is gone (the least essential first).
        include: module names always removed when they are candidates.
        exclude: module names never removed.
        samples: validation images per measurement.
        epochs: fine-tuning epochs with distillation, during which nonlinearities fade out.
        ramp: the fraction of fine-tuning over which they fade (then it trains the linear form).
        lr: fine-tuning peak learning rate.
    """

    activations: bool = True
    blocks: bool = True
    max_drop: float = 0.02
    target_layers: float | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    samples: int = 2000
    epochs: int = 5
    ramp: float = 0.5
    lr: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_drop <= 1.0:
            raise CnnzipError(f"merge: max_drop is a fraction in [0, 1]; got {self.max_drop}")
        if self.target_layers is not None and not 0.0 < self.target_layers < 1.0:
            raise CnnzipError("merge: target_layers is the fraction of layers to remove, in "
                              f"(0, 1); got {self.target_layers}")
        if not 0.0 < self.ramp <= 1.0:
            raise CnnzipError(f"merge: ramp is a fraction in (0, 1]; got {self.ramp}")


def _refuse_after_sharing(model: nn.Module, step: str) -> None:
    if any(isinstance(m, CodebookLayer) for m in model.modules()):
        raise CnnzipError(f"{step}: fold and merge layers before weight sharing in a recipe")


def _fold(model: nn.Module, ctx: Context) -> list[str]:
    pairs = foldable_pairs(model)
    fold_batchnorm(model, pairs)
    ctx.folded.extend(pairs)
    return [f"{bn} → {layer}" for layer, bn in pairs]


@register(FoldBatchNorm)
def fold(model: nn.Module, config: FoldBatchNorm, ctx: Context) -> nn.Module:
    _refuse_after_sharing(model, "fold")
    ctx.notes["fold"] = {"folded": _fold(model, ctx)}
    return model


def _allowed(cand: Candidate, config: MergeLayers) -> bool:
    wanted = config.blocks if cand.kind == "block" else config.activations
    return (wanted or cand.name in config.include) and cand.name not in config.exclude


def _select(model: nn.Module, config: MergeLayers, ctx: Context,
            in_shape: tuple[int, ...]) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """Greedy choice: each round scores every remaining candidate with the earlier choices
    applied, and takes the one that keeps the most validation accuracy."""
    base = ctx.val_accuracy(model, config.samples)
    total = metrics.count_layers(model)
    trial, chosen, rounds, removed = copy.deepcopy(model), [], [], 0
    with progress_bar(disable=ctx.quiet) as bar:
        task = bar.add_task("merge: scoring", total=None, status="")
        while True:
            found = [(c, n) for c, n in candidates(trial, in_shape) if _allowed(c, config)]
            if not found:
                break
            scored = []
            for cand, layers in found:
                probe = copy.deepcopy(trial)
                linearize(probe, cand, [])
                scored.append((ctx.val_accuracy(probe, config.samples), layers, cand))
                bar.advance(task)
            forced = [s for s in scored if s[2].name in config.include]
            acc, layers, cand = max(forced or scored, key=lambda s: (s[0], s[1]))
            if not forced:
                if config.target_layers is not None:
                    if removed >= config.target_layers * total:
                        break
                elif base - acc > config.max_drop:
                    break
            rounds.append({"chosen": cand.name, "kind": cand.kind, "val_accuracy": acc,
                           "scores": {s[2].name: s[0] for s in scored}})
            linearize(trial, cand, [])
            chosen.append(cand)
            removed += layers
            bar.update(task, status=f"{len(chosen)} chosen")
    return chosen, rounds


@register(MergeLayers)
def merge(model: nn.Module, config: MergeLayers, ctx: Context) -> nn.Module:
    _refuse_after_sharing(model, "merge")
    if ctx.masks:
        raise CnnzipError("merge: merge layers before unstructured pruning in a recipe (a "
                          "merged layer's weights are new)")
    in_shape = tuple(ctx.splits.info.in_shape)
    notes: dict[str, Any] = {"folded": _fold(model, ctx),
                             "layers_before": metrics.count_layers(model),
                             "val_before": ctx.val_accuracy(model, config.samples)}
    chosen, notes["rounds"] = _select(model, config, ctx, in_shape)
    for cand in chosen:
        linearize(model, cand, ctx.replaced, gradual=True)
    blends = [m for m in model.modules() if isinstance(m, Linearizing)]
    epochs = ctx.epochs(config.epochs)
    steps = -(-len(ctx.splits.train) // TrainConfig().batch_size) * max(epochs, 0)
    ramp_steps = max(1, int(config.ramp * steps))
    done = 0

    def fade(_m: nn.Module) -> None:
        nonlocal done
        done += 1
        for blend in blends:
            blend.set_progress(done / ramp_steps)

    finetune(model, ctx, epochs=config.epochs, lr=config.lr, description="merge fine-tune",
             after_step=fade)
    for blend in blends:
        blend.set_progress(1.0)
    finish_linearizing(model, ctx.replaced)
    merges = merge_all(model, in_shape, ctx.replaced)
    notes.update(chosen=[f"{c.kind} {c.name}" for c in chosen],
                 merges=[m.describe() for m in merges],
                 layers_after=metrics.count_layers(model))
    ctx.notes["merge"] = notes
    return model
