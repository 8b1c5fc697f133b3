"""Remove channels for real: every coupled tensor is sliced, the result is a plain nn.Module."""

from __future__ import annotations

import torch_pruning as tp
from torch import nn

from cnnzip.errors import ModelError


def remove_channels(model: nn.Module, graph: tp.DependencyGraph,
                    removals: dict[str, list[int]]) -> list[tuple[str, bool, tuple[int, ...]]]:
    """Remove, for each root layer, the listed output channels and everything coupled to them.

    Args:
        model: the model ``graph`` was traced from; changed in place.
        graph: its dependency graph.
        removals: root layer name → output channel indices to remove (at least one must stay).

    Returns:
        The plan entries (root, True, indices) in the order applied; replaying them on a fresh
        model (``ModelSpec.channel_plan``) rebuilds the pruned architecture.
    """
    modules = dict(model.named_modules())
    plan = []
    for root, idxs in removals.items():
        if not idxs:
            continue
        layer = modules.get(root)
        if layer is None:
            raise ModelError(f"no layer named {root!r} to remove channels from")
        pruner = graph.get_pruner_of_module(layer)
        channels = pruner.get_out_channels(layer)
        idxs = sorted({int(i) for i in idxs})
        if idxs[0] < 0 or idxs[-1] >= channels or len(idxs) >= channels:
            raise ModelError(f"{root}: cannot remove {len(idxs)} of its {channels} channels "
                             "(indices out of range, or none would remain)")
        graph.get_pruning_group(layer, pruner.prune_out_channels, idxs).prune(
            record_history=False)
        plan.append((root, True, tuple(idxs)))
    return plan
