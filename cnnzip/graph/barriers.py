"""Reshapes that move channels (channel shuffle's view → transpose → view, pixel shuffle, a
permute of the channel dimension): structured pruning cannot follow their index mapping, so
they are found in the model's fx graph and stand in Torch-Pruning's dependency graph as
barriers: opaque nodes that couple their inputs' channels to their outputs' and may never be
pruned, so every group crossing one is left whole (and named).

A flatten to features (N, C·H·W), a reshape of the spatial dimensions alone and a transpose or
permute that keeps dimensions 0 and 1 in place keep channels where they are, and are left to
Torch-Pruning.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from cnnzip.errors import ModelError

RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "transpose", "permute", "movedim",
                   "swapaxes", "swapdims", "view_as", "reshape_as", "squeeze", "unsqueeze"}
RESHAPE_FUNCTIONS = {torch.reshape, torch.flatten, torch.transpose, torch.permute,
                     torch.movedim, torch.swapaxes, torch.unflatten, F.pixel_shuffle,
                     F.pixel_unshuffle, torch.pixel_shuffle, torch.pixel_unshuffle,
                     torch.channel_shuffle, torch.squeeze, torch.unsqueeze}
RESHAPE_MODULES = (nn.PixelShuffle, nn.PixelUnshuffle, nn.Flatten, nn.Unflatten,
                   nn.ChannelShuffle)


def _shape(value: Any) -> tuple[int, ...] | None:
    meta = value.meta.get("tensor_meta") if isinstance(value, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def op_name(node: torch.fx.Node) -> str:
    """The name of the method or function a node calls (``relu`` for ``F.relu`` and
    ``x.relu()`` alike); "" for other nodes."""
    if node.op == "call_method":
        return node.target
    return getattr(node.target, "__name__", "") if node.op == "call_function" else ""


def _is_reshape(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_method":
        return node.target in RESHAPE_METHODS
    if node.op == "call_function":
        return node.target in RESHAPE_FUNCTIONS
    return node.op == "call_module" and isinstance(modules.get(node.target), RESHAPE_MODULES)


def _permutation(node: torch.fx.Node, rank: int) -> list[int] | None:
    """Where a transpose or permute sends each dimension, when its arguments are constants."""
    name = op_name(node)
    args = list(node.args[1:])
    if not all(isinstance(a, int) for a in args) and not (
            len(args) == 1 and isinstance(args[0], (tuple, list))):
        return None
    if name in ("transpose", "swapaxes", "swapdims") and len(args) == 2:
        a, b = (d % rank for d in args)
        order = list(range(rank))
        order[a], order[b] = order[b], order[a]
        return order
    if name == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return [int(d) % rank for d in dims] if all(isinstance(d, int) for d in dims) else None
    return None


# splitting calls by name → the position of their ``dim`` argument (after the tensor)
SPLITS = {"split": 2, "chunk": 2, "tensor_split": 2, "split_with_sizes": 2, "unbind": 1}


def _splits_channels(node: torch.fx.Node) -> bool:
    """A split, chunk or slice of dimension 1: its sizes are constants of the model's code,
    which removing channels before it would invalidate."""
    position = SPLITS.get(op_name(node))
    if position is not None:
        dim = node.kwargs.get("dim", node.args[position] if len(node.args) > position else 0)
        rank = len(_shape(node.args[0]) or (0, 0))
        return isinstance(dim, int) and dim % max(rank, 1) == 1
    if node.op == "call_function" and node.target is operator.getitem \
            and _shape(node.args[0]) is not None:
        index = node.args[1]
        return isinstance(index, tuple) and len(index) > 1 and index[1] != slice(None)
    return False


def moves_channels(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether a node changes which position along dimension 1 a channel is at, or splits
    the channels by counts written in the model's code."""
    if _splits_channels(node):
        return True
    if not _is_reshape(node, modules):
        return False
    source = node.args[0] if node.args else None
    before, after = _shape(source), _shape(node)
    if before is None or after is None:
        return True  # shapes unknown: assume the worst
    if len(before) < 3:
        return before != after  # (N, F) features: only a change of shape matters
    order = _permutation(node, len(before)) if len(before) == len(after) else None
    if order is not None:
        return order[:2] != [0, 1]
    if after == before or after[:2] == before[:2]:
        return False  # no change, or only the spatial dimensions regrouped
    return not (len(after) == 2 and after[1] == math.prod(before[1:]))  # flatten to features


class _Opaque(torch.autograd.Function):
    """Applies ``fn`` out of autograd's sight: the dependency graph, which follows autograd's
    graph, sees one node from the input to the output."""

    @staticmethod
    def forward(ctx, x, fn):  # noqa: ARG004 (autograd's signature)
        out = fn(x)
        return tuple(t.clone() for t in out) if isinstance(out, (tuple, list)) else out.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: ARG004
        raise RuntimeError("a channel barrier is for tracing only")


class Barrier(nn.Module):
    """One channel-moving reshape of the traced model, as a module the dependency graph sees
    whole. ``node`` (the fx node's name) names it in messages."""

    def __init__(self, node: str, op: Any, in_channels: int, out_channels: int):
        super().__init__()
        self.node, self.op = node, op
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x, *rest, **kwargs):
        return _Opaque.apply(x, lambda t: self.op(t, *rest, **kwargs))


class _BarrierPruner(tp.pruner.BasePruningFunc):
    """Never pruned; its input and output channels are one (the same pruning function)."""

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        raise ModelError(f"channels crossing the reshape {layer.node!r} cannot be removed")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels


BARRIER_PRUNERS = {Barrier: _BarrierPruner()}


def _operation(node: torch.fx.Node, modules: dict[str, nn.Module]) -> Any:
    if node.op == "call_method":
        return lambda t, *a, **k: getattr(t, node.target)(*a, **k)
    if node.op == "call_module":
        return modules[node.target]
    return node.target


def with_barriers(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, list[Barrier]]:
    """``gm`` (traced with shapes) with every channel-moving reshape replaced by a
    :class:`Barrier` call; the modules are ``gm``'s own. Returns it and the barriers."""
    modules = dict(gm.named_modules())
    barriers = []
    for node in list(gm.graph.nodes):
        if not moves_channels(node, modules):
            continue
        before = _shape(node.args[0]) or (1, 1)
        after = _shape(node) or before  # a split's parts: counted as its input
        barrier = Barrier(node.name, _operation(node, modules), before[1] if len(before) > 1 else 1,
                          after[1] if len(after) > 1 else 1)
        name = f"_cnnzip_barrier_{len(barriers)}"
        gm.add_module(name, barrier)
        with gm.graph.inserting_after(node):
            call = gm.graph.call_module(name, (node.args[0], *node.args[1:]), dict(node.kwargs))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        barriers.append(barrier)
    if barriers:
        gm.recompile()
    return gm, barriers
