"""Layers of merged networks: a nonlinearity on its way out (the blend that removes it gradually
during fine-tuning), the linear layer over a flattened input that merged layers become, and a
convolution with its max pooling merged in."""

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


class ConvMaxPool(nn.Conv2d):
    """A convolution, a non-decreasing activation and a max pooling merged into one layer.

    Each position of a P×Q pooling window is a phase: the convolution evaluated at one phase's
    positions only is a convolution of stride ``stride × pool_stride`` whose kernel is the
    original one shifted ``stride × phase`` inside a window ``stride × (P − 1)`` larger. All
    phases run as one convolution with P·Q times the output channels, the pooling is the
    maximum over them, and the activation, which commutes with a maximum, comes last. The
    result equals convolution → activation → max pooling exactly. The weight keeps the
    original kernel's shape (pruning, sharing and quantization see the original layer); the
    shifted copies are built from it on every call. The computed multiply-accumulates grow by
    the zero-padded kernel, ``((k + s(P − 1)) / k)²``; the gain, on runtimes where a
    full-resolution output costs more than its arithmetic, is measured, not assumed.

    Args: those of :class:`torch.nn.Conv2d` (groups and dilation 1, zero padding), and
        pool_kernel, pool_stride: the max pooling's window and stride (no padding).
        act: the activation between them (ReLU, ReLU6, LeakyReLU), or None.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int],
                 stride: tuple[int, int], padding: tuple[int, int], bias: bool,
                 pool_kernel: tuple[int, int], pool_stride: tuple[int, int],
                 act: nn.Module | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.pool_kernel = tuple(pool_kernel)
        self.pool_stride = tuple(pool_stride)
        self.act = act

    @property
    def phases(self) -> int:
        return self.pool_kernel[0] * self.pool_kernel[1]

    @property
    def phase_kernel_size(self) -> tuple[int, int]:
        """The kernel of one phase: the original, zero-padded by the window's shifts."""
        return tuple(k + s * (p - 1) for k, s, p in
                     zip(self.kernel_size, self.stride, self.pool_kernel))

    @property
    def phase_stride(self) -> tuple[int, int]:
        """The stride of one phase's convolution: the convolution's times the pooling's."""
        return tuple(s * t for s, t in zip(self.stride, self.pool_stride))

    def expand(self, weight: torch.Tensor) -> torch.Tensor:
        """The kernel of every phase, stacked along the output channels (phase-major)."""
        (p, q), (sh, sw) = self.pool_kernel, self.stride
        return torch.cat([torch.nn.functional.pad(
            weight, (sw * j, sw * (q - 1 - j), sh * i, sh * (p - 1 - i)))
            for i in range(p) for j in range(q)])

    def expand_bias(self, bias: torch.Tensor) -> torch.Tensor:
        return bias.repeat(self.phases)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        y = torch.nn.functional.conv2d(x, self.expand(weight),
                                       None if bias is None else self.expand_bias(bias),
                                       self.phase_stride, self.padding)
        y = y.unflatten(1, (self.phases, self.out_channels)).amax(1)
        return y if self.act is None else self.act(y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pool_kernel={self.pool_kernel}, " \
               f"pool_stride={self.pool_stride}"
