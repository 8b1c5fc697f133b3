"""Remove channels for real: every coupled tensor is sliced, the result is a plain nn.Module."""

from __future__ import annotations

import torch_pruning as tp
from torch import nn

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
