"""Layers of merged networks: a nonlinearity on its way out (the blend that removes it gradually
during fine-tuning) and the linear layer over a flattened input that merged layers become."""

from __future__ import annotations

import copy

import torch
from torch import nn


class Linearizing(nn.Module):
    """``(1 − t)·nonlinear(x) + t·linear(x)``, with ``t`` raised from 0 to 1 while training.

    For a ReLU and the identity this is a leaky ReLU whose negative slope is ``t``; for a max
    pooling and the average pooling of the same window it moves from the maximum to the mean.
    At ``t = 1`` the module is exactly ``linear`` and can be merged into its neighbours.

    Args:
        nonlinear: the module being removed.
        linear: its linear counterpart (identity, average pooling).
    """

    def __init__(self, nonlinear: nn.Module, linear: nn.Module):
        super().__init__()
        if getattr(nonlinear, "inplace", False):  # it would overwrite the input linear reads
            nonlinear = copy.deepcopy(nonlinear)
            nonlinear.inplace = False
        self.nonlinear = nonlinear
        self.linear = linear
        self.register_buffer("t", torch.zeros(()))

    def set_progress(self, t: float) -> None:
        self.t.fill_(min(1.0, max(0.0, t)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = float(self.t)
        if t >= 1.0:
            return self.linear(x)
        if t <= 0.0:
            return self.nonlinear(x)
        return (1.0 - t) * self.nonlinear(x) + t * self.linear(x)


class FlatLinear(nn.Linear):
    """A linear layer over its input flattened from dimension 1: what a convolution or pooling,
    a flatten and a linear layer merge into."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))
