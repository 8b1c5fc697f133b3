"""Channel importance for structured pruning: one score per channel of a coupled-channel group
(weight norms, the geometric median, Taylor, activation sparsity), from the group's members as
the model computes."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cnnzip.data import batches
from cnnzip.errors import CnnzipError
from cnnzip.graph import ChannelGroup, Role
from cnnzip.methods.base import Context
from cnnzip.modules.quant import QuantLayer
from cnnzip.ops import importance

if TYPE_CHECKING:
    from cnnzip.methods.channel import ChannelPrune


class Criterion(enum.Enum):
    L1 = "l1"  # L1 norm of the filters producing the channel
    L2 = "l2"  # L2 norm of the same
    BN = "bn"  # |BatchNorm scale| (network slimming); L2 for groups without BatchNorm
    TAYLOR = "taylor"  # first-order Taylor on a few training batches
    FPGM = "fpgm"  # distance from the layer's geometric median
    DIRECT_INDIRECT = "direct-indirect"  # own filters and the next layers' weights reading it
    APOZ = "apoz"  # 1 − average percentage of zeros after the channel's ReLU


def _weight_dim(member_role: Role) -> int:
    return 0 if member_role in (Role.OUT, Role.NORM) else 1


def _scatter(total: torch.Tensor, member, values: torch.Tensor) -> None:
    idxs = torch.tensor(member.idxs, dtype=torch.long)
    roots = torch.tensor(member.root_idxs, dtype=torch.long)
    total.index_add_(0, roots, values[idxs].float())


def _readable(member) -> bool:
    """An "in" member whose weight has the group's channels along dim 1 (grouped convs do not)."""
    module = member.module
    return not (isinstance(module, nn.Conv2d) and module.groups > 1)


def _sum(group: ChannelGroup, role: Role, score) -> torch.Tensor:
    total = torch.zeros(group.channels)
    for member in group.of_role(role):
        if role is Role.IN and not _readable(member):
            continue
        _scatter(total, member, score(member))
    return total


def _data_stats(model: nn.Module, groups: list[ChannelGroup], config: ChannelPrune,
                ctx: Context) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Weight gradients (taylor) or per-channel active fractions (apoz) on training batches,
    by layer name (a quantized model runs quantized; its gradients are the latent weights')."""
    grads: dict[str, torch.Tensor] = {}
    active: dict[str, torch.Tensor] = {}
    if config.criterion not in (Criterion.TAYLOR, Criterion.APOZ):
        return grads, active
    modules = dict(model.named_modules())
    hooks = []
    if config.criterion is Criterion.APOZ:
        for group in groups:
            watched = group.of_role(Role.NORM) or group.of_role(Role.OUT)
            for member in watched:
                def hook(module, inputs, output, name=member.name):
                    fraction = importance.active_fraction(output)
                    active[name] = active.get(name, 0) + fraction / config.batches
                hooks.append(modules[member.name].register_forward_hook(hook))
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
        for name, module in modules.items():
            weight = module.latent if isinstance(module, QuantLayer) \
                else getattr(module, "weight", None)
            if isinstance(weight, nn.Parameter) and weight.grad is not None:
                grads[name] = weight.grad.detach().clone()
        model.zero_grad(set_to_none=True)
    return grads, active


def group_scores(group: ChannelGroup, config: ChannelPrune,
                 grads: dict[str, torch.Tensor] | None = None,
                 active: dict[str, torch.Tensor] | None = None,
                 weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """One importance score per channel of ``group`` (higher: keep); ``weights`` by layer name
    stand in for the members' own (a quantized model's rounded weights)."""
    c = config.criterion
    weights = weights or {}
    weight = lambda m: weights[m.name] if m.name in weights else m.module.weight  # noqa: E731
    if c is Criterion.L1:
        return _sum(group, Role.OUT, lambda m: importance.lp_norm(weight(m), 0, 1))
    if c is Criterion.BN and group.of_role(Role.NORM):
        return _sum(group, Role.NORM, lambda m: weight(m).detach().abs())
    if c in (Criterion.L2, Criterion.BN):
        return _sum(group, Role.OUT, lambda m: importance.lp_norm(weight(m), 0, 2))
    if c is Criterion.FPGM:
        return _sum(group, Role.OUT, lambda m: importance.geometric_median_distance(weight(m)))
    if c is Criterion.DIRECT_INDIRECT:
        direct = importance.normalized(
            _sum(group, Role.OUT, lambda m: importance.lp_norm(weight(m), 0, 2)))
        indirect = _sum(group, Role.IN, lambda m: importance.lp_norm(weight(m), 1, 2))
        if not indirect.any():
            return direct
        a = config.indirect_weight
        return (1 - a) * direct + a * importance.normalized(indirect)
    if c is Criterion.TAYLOR:
        grads = grads or {}
        total = torch.zeros(group.channels)
        for member in group.members:
            if member.name in grads and (member.role is not Role.IN or _readable(member)):
                dim = _weight_dim(member.role)
                _scatter(total, member, importance.taylor(weight(member), grads[member.name], dim))
        return total
    if c is Criterion.APOZ:
        active = active or {}
        watched = [m for m in (group.of_role(Role.NORM) or group.of_role(Role.OUT))
                   if m.name in active]
        total = torch.zeros(group.channels)
        for member in watched:
            _scatter(total, member, active[member.name])
        return total / max(1, len(watched))
    raise CnnzipError(f"channels: criterion {c.value!r} is not implemented")


def score_groups(model: nn.Module, groups: list[ChannelGroup], config: ChannelPrune,
           ctx: Context) -> dict[str, torch.Tensor]:
    """Every group's scores, one per unit (the mean of its channels'); a quantized model is
    scored as it computes: with its rounded weights and, for the data-driven criteria, its
    quantized feature maps."""
    grads, active = _data_stats(model, groups, config, ctx)
    weights = {name: m.weight.detach() for name, m in model.named_modules()
               if isinstance(m, QuantLayer)}
    scores = {}
    for g in groups:
        s = group_scores(g, config, grads, active, weights)
        scores[g.root] = torch.stack([s[list(u)].mean() for u in g.units])
    return scores
