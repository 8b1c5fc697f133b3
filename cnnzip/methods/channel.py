"""Structured (channel) pruning: score coupled-channel groups (:mod:`.channel_scores`), choose
how many channels each group loses under a MACs or parameter budget, remove them for real,
retrain with distillation, in one cut or gradually in several.

Optionally the model first trains with network slimming's L1 penalty on BatchNorm scales, and
pruning may be soft: the chosen channels are zeroed, training may revive them, the choice is
made again after every epoch but the last (which trains with it final), and only the final
choice is removed."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from torch import nn

from cnnzip.errors import CnnzipError
from cnnzip.graph import channel_groups, dependency_graph
from cnnzip.methods.shared.allocation import (Allocation, Cost, GroupScan, Measure, channels,
                                              lowest, model_cost, plan_removals, ranking_keys,
                                              sensitivity_keys)
from cnnzip.methods.base import Context, finetune, register
from cnnzip.methods.shared.calibration import calibrate_feature_maps, calibration_images
from cnnzip.methods.shared.channel_scores import Criterion, group_scores, score_groups
from cnnzip.methods.shared.policy import ChannelPolicy
from cnnzip.modules.quant import QuantLayer
from cnnzip.ops.quant import Observer
from cnnzip.surgery import plain_layers, remove_channels, silence_channels

__all__ = ["Allocation", "ChannelPolicy", "ChannelPrune", "Criterion", "GroupScan", "Measure",
           "group_scores", "sensitivity_keys"]


@dataclass(frozen=True)
class ChannelPrune:
    """Remove whole channels (filters and everything coupled to them) under a budget.

    Attributes:
        criterion: how a channel's importance is scored.
        allocation: how the budget becomes per-group ratios.
        target_macs: keep at most this fraction of the model's MACs (0.5: 2× fewer).
        target_params: or keep at most this fraction of its parameters.
        layers: per-group pruning ratios by root layer name (overrides; with no target, the
            only ratios applied).
        max_ratio: no group loses more than this fraction of its channels.
        round_to: every group keeps a multiple of this many channels (its count rounded up;
            a group no larger keeps all), for targets that compute whole blocks of channels
            (SIMD lanes, FPGA processing elements), where a count in between costs as much as
            the next multiple.
        indirect_weight: direct-indirect: the weight of the indirect (next-layer) term.
        global_weight: adaptive: the weight of the model-wide normalisation against the
            layer-wise one (a geometric mix).
        cost_weight: rank channels by importance per MAC: each ranking key is divided by the
            channel's MACs (relative to the model's average channel) to this power. 0 ignores
            cost; 1 is the knapsack greedy, which meets a MACs budget with fewer, costlier
            channels (usually early, high-resolution layers, which also run slowest).
        cost: what a channel costs for ``cost_weight``: ``macs``, or ``time``, its layers'
            and BatchNorms' time measured in this process (a forward pass of 64 images, the
            least of five), which also counts feature-map traffic: on a CPU a channel of an
            early, high-resolution layer costs more time per MAC than the MACs say. Timings
            vary, so with ``time`` two runs of the same command may remove other channels.
        sensitivity: allocation ``sensitivity``: how the scan measures each group's cuts.
        policy: allocations ``ddpg`` and ``ddpg-scale``: how the search runs.
        batches: training batches for data-driven criteria (taylor, apoz).
        slimming: before scoring, train ``slimming_epochs`` with this L1 penalty on BatchNorm
            scales (network slimming; pairs with criterion bn).
        slimming_epochs: epochs of that sparsity training (0: none).
        soft: soft pruning: instead of removing and then retraining, zero the chosen channels,
            retrain while they may recover, choose again after every epoch but the last (which
            trains with the final choice silenced for good), and remove only that choice.
        epochs: retraining epochs with distillation (after removal, or during soft pruning).
        steps: gradual pruning: reach the budget in this many cuts, each removing the same
            fraction of what is left (scored, allocated and, for the sensitivity allocation,
            scanned again on the retrained model), the retraining epochs spread between
            them; ``max_ratio`` and ``layers`` still bound what a group loses in all.
        lr: retraining peak learning rate.
        recalibrate: on a quantized model, measure the feature-map ranges again after the
            removal (the remaining channels' sums change); false keeps the learned ones, so
            the removal alone changes nothing but the removed channels.
    """

    criterion: Criterion = Criterion.L2
    allocation: Allocation = Allocation.GLOBAL
    target_macs: float | None = None
    target_params: float | None = None
    layers: dict[str, float] = field(default_factory=dict)
    max_ratio: float = 0.9
    round_to: int = 1
    indirect_weight: float = 0.5
    global_weight: float = 0.5
    cost_weight: float = 0.0
    cost: Cost = Cost.MACS
    sensitivity: GroupScan = field(default_factory=GroupScan)
    policy: ChannelPolicy = field(default_factory=ChannelPolicy)
    batches: int = 8
    slimming: float = 0.0
    slimming_epochs: int = 0
    soft: bool = False
    epochs: int = 10
    steps: int = 1
    lr: float = 0.01
    recalibrate: bool = True

    def __post_init__(self) -> None:
        if self.target_macs is not None and self.target_params is not None:
            raise CnnzipError("channels: give target_macs or target_params, not both")
        for key in ("target_macs", "target_params"):
            value = getattr(self, key)
            if value is not None and not 0.0 < value < 1.0:
                raise CnnzipError(f"channels: {key} is the fraction to keep, in (0, 1); "
                                  f"got {value}")
        if not 0.0 < self.max_ratio < 1.0:
            raise CnnzipError(f"channels: max_ratio must be in (0, 1), got {self.max_ratio}")
        if self.round_to < 1:
            raise CnnzipError(f"channels: round_to must be a positive channel count, got "
                              f"{self.round_to}")
        if self.allocation.searched and self.target_macs is None and self.target_params is None:
            raise CnnzipError(f"channels: allocation {self.allocation.value} searches ratios for a "
                              "budget; give target_macs or target_params")
        if self.steps < 1:
            raise CnnzipError(f"channels: steps must be a positive count of cuts, got "
                              f"{self.steps}")
        if self.steps > 1 and self.soft:
            raise CnnzipError("channels: soft pruning chooses again every epoch; it does not "
                              "combine with steps > 1")
        if self.slimming_epochs and self.slimming <= 0:
            raise CnnzipError("channels: slimming_epochs needs a positive slimming weight")
        for name, ratio in self.layers.items():
            if not 0.0 <= ratio <= self.max_ratio:
                raise CnnzipError(f"channels: layers.{name} = {ratio} is outside "
                                  f"[0, max_ratio={self.max_ratio}]")


@register("channels", ChannelPrune, realized=True,
          after=(("prune", "prune channels before unstructured pruning"),
                 ("share", "prune channels before weight sharing")))
def channel_prune(model: nn.Module, config: ChannelPrune, ctx: Context) -> nn.Module:
    if ctx.masks:
        raise CnnzipError("channels: structured pruning must come before unstructured pruning "
                          "and weight sharing in a recipe")
    quantized = any(isinstance(m, QuantLayer) for m in model.modules())
    if quantized:
        unsupported = [what for what, on in (
            ("soft pruning", config.soft), ("slimming", config.slimming_epochs),
            ("the sensitivity allocation", config.allocation is Allocation.SENSITIVITY),
            (f"the {config.allocation.value} search", config.allocation.searched)) if on]
        if unsupported:
            raise CnnzipError(f"channels: {', '.join(unsupported)} cannot run on a quantized "
                              "model; prune before quantizing, or use another allocation")
    in_shape = tuple(ctx.splits.info.in_shape)
    graph, groups = _traced_groups(model, in_shape)
    unknown = sorted(set(config.layers) - {g.root for g in groups})
    if unknown:
        raise CnnzipError(f"channels: no prunable group rooted at {', '.join(unknown)}; groups "
                          f"are {', '.join(g.root for g in groups)}")
    notes: dict = {"criterion": config.criterion.value, "allocation": config.allocation.value,
                   "target_macs": config.target_macs, "target_params": config.target_params,
                   "soft": config.soft, "quantized": quantized, "left_whole": groups.whole}
    if config.slimming_epochs:
        finetune(model, ctx, epochs=config.slimming_epochs, lr=config.lr, description="slimming",
                 slimming=config.slimming)
        notes["slimming"] = {"weight": config.slimming,
                             "epochs": ctx.epochs(config.slimming_epochs)}
    before = {g.root: g.channels for g in groups}
    removed: dict[str, int] = {}
    kind = "params" if config.target_params is not None else "macs"
    cut_config, budgets, epochs = _schedule(model, config, ctx, in_shape, kind)
    if config.steps > 1:
        notes["steps"] = []
    for i, (budget, step_epochs) in enumerate(zip(budgets, epochs)):
        if i:
            graph, groups = _traced_groups(model, in_shape)
        cut = cut_config
        if budget is not None:
            with plain_layers(model):
                now = model_cost(model, in_shape, kind)
            cut = replace(cut_config, **{f"target_{kind}": min(budget / now, 1 - 1e-9)})
        step_notes = _cut(model, graph, groups, cut, ctx, in_shape)
        for root, n in step_notes.pop("removed").items():
            removed[root] = removed.get(root, 0) + n
        if config.steps == 1:
            notes.update(step_notes)
        else:
            notes["steps"].append({"val_accuracy_before_retraining": ctx.val_accuracy(model),
                                   "epochs": step_epochs, **step_notes})
        if not config.soft:
            finetune(model, replace(ctx, finetune_epochs=step_epochs), epochs=step_epochs,
                     lr=config.lr, description="retrain" if config.steps == 1 else
                     f"retrain {i + 1}/{config.steps}")
    notes["groups"] = {root: {"channels": before[root], "removed": n,
                              "ratio": n / before[root]} for root, n in removed.items()}
    ctx.notes["channels"] = notes
    return model


def _schedule(model: nn.Module, config: ChannelPrune, ctx: Context, in_shape: tuple[int, ...],
              kind: str) -> tuple[ChannelPrune, list[float | None], list[int]]:
    """The cuts of a (gradual) pruning: the config each cut runs with, each cut's budget (the
    MACs or parameters it keeps; None: the config's own ratios) and the retraining epochs after
    it. With ``steps`` n, cut k keeps ``target ** (k / n)`` of the original budget, so each
    removes the same fraction of what is left; the group limits (``max_ratio``, ``layers``)
    become per-cut fractions whose n cuts together remove at most the configured ones; the
    epochs are spread evenly, the later cuts getting any extra."""
    n = config.steps
    epochs = cut_epochs(ctx.epochs(config.epochs), n)
    if n == 1:
        return config, [None], epochs
    cut = replace(config, max_ratio=cut_ratio(config.max_ratio, n), steps=1,
                  layers={k: cut_ratio(v, n) for k, v in config.layers.items()})
    target = config.target_params if kind == "params" else config.target_macs
    if target is None:
        return cut, [None] * n, epochs
    with plain_layers(model):
        original = model_cost(model, in_shape, kind)
    return cut, [original * target ** ((k + 1) / n) for k in range(n)], epochs


def cut_epochs(total: int, steps: int) -> list[int]:
    """``total`` retraining epochs spread evenly over ``steps`` cuts, the later cuts getting
    any extra."""
    return [total // steps + (1 if k >= steps - total % steps else 0) for k in range(steps)]


def cut_ratio(ratio: float, steps: int) -> float:
    """The share of a group each of ``steps`` cuts may take so that together they take at
    most ``ratio`` of it."""
    return 1 - (1 - ratio) ** (1 / steps)


def _cut(model: nn.Module, graph, groups, config: ChannelPrune, ctx: Context,
         in_shape: tuple[int, ...]) -> dict:
    """One cut: score the groups, choose the channels under ``config``'s budget (for soft
    pruning, choose again while retraining), remove them. Returns notes for the report, with
    ``removed``: the channels each group lost."""
    notes: dict = {}
    scores = score_groups(model, groups, config, ctx)
    with plain_layers(model):
        keys, allocation_notes = ranking_keys(model, groups, scores, config, ctx)
        removals = plan_removals(model, groups, scores, keys, config, in_shape)
    notes.update(allocation_notes)
    by_root = {g.root: g for g in groups}
    if config.soft:
        counts = {root: len(idxs) for root, idxs in removals.items()}
        revived = []

        def silence(recoverable: bool) -> None:
            for root, idxs in channels(by_root, removals).items():
                silence_channels(by_root[root], idxs, recoverable=recoverable)

        # the last epoch trains with the final choice silenced for good (BatchNorm shifts too),
        # so removing it changes nothing: dropping the constants that revivable channels carry,
        # with no training after, cost resnet20 35 points after 3 epochs
        last = ctx.epochs(config.epochs) - 1  # the epochs that run (--finetune-epochs)

        def reselect(m: nn.Module, epoch: int) -> None:
            nonlocal removals
            if epoch >= last:
                return
            chosen = lowest(score_groups(m, groups, config, ctx), counts)
            revived.append(sum(len(set(chosen[r]) - set(removals[r])) for r in chosen))
            removals = chosen
            silence(recoverable=epoch + 1 < last)

        silence(recoverable=last > 0)
        finetune(model, ctx, epochs=config.epochs, lr=config.lr, description="soft prune",
                 after_epoch=reselect)
        silence(recoverable=False)  # exactly zero: removal changes nothing
        notes["soft_reselected"] = revived
    removals = channels(by_root, removals)
    rows: dict[str, list[int]] = {}
    with plain_layers(model, rows) as wrappers:
        ctx.edits.append(remove_channels(model, graph, removals, rows))
    if wrappers and config.recalibrate:  # the feature maps changed: their ranges are measured again
        calibrate_feature_maps(model, wrappers, calibration_images(ctx, 1024), ctx,
                               Observer.PERCENTILE)
        notes["val_after_recalibration"] = ctx.val_accuracy(model)
    notes["removed"] = {root: len(idxs) for root, idxs in removals.items()}
    return notes


def _traced_groups(model: nn.Module, in_shape: tuple[int, ...]):
    """The model's dependency graph and its prunable channel groups (a quantized model is
    traced as its plain layers)."""
    with plain_layers(model):
        graph = dependency_graph(model, in_shape)
        groups = channel_groups(model, graph)
    if not groups:
        whole = "; ".join(f"{n}: {why}" for n, why in groups.whole.items())
        raise CnnzipError(f"channels: no layer's channels can be removed ({whole})")
    return graph, groups
