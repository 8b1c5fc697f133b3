"""Tracing and removing channels on Torch-Pruning's dependency graph: the one routine behind
both structured pruning and rebuilding a pruned architecture from its channel plan."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from cnnzip.errors import ModelError

PlanEntry = tuple[str, bool, tuple[int, ...]]


def trace(model: nn.Module, in_shape: tuple[int, ...]) -> tp.DependencyGraph:
    """Trace ``model`` (in eval mode) on a zero input of ``in_shape`` into a dependency graph."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, torch.zeros(1, *in_shape),
                                                         verbose=False)
    except Exception as exc:  # tracing runs the user's forward: report it as the model's
        raise ModelError(f"cannot trace the model for structured pruning: "
                         f"{type(exc).__name__}: {exc}") from None
    finally:
        model.train(was_training)


def prune_channels(model: nn.Module, graph: tp.DependencyGraph, plan: list[PlanEntry]) -> None:
    """Remove each entry's output channels of its root layer and everything coupled to them.

    Raises:
        ModelError: a root that is not a layer of ``model``, or indices out of range or
            leaving no channel.
    """
    modules = dict(model.named_modules())
    for root, _, idxs in plan:
        layer = modules.get(root)
        pruner = graph.get_pruner_of_module(layer) if layer is not None else None
        channels = pruner.get_out_channels(layer) if pruner is not None else None
        if channels is None or not idxs or min(idxs) < 0 or max(idxs) >= channels \
                or len(set(idxs)) >= channels:
            raise ModelError(f"cannot remove channels {min(idxs, default=None)}.."
                             f"{max(idxs, default=None)} ({len(idxs)}) of layer {root!r}: "
                             f"it has {channels} output channels and one must remain")
        graph.get_pruning_group(layer, pruner.prune_out_channels, list(idxs)).prune(
            record_history=False)
