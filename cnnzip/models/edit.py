"""Helpers for the code that edits a model's module tree: tracing it and setting a module."""

from __future__ import annotations

import torch.fx
from torch import nn

from cnnzip.errors import ModelError


def symbolic(model: nn.Module, purpose: str) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace`` with a tracing failure reported as the model's."""
    try:
        return torch.fx.symbolic_trace(model)
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
