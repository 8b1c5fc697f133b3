"""Remove channels for real: every coupled tensor is sliced, the result is a plain nn.Module."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from cnnzip.graph import ChannelGroup

from cnnzip.models.channels import PlanEntry, prune_channels


def remove_channels(model: nn.Module, graph: tp.DependencyGraph,
                    removals: dict[str, list[int]]) -> list[PlanEntry]:
    """Remove, for each root layer, the listed output channels and everything coupled to them.

    Args:
        model: the model ``graph`` was traced from; changed in place.
        graph: its dependency graph.
        removals: root layer name → output channel indices to remove (at least one must stay).

    Returns:
        The plan entries (root, True, indices) in the order applied; replaying them on a fresh
        model (``ModelSpec.channel_plan``) rebuilds the pruned architecture.
    """
    plan = [(root, True, tuple(sorted({int(i) for i in idxs})))
            for root, idxs in removals.items() if idxs]
    prune_channels(model, graph, plan)
    return plan


def silence_channels(group: ChannelGroup, channels: set[int] | list[int], *,
                     recoverable: bool = False) -> None:
    """Zero what produces ``channels`` (root indices) of ``group``, so they carry nothing.

    The weights and biases of the producing layers and the scales and shifts of their
    BatchNorms are zeroed: in eval mode the channels are then exactly zero, and removing them
    leaves the outputs unchanged. ``recoverable`` zeroes only the producing layers and leaves
    the BatchNorms alone, so (as in soft filter pruning) gradients still reach the zeroed filters
    wherever the BatchNorm's shift keeps the following ReLU open, and training can revive them;
    the channels then carry a constant, dropped when they are finally silenced and removed.
    """
    channels = set(channels)
    with torch.no_grad():
        for member in group.members:
            if member.role == "in" or (recoverable and member.role == "norm"):
                continue
            rows = [i for i, r in zip(member.idxs, member.root_idxs) if r in channels]
            if not rows:
                continue
            module = member.module
            module.weight[rows] = 0
            if module.bias is not None:
                module.bias[rows] = 0
