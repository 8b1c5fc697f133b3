"""Layer merging: BatchNorms folded (exact), and non-essential layers merged into important ones.

``merge`` scores every nonlinearity whose removal would let layers merge and every residual
block by the validation accuracy of the model without it, removes the least essential ones
(nonlinearities gradually during fine-tuning: the blend moves from the nonlinearity to its linear
counterpart), then merges the now-linear neighbours exactly. The network gets shallower. Max
poolings may also merge exactly into the convolutions they pool (``max_pools``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from cnnzip import metrics
from cnnzip.errors import CnnzipError
from cnnzip.graph import foldable_pairs
from cnnzip.methods.base import Context, finetune, register
from cnnzip.modules import CodebookLayer, Linearizing
from cnnzip.modules.quant import QuantLayer
from cnnzip.progress import progress_bar
from cnnzip.surgery import fold_batchnorm
from cnnzip.surgery.linearize import (Candidate, Kind, candidates, finish_linearizing,
                                      functional_nonlinearities, linearize)
from cnnzip.surgery.merge import max_pools, merge_all, merge_max_pool
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

    Candidates are taken greedily, each round re-scoring the rest with the earlier choices
    applied (validation accuracy before retraining, MACs and layers after merging). Only
    activation and pooling modules (``nn.ReLU``, ``nn.MaxPool2d``, ...) can be candidates; those
    a forward calls as functions (``F.relu``) stay, and the report names them.

    Attributes:
        activations: consider activations and max poolings (a pooling becomes an average
            pooling and merges into the convolution before it).
        blocks: consider skipping residual blocks.
        max_drop: without a target, take the least essential candidates until the next would
            leave the model (before retraining) more than this validation accuracy (a fraction)
            below the original.
        target_macs: remove candidates, the least accuracy lost per MAC saved first, until the
            merged model keeps at most this fraction of the MACs.
        target_layers: remove candidates, the least accuracy lost per layer first, until this
            fraction of the conv and linear layers is gone.
        max_pools: max poolings merged exactly into the convolution they pool (with the
            activation between), by name, or true for every one that can: each becomes one
            strided convolution over the phases of the pooling window and a maximum over them.
            No accuracy changes and no retraining is needed; it computes ((k + 1) / k)² more
            multiply-accumulates for a k×k kernel (zero-padded), and is faster where a
            convolution's full-resolution output costs more than its arithmetic (measured:
            lenet5 2.5× with both). These poolings are not candidates for removal.
        include: module names always removed when they are candidates.
        exclude: module names never removed.
        samples: validation images per measurement.
        epochs: fine-tuning epochs with distillation: nonlinearities fade out during the first
            ``ramp`` of them, then the layers merge and the rest train the merged model (a
            model with BatchNorms trains all epochs with them; then only the BatchNorms in the
            way of a merge fold, and the rest wait for a later ``fold`` step).
        ramp: the fraction of the epochs over which nonlinearities fade out.
        lr: fine-tuning peak learning rate.
    """

    activations: bool = True
    blocks: bool = True
    max_drop: float = 0.02
    target_macs: float | None = None
    target_layers: float | None = None
    max_pools: bool | tuple[str, ...] = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    samples: int = 2000
    epochs: int = 5
    ramp: float = 0.5
    lr: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_drop <= 1.0:
            raise CnnzipError(f"merge: max_drop is a fraction in [0, 1]; got {self.max_drop}")
        if self.target_macs is not None and self.target_layers is not None:
            raise CnnzipError("merge: give target_macs or target_layers, not both")
        if self.target_macs is not None and not 0.0 < self.target_macs < 1.0:
            raise CnnzipError("merge: target_macs is the fraction of MACs to keep, in (0, 1); "
                              f"got {self.target_macs}")
        if self.target_layers is not None and not 0.0 < self.target_layers < 1.0:
            raise CnnzipError("merge: target_layers is the fraction of layers to remove, in "
                              f"(0, 1); got {self.target_layers}")
        if not 0.0 < self.ramp <= 1.0:
            raise CnnzipError(f"merge: ramp is a fraction in (0, 1]; got {self.ramp}")


def _refuse_after_sharing(model: nn.Module, step: str) -> None:
    if any(isinstance(m, CodebookLayer) for m in model.modules()):
        raise CnnzipError(f"{step}: fold and merge layers before weight sharing in a recipe")
    if step != "fold" and any(isinstance(m, QuantLayer) for m in model.modules()):
        raise CnnzipError(f"{step}: merge layers before quantization in a recipe")


def _fold(model: nn.Module, ctx: Context) -> list[str]:
    pairs = foldable_pairs(model)
    ctx.edits += fold_batchnorm(model, pairs)
    return [f"{bn} → {layer}" for layer, bn in pairs]


@register("fold", FoldBatchNorm, realized=True,
          after=(("share", "fold BatchNorms before weight sharing"),))
def fold(model: nn.Module, config: FoldBatchNorm, ctx: Context) -> nn.Module:
    _refuse_after_sharing(model, "fold")
    ctx.notes["fold"] = {"folded": _fold(model, ctx)}
    return model


def _allowed(cand: Candidate, config: MergeLayers, pools: list[str]) -> bool:
    wanted = config.blocks if cand.kind is Kind.BLOCK else config.activations
    return (wanted or cand.name in config.include) and cand.name not in config.exclude \
        and cand.name not in pools


def _exact_pools(folded: nn.Module, config: MergeLayers, in_shape: tuple[int, ...]) -> list[str]:
    """The max poolings ``config.max_pools`` asks for, checked on the model with its BatchNorms
    folded (before any training, so a wrong name costs nothing)."""
    if config.max_pools is False:
        return []
    found = max_pools(folded, in_shape)
    if config.max_pools is True:
        return found
    wrong = [p for p in config.max_pools if p not in found]
    if wrong:
        raise CnnzipError(f"merge: max_pools: {wrong[0]!r} is not a max pooling that merges "
                          "into a convolution (a plain max pooling of a convolution's output, "
                          "through a ReLU, ReLU6 or leaky ReLU, read by nothing else); those "
                          f"that do: {', '.join(found) or 'none'}")
    return list(config.max_pools)


def _merge_pools(model: nn.Module, pools: list[str], ctx: Context,
                 in_shape: tuple[int, ...]) -> list[str]:
    """Merge ``pools`` into their convolutions, folding the BatchNorms in their way first."""
    if not pools:
        return []
    trial = copy.deepcopy(model)
    pairs = foldable_pairs(trial)
    fold_batchnorm(trial, pairs)
    convs = {merge_max_pool(trial, pool, in_shape)[0].names[0] for pool in pools}
    needed = [(layer, bn) for layer, bn in pairs if layer in convs]
    ctx.edits += fold_batchnorm(model, needed)
    done = []
    for pool in pools:
        merge, edits = merge_max_pool(model, pool, in_shape)
        ctx.edits += edits
        done.append(merge.describe())
    return done


def _merged(model: nn.Module, in_shape: tuple[int, ...]) -> tuple[int, int]:
    """MACs and conv/linear layers of ``model`` once everything that merges has merged."""
    merged = copy.deepcopy(model)
    merge_all(merged, in_shape)
    return metrics.count_macs(merged, in_shape), metrics.count_layers(merged)


def _select(model: nn.Module, config: MergeLayers, ctx: Context, in_shape: tuple[int, ...],
            pools: list[str]) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """Greedy choice: each round removes every remaining candidate in turn (with the earlier
    choices applied), measures validation accuracy and the MACs and layers left after merging,
    and takes the cheapest: the least accuracy lost per MAC saved (``target_macs``), per layer
    removed (``target_layers``), or simply the least accuracy lost (``max_drop``)."""
    if not (config.activations or config.blocks or config.include):
        return [], []  # nothing may be chosen: no scoring
    base = ctx.val_accuracy(model, config.samples)
    macs0, layers0 = _merged(model, in_shape)
    macs, layers = macs0, layers0
    trial, chosen, rounds = copy.deepcopy(model), [], []
    with progress_bar(disable=ctx.quiet) as bar:
        task = bar.add_task("merge: scoring", total=None, status="")
        while True:
            met = (config.target_macs is not None and macs <= config.target_macs * macs0) or \
                (config.target_layers is not None
                 and layers0 - layers >= config.target_layers * layers0)
            scored = []
            for cand, _ in candidates(trial, in_shape):
                if not _allowed(cand, config, pools):
                    continue
                probe = copy.deepcopy(trial)
                linearize(probe, cand)
                acc = ctx.val_accuracy(probe, config.samples)
                scored.append((cand, acc, *_merged(probe, in_shape)))
                bar.advance(task)
            forced = [s for s in scored if s[0].name in config.include]
            if met:
                scored = []
            elif config.target_macs is not None:
                scored = [s for s in scored if s[2] < macs]
            elif config.target_layers is not None:
                scored = [s for s in scored if s[3] < layers]
            if not (forced or scored):
                break

            def cost(s: tuple[Candidate, float, int, int]) -> float:
                loss = base - s[1]
                if config.target_macs is not None:
                    return loss / max(macs - s[2], 1)
                if config.target_layers is not None:
                    return loss / max(layers - s[3], 1)
                return loss

            cand, acc, new_macs, new_layers = min(forced or scored, key=cost)
            if not forced and config.target_macs is None and config.target_layers is None \
                    and base - acc > config.max_drop:
                break
            rounds.append({"chosen": cand.name, "kind": cand.kind, "val_accuracy": acc,
                           "macs": new_macs, "layers": new_layers,
                           "scores": {s[0].name: s[1] for s in scored}})
            linearize(trial, cand)
            chosen.append(cand)
            macs, layers = new_macs, new_layers
            bar.update(task, status=f"{len(chosen)} chosen")
    return chosen, rounds


def _norms_in_merges(model: nn.Module, in_shape: tuple[int, ...]) -> list[tuple[str, str]]:
    """The (layer, BatchNorm) pairs whose layer merges once every BatchNorm is folded."""
    trial = copy.deepcopy(model)
    pairs = foldable_pairs(trial)
    fold_batchnorm(trial, pairs)
    merged = {name for m in merge_all(trial, in_shape)[0] for name in m.names}
    return [(layer, bn) for layer, bn in pairs if layer in merged]


@register("merge", MergeLayers, realized=True,
          after=(("share", "merge layers before weight sharing"),
                 ("quantize", "merge layers before quantization")))
def merge(model: nn.Module, config: MergeLayers, ctx: Context) -> nn.Module:
    _refuse_after_sharing(model, "merge")
    if ctx.masks:
        raise CnnzipError("merge: merge layers before unstructured pruning in a recipe (a "
                          "merged layer's weights are new)")
    in_shape = tuple(ctx.splits.info.in_shape)
    # candidates are found on the model with its BatchNorms folded (a BatchNorm between a conv
    # and its pooling would block the merge), but the model retrains with them and folds after
    folded = copy.deepcopy(model)
    norms = foldable_pairs(folded)
    fold_batchnorm(folded, norms)
    notes: dict[str, Any] = {"layers_before": metrics.count_layers(folded),
                             "val_before": ctx.val_accuracy(model, config.samples)}
    pools = _exact_pools(folded, config, in_shape)
    chosen, notes["rounds"] = _select(folded, config, ctx, in_shape, pools)
    for cand in chosen:
        ctx.edits += linearize(model, cand, gradual=True)
    blends = [m for m in model.modules() if isinstance(m, Linearizing)]
    epochs = ctx.epochs(config.epochs)
    fading = math.ceil(epochs * config.ramp) if blends else 0  # epochs while they fade out
    if norms:  # a deep net without its BatchNorms may not train: all epochs before folding
        fading = epochs
    steps = max(1, -(-len(ctx.splits.train) // TrainConfig().batch_size)
                * math.ceil(epochs * config.ramp))
    resolved = dataclasses.replace(ctx, finetune_epochs=None)  # the epochs are split here
    done = 0

    def fade(_m: nn.Module) -> None:
        nonlocal done
        done += 1
        for blend in blends:
            blend.set_progress(done / steps)

    finetune(model, resolved, epochs=fading, lr=config.lr, description="merge: fade out",
             after_step=fade)
    for blend in blends:
        blend.set_progress(1.0)
    ctx.edits += finish_linearizing(model)
    # only the BatchNorms in the way of a merge fold here; the others stay for later retraining
    # (a deep net retrained without them diverged), and a recipe's last `fold` step takes them
    needed = _norms_in_merges(model, in_shape)
    ctx.edits += fold_batchnorm(model, needed)
    notes["folded"] = [f"{bn} → {layer}" for layer, bn in needed]
    merges, edits = merge_all(model, in_shape)
    ctx.edits += edits
    # the rest of the retraining trains the merged layers themselves (a merged kernel has more
    # free weights than the layers it came from, and the shallower model trains faster)
    finetune(model, resolved, epochs=epochs - fading, lr=config.lr,
             description="merge: fine-tune")
    notes.update(chosen=[f"{c.kind} {c.name}" for c in chosen],
                 merges=[m.describe() for m in merges],
                 max_pools=_merge_pools(model, pools, ctx, in_shape),
                 layers_after=metrics.count_layers(model),
                 functional_not_candidates=functional_nonlinearities(folded, in_shape))
    ctx.notes["merge"] = notes
    return model
