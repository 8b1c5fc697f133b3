"""Structured (channel) pruning: score coupled-channel groups, choose how many channels each
group loses under a MACs or parameter budget, remove them for real, retrain with distillation."""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cnnzip import metrics
from cnnzip.data import batches
from cnnzip.errors import CnnzipError
from cnnzip.graph import ChannelGroup, channel_groups, trace
from cnnzip.methods.base import Context, finetune, register
from cnnzip.ops import importance
from cnnzip.surgery import remove_channels


class Criterion(enum.Enum):
    L1 = "l1"  # L1 norm of the filters producing the channel
    L2 = "l2"  # L2 norm of the same
    BN = "bn"  # |BatchNorm scale| (network slimming); L2 for groups without BatchNorm
    TAYLOR = "taylor"  # first-order Taylor on a few training batches
    FPGM = "fpgm"  # distance from the layer's geometric median
    DIRECT_INDIRECT = "direct-indirect"  # own filters and the next layers' weights reading it
    APOZ = "apoz"  # 1 − average percentage of zeros after the channel's ReLU


class Allocation(enum.Enum):
    UNIFORM = "uniform"  # the same fraction of every group
    GLOBAL = "global"  # one ranking of layer-normalised scores across the model
    ADAPTIVE = "adaptive"  # one ranking of scores normalised by layer and by model together


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
        indirect_weight: direct-indirect: the weight of the indirect (next-layer) term.
        global_weight: adaptive: the weight of the model-wide normalisation against the
            layer-wise one (a geometric mix).
        batches: training batches for data-driven criteria (taylor, apoz).
        epochs: retraining epochs with distillation after removal.
        lr: retraining peak learning rate.
    """

    criterion: Criterion = Criterion.L2
    allocation: Allocation = Allocation.GLOBAL
    target_macs: float | None = None
    target_params: float | None = None
    layers: dict[str, float] = field(default_factory=dict)
    max_ratio: float = 0.9
    indirect_weight: float = 0.5
    global_weight: float = 0.5
    batches: int = 8
    epochs: int = 10
    lr: float = 0.01

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
        for name, ratio in self.layers.items():
            if not 0.0 <= ratio <= self.max_ratio:
                raise CnnzipError(f"channels: layers.{name} = {ratio} is outside "
                                  f"[0, max_ratio={self.max_ratio}]")


def _weight_dim(member_role: str) -> int:
    return 0 if member_role in ("out", "norm") else 1


def _scatter(total: torch.Tensor, member, values: torch.Tensor) -> None:
    idxs = torch.tensor(member.idxs, dtype=torch.long)
    roots = torch.tensor(member.root_idxs, dtype=torch.long)
    total.index_add_(0, roots, values[idxs].float())


def _readable(member) -> bool:
    """An "in" member whose weight has the group's channels along dim 1 (grouped convs do not)."""
    module = member.module
    return not (isinstance(module, nn.Conv2d) and module.groups > 1)


def _sum(group: ChannelGroup, role: str, score) -> torch.Tensor:
    total = torch.zeros(group.channels)
    for member in group.of_role(role):
        if role == "in" and not _readable(member):
            continue
        _scatter(total, member, score(member))
    return total


def _data_stats(model: nn.Module, groups: list[ChannelGroup], config: ChannelPrune,
                ctx: Context) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Weight gradients (taylor) or per-channel active fractions (apoz) on training batches."""
    grads: dict[str, torch.Tensor] = {}
    active: dict[str, torch.Tensor] = {}
    if config.criterion not in (Criterion.TAYLOR, Criterion.APOZ):
        return grads, active
    hooks = []
    if config.criterion is Criterion.APOZ:
        for group in groups:
            watched = group.of_role("norm") or group.of_role("out")
            for member in watched:
                def hook(module, inputs, output, name=member.name):
                    fraction = importance.active_fraction(output)
                    active[name] = active.get(name, 0) + fraction / config.batches
                hooks.append(member.module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        gen = torch.Generator().manual_seed(ctx.seed)
        for i, (x, y) in enumerate(batches(ctx.splits.train, ctx.splits.info, 128, shuffle=True,
                                           generator=gen)):
            if i >= config.batches:
                break
            with torch.set_grad_enabled(config.criterion is Criterion.TAYLOR):
                loss = F.cross_entropy(model(x), y)
            if config.criterion is Criterion.TAYLOR:
                loss.backward()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if config.criterion is Criterion.TAYLOR:
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, nn.Parameter) and weight.grad is not None:
                grads[name] = weight.grad.detach().clone()
        model.zero_grad(set_to_none=True)
    return grads, active


def group_scores(group: ChannelGroup, config: ChannelPrune,
                 grads: dict[str, torch.Tensor] | None = None,
                 active: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """One importance score per channel of ``group`` (higher: keep)."""
    c = config.criterion
    weight = lambda m: m.module.weight  # noqa: E731
    if c is Criterion.L1:
        return _sum(group, "out", lambda m: importance.lp_norm(weight(m), 0, 1))
    if c is Criterion.BN and group.of_role("norm"):
        return _sum(group, "norm", lambda m: weight(m).detach().abs())
    if c in (Criterion.L2, Criterion.BN):
        return _sum(group, "out", lambda m: importance.lp_norm(weight(m), 0, 2))
    if c is Criterion.FPGM:
        return _sum(group, "out", lambda m: importance.geometric_median_distance(weight(m)))
    if c is Criterion.DIRECT_INDIRECT:
        direct = importance.normalized(
            _sum(group, "out", lambda m: importance.lp_norm(weight(m), 0, 2)))
        indirect = _sum(group, "in", lambda m: importance.lp_norm(weight(m), 1, 2))
        if not indirect.any():
            return direct
        a = config.indirect_weight
        return (1 - a) * direct + a * importance.normalized(indirect)
    if c is Criterion.TAYLOR:
        grads = grads or {}
        total = torch.zeros(group.channels)
        for member in group.members:
            if member.name in grads and (member.role != "in" or _readable(member)):
                dim = _weight_dim(member.role)
                _scatter(total, member, importance.taylor(weight(member), grads[member.name], dim))
        return total
    if c is Criterion.APOZ:
        active = active or {}
        watched = [m for m in (group.of_role("norm") or group.of_role("out")) if m.name in active]
        total = torch.zeros(group.channels)
        for member in watched:
            _scatter(total, member, active[member.name])
        return total / max(1, len(watched))
    raise CnnzipError(f"channels: criterion {c.value!r} is not implemented")


def _ranking_keys(scores: dict[str, torch.Tensor], allocation: Allocation,
                  global_weight: float) -> dict[str, torch.Tensor]:
    """Per group, the keys by which channels are ranked across groups (lower goes first)."""
    if allocation is Allocation.UNIFORM:
        # rank within the group only: a channel's key is its quantile in its own group
        return {root: torch.argsort(torch.argsort(s)).float() / len(s) for root, s in scores.items()}
    local = {root: importance.normalized(s) for root, s in scores.items()}
    if allocation is Allocation.GLOBAL:
        return local
    everything = torch.cat(list(scores.values()))
    scale = everything.median().clamp_min(1e-12)
    g = global_weight
    return {root: local[root].clamp_min(1e-12) ** (1 - g) * (s / scale).clamp_min(1e-12) ** g
            for root, s in scores.items()}


def _order(keys: dict[str, torch.Tensor]) -> list[str]:
    """Every channel as its group's root name, lowest key first; ties go to the group that has
    lost the smaller fraction, so equal scores are spread evenly."""
    entries = []
    for root, k in keys.items():
        n = len(k)
        for rank, value in enumerate(torch.sort(k).values.tolist()):
            entries.append((value, rank / n, root))
    return [root for _, _, root in sorted(entries)]


def _removals(scores: dict[str, torch.Tensor], order: list[str], count: int,
              config: ChannelPrune) -> dict[str, list[int]]:
    """The lowest-scored channels of each group when the first ``count`` channels of the global
    ``order`` go; each group keeps at least ``1 - max_ratio`` of its channels, overrides win."""
    taken = dict.fromkeys(scores, 0)
    for root in order[:count]:
        taken[root] += 1
    out = {}
    for root, s in scores.items():
        n = len(s)
        if root in config.layers:
            k = int(round(config.layers[root] * n))
        else:
            k = min(taken[root], int(config.max_ratio * n))
        out[root] = torch.argsort(s, stable=True)[:min(k, n - 1)].tolist()
    return out


def _measure(model: nn.Module, in_shape: tuple[int, ...], kind: str) -> int:
    return metrics.count_params(model) if kind == "params" else metrics.count_macs(model, in_shape)


def plan_removals(model: nn.Module, scores: dict[str, torch.Tensor], config: ChannelPrune,
                  in_shape: tuple[int, ...]) -> dict[str, list[int]]:
    """The fewest channels, taken in ranking order, whose removal meets the budget (bisection on
    the count, each candidate measured on a pruned copy)."""
    order = _order(_ranking_keys(scores, config.allocation, config.global_weight))
    if config.target_macs is None and config.target_params is None:
        return _removals(scores, order, 0, config)
    kind = "params" if config.target_params is not None else "macs"
    fraction = config.target_params if kind == "params" else config.target_macs
    budget = fraction * _measure(model, in_shape, kind)

    def cost(count: int) -> int:
        trial = copy.deepcopy(model)
        remove_channels(trial, trace(trial, in_shape), _removals(scores, order, count, config))
        return _measure(trial, in_shape, kind)

    lo, hi = 0, len(order)
    reachable = cost(hi)
    if reachable > budget:
        raise CnnzipError(f"channels: cannot keep {kind} within {fraction:g} of the model's: "
                          f"removing max_ratio={config.max_ratio} of every group still leaves "
                          f"{reachable:,} of {budget / fraction:,.0f}; raise max_ratio or the "
                          "target")
    while lo < hi:  # the smallest count that meets the budget
        mid = (lo + hi) // 2
        if cost(mid) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return _removals(scores, order, hi, config)


@register(ChannelPrune)
def channel_prune(model: nn.Module, config: ChannelPrune, ctx: Context) -> nn.Module:
    if ctx.masks:
        raise CnnzipError("channels: structured pruning must come before unstructured pruning "
                          "and weight sharing in a recipe")
    in_shape = tuple(ctx.splits.info.in_shape)
    graph = trace(model, in_shape)
    groups = channel_groups(model, graph)
    unknown = sorted(set(config.layers) - {g.root for g in groups})
    if unknown:
        raise CnnzipError(f"channels: no prunable group rooted at {', '.join(unknown)}; groups "
                          f"are {', '.join(g.root for g in groups)}")
    grads, active = _data_stats(model, groups, config, ctx)
    scores = {g.root: group_scores(g, config, grads, active) for g in groups}
    removals = plan_removals(model, scores, config, in_shape)
    before = {g.root: g.channels for g in groups}
    ctx.channel_plan.extend(remove_channels(model, graph, removals))
    ctx.notes["channels"] = {
        "criterion": config.criterion.value, "allocation": config.allocation.value,
        "target_macs": config.target_macs, "target_params": config.target_params,
        "groups": {root: {"channels": before[root], "removed": len(idxs),
                          "ratio": len(idxs) / before[root]} for root, idxs in removals.items()}}
    finetune(model, ctx, epochs=config.epochs, lr=config.lr, description="retrain")
    return model
