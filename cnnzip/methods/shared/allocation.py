"""Per-group pruning ratios from a budget: channels ranked across groups (by normalised scores,
a sensitivity scan, optionally per MAC), then the fewest taken in that order that meet the
MACs or parameter budget."""

from __future__ import annotations

import copy
import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from cnnzip import metrics
from cnnzip.errors import CnnzipError
from cnnzip.graph import ChannelGroup, Role, dependency_graph
from cnnzip.methods.base import Context
from cnnzip.methods.shared.calibration import calibration_images
from cnnzip.methods.shared.policy import PolicySearch, recalibrate_batchnorm, search_ratios
from cnnzip.ops import importance
from cnnzip.progress import progress_bar
from cnnzip.surgery import remove_channels, silence_channels
from cnnzip.train import divergence, evaluate, log_probabilities

if TYPE_CHECKING:
    from cnnzip.methods.channel import ChannelPrune


GIVE_BACK_TRIES = 8  # other groups' next units tried in place of the last unit removed


class Allocation(enum.Enum):
    UNIFORM = "uniform"  # the same fraction of every group
    GLOBAL = "global"  # one ranking of layer-normalised scores across the model
    ADAPTIVE = "adaptive"  # one ranking of scores normalised by layer and by model together
    SENSITIVITY = "sensitivity"  # one ranking of each channel's measured validation cost
    DDPG = "ddpg"  # per-group ratios from a DDPG agent (AMC)
    DDPG_SCALE = "ddpg-scale"  # a DDPG agent's per-group deviations about one global ratio

    @property
    def searched(self) -> bool:
        """Ratios come from a policy search (which needs a budget)."""
        return self in (Allocation.DDPG, Allocation.DDPG_SCALE)


class Cost(enum.Enum):
    """What a channel costs, for ``cost_weight``."""

    MACS = "macs"  # the multiply-accumulates it takes part in
    TIME = "time"  # its layers' time, measured in this process


class Measure(enum.Enum):
    """What the sensitivity scan measures of a group cut alone."""

    ACCURACY = "accuracy"  # the validation accuracy it loses
    KL = "kl"  # how far its predictions move: the mean KL divergence from the uncut model's


@dataclass(frozen=True)
class GroupScan:
    """The ``channels`` step's ``sensitivity:`` option group (allocation ``sensitivity``):
    how each group's cuts are measured.

    Attributes:
        ratios: the fractions of each group silenced, one group at a time, to measure the
            validation accuracy it costs.
        samples: validation samples per measurement.
        measure: what a cut costs: ``accuracy``, the validation accuracy it loses, or ``kl``,
            the mean KL divergence of the model's predictions from the uncut model's on the
            same samples (smooth: it also orders the cuts that change no sample's top-1 class,
            which the accuracy counts as free).
        bn_images: before each measurement, measure the BatchNorms' statistics again on this
            many training images (EagleEye's adaptive BatchNorm; 0: measure the cut with the
            statistics it leaves).
    """

    ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    samples: int = 2000
    measure: Measure = Measure.ACCURACY
    bn_images: int = 0

    def __post_init__(self) -> None:
        if not self.ratios or not all(0 < r < 1 for r in self.ratios):
            raise CnnzipError("sensitivity.ratios must be fractions in (0, 1); got "
                              f"{list(self.ratios)}")
        if self.samples < 1:
            raise CnnzipError(f"sensitivity.samples must be positive, got {self.samples}")
        if self.bn_images < 0:
            raise CnnzipError("sensitivity.bn_images is a count of training images, got "
                              f"{self.bn_images}")


def ranking_keys(model: nn.Module, groups: list[ChannelGroup], scores: dict[str, torch.Tensor],
                 config: ChannelPrune, ctx: Context) -> tuple[dict[str, torch.Tensor], dict]:
    """Per group, the keys by which channels are ranked across groups (lower goes first), and
    notes for the report (the sensitivity scan's drops)."""
    notes = {}
    if config.allocation is Allocation.SENSITIVITY:
        keys, notes["sensitivity"] = sensitivity_keys(model, groups, scores, config, ctx)
    elif config.allocation.searched:
        kind = "params" if config.target_params is not None else "macs"
        policy = config.policy
        search = PolicySearch(config.allocation.value, policy.episodes, policy.warmup,
                              policy.samples, policy.bn_images, policy.deviation, ctx.seed,
                              policy.finetune_images, config.lr)
        ratios, notes["policy"] = search_ratios(model, groups, scores, search, kind,
                                                config.target_params or config.target_macs,
                                                config.max_ratio, ctx)
        return ratio_keys(scores, ratios), notes
    else:
        keys = _score_keys(scores, config.allocation, config.global_weight)
    if config.cost_weight and config.allocation is not Allocation.UNIFORM:
        costs = channel_costs(model, groups, tuple(ctx.splits.info.in_shape), config.cost)
        if config.allocation is Allocation.SENSITIVITY:
            # a drop of 0 is one below the scan's resolution (one sample), not nothing: without
            # a floor every such channel would stay at 0 and ignore its cost
            floor = 0.5 / config.sensitivity.samples \
                if config.sensitivity.measure is Measure.ACCURACY else 1e-9
            keys = {root: k.clamp_min(floor) for root, k in keys.items()}
        keys = cost_weighted(keys, costs, config.cost_weight)
    return keys, notes


def _score_keys(scores: dict[str, torch.Tensor], allocation: Allocation,
                global_weight: float) -> dict[str, torch.Tensor]:
    """Keys from the scores alone (every allocation but sensitivity)."""
    if allocation is Allocation.UNIFORM:
        # rank within the group only: a channel's key is its quantile in its own group
        return {root: torch.argsort(torch.argsort(s)).float() / len(s)
                for root, s in scores.items()}
    local = {root: importance.normalized(s) for root, s in scores.items()}
    if allocation is Allocation.GLOBAL:
        return local
    everything = torch.cat(list(scores.values()))
    scale = everything.median().clamp_min(1e-12)
    g = global_weight
    return {root: local[root].clamp_min(1e-12) ** (1 - g) * (s / scale).clamp_min(1e-12) ** g
            for root, s in scores.items()}


def ratio_keys(scores: dict[str, torch.Tensor],
               ratios: dict[str, float]) -> dict[str, torch.Tensor]:
    """Keys that take each group's ``ratios[root]`` of units (lowest-scored first) by the time
    the global order reaches 1: the i-th lowest of n units is keyed (i + 1) / n / ratio, so
    a budget met at a different point scales every ratio by the same factor."""
    keys = {}
    for root, s in scores.items():
        n = len(s)
        rank = torch.argsort(torch.argsort(s, stable=True)).float()
        keys[root] = (rank + 1) / n / max(ratios[root], 1e-6)
    return keys


def sensitivity_keys(model: nn.Module, groups: list[ChannelGroup],
                     scores: dict[str, torch.Tensor], config: ChannelPrune,
                     ctx: Context) -> tuple[dict[str, torch.Tensor], dict[str, list[float]]]:
    """Ranking keys from a sensitivity scan: each group alone loses its lowest-scored
    ``sensitivity.ratios`` of channels (silenced, which is exact), and a channel's key is what
    the group's cut down to it costs (interpolated, non-decreasing): the validation accuracy
    lost (reaching the whole accuracy when every channel goes) or, by ``Measure.KL``, the
    predictions' divergence from the uncut model's (continued past the last ratio at its last
    slope); a divergence orders cuts that lose no sample's top-1 class. With
    ``sensitivity.bn_images``, every measurement (the uncut model's too) follows EagleEye's
    adaptive BatchNorm: the statistics measured again on that many training images, so a cut
    is judged as retraining would start from it, not by the stale statistics it leaves.
    Returns the keys and the scan's costs; the model is left as it came."""
    scan = config.sensitivity
    samples = scan.samples
    val, info = ctx.val_subset(samples), ctx.splits.info
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    bn_images = calibration_images(ctx, scan.bn_images) if scan.bn_images else None
    if bn_images is not None:  # the uncut model measured as every cut is: statistics re-measured
        recalibrate_batchnorm(model, bn_images, info)
    kl = scan.measure is Measure.KL
    reference = log_probabilities(model, val, info) if kl else None
    base = 0.0 if kl else evaluate(model, val, info)
    model.load_state_dict(saved)
    shown = "{:.3g} nats" if kl else "−{:.2%}"

    def measure() -> float:
        if bn_images is not None:
            recalibrate_batchnorm(model, bn_images, info)
        if kl:
            return divergence(model, val, info, reference)
        return base - evaluate(model, val, info)

    keys, table = {}, {}
    with progress_bar(disable=ctx.quiet) as bar:
        task = bar.add_task("sensitivity", total=len(groups) * len(scan.ratios),
                            status="")
        for group in groups:
            n = len(group.units)
            order = torch.argsort(scores[group.root], stable=True)
            fractions, drops = [0.0], [0.0]
            for ratio in sorted(scan.ratios):
                k = min(n - 1, max(1, int(round(ratio * n))))
                silence_channels(group, group.channels_of(order[:k].tolist()))
                drops.append(max(drops[-1], measure()))
                fractions.append(k / n)
                model.load_state_dict(saved)
                bar.update(task, advance=1, status=f"{group.root} {ratio:g}: "
                                                   + shown.format(drops[-1]))
            table[group.root] = drops[1:]
            if kl:
                slope = (drops[-1] - drops[-2]) / max(fractions[-1] - fractions[-2], 1e-12)
                end = drops[-1] + slope * (1.0 - fractions[-1])
            else:
                end = base
            fractions.append(1.0)
            drops.append(max(drops[-1], end))
            curve = np.interp(np.arange(1, n + 1) / n, fractions, drops)
            key = torch.empty(n)
            key[order] = torch.tensor(curve, dtype=torch.float32)
            keys[group.root] = key
    return keys, table


def channel_costs(model: nn.Module, groups: list[ChannelGroup], in_shape: tuple[int, ...],
                  measure: Cost = Cost.MACS) -> dict[str, torch.Tensor]:
    """What each unit of each group costs: the MACs it takes part in (the producing layers'
    share of its channels plus the reading layers' share of them) or, by ``Cost.TIME``, the
    same shares of those layers' and its BatchNorms' measured time, which also counts the
    feature-map traffic that MACs do not (a high-resolution layer's channel costs more time
    per MAC)."""
    if measure is Cost.TIME:
        per_layer = metrics.layer_times(model, in_shape, (nn.Conv2d, nn.Linear,
                                                          nn.modules.batchnorm._BatchNorm))
    else:
        per_layer = {s.name: s.macs for s in metrics.layer_stats(model, in_shape)}
    costs = {}
    for group in groups:
        total = 0.0
        for member in group.members:
            norm = member.role is Role.NORM
            if (norm and measure is Cost.MACS) or member.name not in per_layer:
                continue
            module, out = member.module, member.role is Role.OUT
            if norm:
                width = module.num_features
            elif isinstance(module, nn.Linear):
                width = module.out_features if out else module.in_features
            else:
                width = module.out_channels if out else module.in_channels
            total += per_layer[member.name] * len(member.idxs) / width
        costs[group.root] = torch.tensor([total * len(u) / group.channels for u in group.units])
    return costs


def cost_weighted(keys: dict[str, torch.Tensor], costs: dict[str, torch.Tensor],
                  power: float) -> dict[str, torch.Tensor]:
    """Keys divided by each channel's relative cost to ``power`` (importance per MAC)."""
    mean = torch.cat(list(costs.values())).mean().clamp_min(1e-12)
    return {root: k / (costs[root] / mean).clamp_min(1e-6) ** power for root, k in keys.items()}


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
              config: ChannelPrune, groups: dict[str, ChannelGroup]) -> dict[str, list[int]]:
    """The lowest-scored units of each group when the first ``count`` units of the global
    ``order`` go; each group keeps at least ``1 - max_ratio`` of its units, overrides win,
    and with ``round_to`` every group keeps a multiple of it in channels (rounded up) or all
    its channels."""
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
        size = len(groups[root].units[0])
        kept = _round_up(n - min(k, n - 1), config.round_to // math.gcd(config.round_to, size))
        out[root] = n - min(kept, n)
    return lowest(scores, out)


def _round_up(count: int, multiple: int) -> int:
    return -(-count // multiple) * multiple


def channels(groups: dict[str, ChannelGroup], units: dict[str, list[int]]) -> dict[str, list[int]]:
    """Units chosen per group (root name → unit indices) as the root channels they hold."""
    return {root: groups[root].channels_of(u) for root, u in units.items()}


def lowest(scores: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, list[int]]:
    """Each group's ``counts[root]`` lowest-scored channels."""
    return {root: torch.argsort(s, stable=True)[:counts[root]].tolist()
            for root, s in scores.items()}


def model_cost(model: nn.Module, in_shape: tuple[int, ...], kind: str) -> int:
    """The model's parameters (``kind`` "params") or MACs (anything else)."""
    return metrics.count_params(model) if kind == "params" else metrics.count_macs(model, in_shape)


def plan_removals(model: nn.Module, groups: list[ChannelGroup], scores: dict[str, torch.Tensor],
                  keys: dict[str, torch.Tensor], config: ChannelPrune,
                  in_shape: tuple[int, ...]) -> dict[str, list[int]]:
    """The fewest units, taken in the order of ``keys`` (:func:`ranking_keys`; ``scores`` and
    ``keys`` are per unit), whose removal meets the budget (bisection on the count, each
    candidate measured on a pruned copy); within a group the lowest-scored units go. Returns
    the unit indices per group (:func:`channels` turns them into channels)."""
    by_root = {g.root: g for g in groups}
    order = _order(keys)
    if config.target_macs is None and config.target_params is None:
        return _removals(scores, order, 0, config, by_root)
    kind = "params" if config.target_params is not None else "macs"
    fraction = config.target_params if kind == "params" else config.target_macs
    budget = fraction * model_cost(model, in_shape, kind)

    def cost(count: int, order: list[str] = order) -> int:
        trial = copy.deepcopy(model)
        remove_channels(trial, dependency_graph(trial, in_shape),
                        channels(by_root, _removals(scores, order, count, config, by_root)))
        return model_cost(trial, in_shape, kind)

    lo, hi = 0, len(order)
    reachable = hi_cost = cost(hi)
    if reachable > budget:
        rounding = f" and round_to={config.round_to}" if config.round_to > 1 else ""
        raise CnnzipError(f"channels: cannot keep {kind} within {fraction:g} of the model's: "
                          f"removing max_ratio={config.max_ratio} of every group{rounding} "
                          f"still leaves {reachable:,} of {budget / fraction:,.0f}; raise "
                          "max_ratio or the target")
    while lo < hi:  # the smallest count that meets the budget
        mid = (lo + hi) // 2
        value = cost(mid)
        if value <= budget:
            hi, hi_cost = mid, value
        else:
            lo = mid + 1
    return _removals(scores, _give_back(order, hi, hi_cost, budget, cost), hi, config,
                     by_root)


def _give_back(order: list[str], count: int, count_cost: int, budget: float,
               cost: Callable[[int, list[str]], int], tries: int = GIVE_BACK_TRIES) -> list[str]:
    """``order`` with its ``count``-th unit swapped for the next unit of another group when
    that meets the budget more closely than ``count_cost`` (the cost as ordered): a unit of a
    coarse group (a residual stream couples many layers) can cut far more than the budget
    needs, and a smaller one may do."""
    if count == 0:
        return order
    best, best_cost = order, count_cost
    last, tried = order[count - 1], set()
    for j in range(count, len(order)):
        root = order[j]
        if root == last or root in tried:
            continue
        tried.add(root)
        swapped = order[:count - 1] + [root] + order[count - 1:j] + order[j + 1:]
        value = cost(count, swapped)
        if best_cost < value <= budget:
            best, best_cost = swapped, value
        if len(tried) >= tries:
            break
    return best
