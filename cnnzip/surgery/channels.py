"""Remove channels for real: every coupled tensor is sliced, the result is a plain nn.Module."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from cnnzip.errors import ModelError
from cnnzip.graph import ChannelGroup, Role, dependency_graph
from cnnzip.modules import WEIGHT_LAYERS
from cnnzip.surgery.edits import ChannelsRemoved
from cnnzip.surgery.wrappers import plain_layers


def remove_channels(model: nn.Module, graph: tp.DependencyGraph,
                    removals: dict[str, list[int]] | tuple[tuple[str, tuple[int, ...]], ...],
                    rows: dict[str, list[int]] | None = None) -> ChannelsRemoved:
    """Remove, for each root layer, the listed output channels and everything coupled to them.

    Args:
        model: the model ``graph`` was traced from; changed in place.
        graph: its dependency graph.
        removals: root layer name → output channel indices to remove (at least one must stay).
        rows: when given, filled with the output rows each producing layer lost (what a
            quantized layer's per-channel scales must lose too).

    Returns:
        The edit; replaying it on a fresh model rebuilds the pruned architecture.

    Raises:
        ModelError: a root that is not a layer of ``model``, or indices out of range or
            leaving no channel.
    """
    items = removals.items() if isinstance(removals, dict) else removals
    edit = ChannelsRemoved(tuple((root, tuple(sorted({int(i) for i in idxs})))
                                for root, idxs in items if len(idxs)))
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    for root, idxs in edit.removed:
        layer = modules.get(root)
        pruner = graph.get_pruner_of_module(layer) if layer is not None else None
        channels = pruner.get_out_channels(layer) if pruner is not None else None
        if channels is None or min(idxs) < 0 or max(idxs) >= channels or len(idxs) >= channels:
            raise ModelError(f"cannot remove channels {min(idxs)}..{max(idxs)} ({len(idxs)}) of "
                             f"layer {root!r}: it has {channels} output channels and one must "
                             "remain")
        group = graph.get_pruning_group(layer, pruner.prune_out_channels, list(idxs))
        if rows is not None:
            for item in group.items:
                module = item.dep.target.module
                if module in names and graph.is_out_channel_pruning_fn(item.dep.handler) \
                        and isinstance(module, WEIGHT_LAYERS):
                    rows.setdefault(names[module], []).extend(item.idxs)
        group.prune(record_history=False)
    return edit


def replay_removal(model: nn.Module, edit: ChannelsRemoved, in_shape: tuple[int, ...]) -> None:
    """Remove ``edit``'s channels from a rebuilt model (quantized layers included: they are
    traced as their plain layers and keep the scales of the channels that remain)."""
    rows: dict[str, list[int]] = {}
    with plain_layers(model, rows):
        remove_channels(model, dependency_graph(model, in_shape), edit.removed, rows)


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
            if member.role is Role.IN or (recoverable and member.role is Role.NORM):
                continue
            rows = [i for i, r in zip(member.idxs, member.root_idxs) if r in channels]
            if not rows:
                continue
            module = member.module
            module.weight[rows] = 0
            if module.bias is not None:
                module.bias[rows] = 0
