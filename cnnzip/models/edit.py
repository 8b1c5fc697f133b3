"""Helpers for the code that edits a model's module tree: tracing it and setting a module."""

from __future__ import annotations

import torch.fx
from torch import nn

from cnnzip.errors import ModelError
from cnnzip.modules.merged import ConvMaxPool


class _LeafTracer(torch.fx.Tracer):
    def __init__(self, leaves: tuple[type, ...]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def symbolic(model: nn.Module, purpose: str, *,
             leaves: tuple[type, ...] = ()) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace`` with a tracing failure reported as the model's; modules of
    the ``leaves`` types stay whole (one node) besides torch.nn's own and merged max poolings."""
    try:
        return torch.fx.GraphModule(model, _LeafTracer((*leaves, ConvMaxPool)).trace(model))
    except Exception as exc:  # tracing runs the user's forward: report it as the model's
        raise ModelError(f"cannot trace the model {purpose}: {type(exc).__name__}: {exc}") from None


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in ``model`` under the qualified ``name``."""
    parent, _, attr = name.rpartition(".")
    try:
        owner = model.get_submodule(parent) if parent else model
    except AttributeError:
        raise ModelError(f"the model has no module {parent!r} (to hold {name!r})") from None
    setattr(owner, attr, module)
