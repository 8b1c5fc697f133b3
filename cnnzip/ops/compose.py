"""Composing consecutive linear operations into one: the math behind exact layer merging.

Two affine maps with nothing nonlinear between them are one affine map. For fully connected
layers that is a matrix product; for convolutions the kernels compose into a larger kernel
with the product of the strides (exact when the second convolution reads no padding), and an
average pooling is a convolution with a constant kernel.
"""

from __future__ import annotations

import torch

Pair = tuple[int, int]


def compose_linear(w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                   b2: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``x ↦ W2 (W1 x + b1) + b2`` as one layer: (out2, in1) and (out2,)."""
    weight = w2 @ w1
    bias = w2 @ b1 if b1 is not None else weight.new_zeros(w2.shape[0])
    if b2 is not None:
        bias = bias + b2
    return weight, bias


def compose_conv(w1: torch.Tensor, b1: torch.Tensor | None, stride1: Pair, w2: torch.Tensor,
                 b2: torch.Tensor | None, stride2: Pair) -> tuple[torch.Tensor, torch.Tensor, Pair]:
    """One convolution equal to conv2 ∘ conv1 (both dense, dilation 1, conv2 without padding).

    conv1's padding carries over unchanged. Output j of conv2 reads conv1 outputs
    ``j·s2 + t`` (t < k2), which read inputs ``(j·s2 + t)·s1 + i`` (i < k1), so the composed
    kernel has size ``k1 + (k2 − 1)·s1`` and stride ``s1·s2``, and its tap ``t·s1 + i`` sums
    ``W2[:, :, t] @ W1[:, :, i]`` over every (t, i) that lands there.

    Args:
        w1: (M, C, k1h, k1w); b1: (M,) or None; stride1: conv1's stride.
        w2: (O, M, k2h, k2w); b2: (O,) or None; stride2: conv2's stride.

    Returns:
        The kernel (O, C, kh, kw), the bias (O,) and the stride.
    """
    (s1h, s1w), (s2h, s2w) = stride1, stride2
    k1h, k1w = w1.shape[2:]
    k2h, k2w = w2.shape[2:]
    kh, kw = k1h + (k2h - 1) * s1h, k1w + (k2w - 1) * s1w
    kernel = w1.new_zeros(w2.shape[0], w1.shape[1], kh, kw)
    for th in range(k2h):
        for tw in range(k2w):
            tap = torch.einsum("om,mchw->ochw", w2[:, :, th, tw], w1)
            kernel[:, :, th * s1h:th * s1h + k1h, tw * s1w:tw * s1w + k1w] += tap
    bias = w2.sum((2, 3)) @ b1 if b1 is not None else w1.new_zeros(w2.shape[0])
    if b2 is not None:
        bias = bias + b2
    return kernel, bias, (s1h * s2h, s1w * s2w)


def average_kernel(channels: int, kernel: Pair, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The dense convolution kernel (channels, channels, kh, kw) of an average pooling."""
    kh, kw = kernel
    eye = torch.eye(channels, dtype=dtype)
    return eye[:, :, None, None].expand(channels, channels, kh, kw) / (kh * kw)
