"""The integer-only reference: what a quantized layer computes with integers alone, in numpy.

A :class:`~cnnzip.modules.quant.QuantLayer` with quantized inputs is lowered to an
:class:`IntLayer`: its weight integers, an int32 bias on the accumulator's scale (input scale
× the channel's weight scale), and per output channel a Q31 multiplier and shift that take the
accumulator to the next tensor's grid (:mod:`cnnzip.ops.intmath`, rounded as CMSIS-NN does),
then the zero point, then a clamp that also performs a following ReLU. Everything after
lowering is integer arithmetic: the convolution runs in float64 on integer values, which is
exact while every sum stays below 2^53 (checked), and the generated C will compute the same
integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnzip.errors import CnnzipError
from cnnzip.modules import FlatLinear, QuantLayer
from cnnzip.ops.intmath import quantize_multiplier, requantize, round_half_away

EXACT = 2.0 ** 53  # float64 holds every integer up to here


class ReferenceError(CnnzipError):
    """A layer the integer reference does not lower."""


@dataclass(frozen=True)
class IntLayer:
    """A conv or linear layer in integers only.

    Attributes:
        kind: "conv" or "linear" (``flatten``: a linear layer that flattens its input first).
        weight: the weight's integers, (out, in/groups, kh, kw) or (out, in).
        bias: int32 per output channel, on the accumulator's scale.
        in_zero: the input's zero point (subtracted before multiplying).
        multiplier, shift: per output channel, accumulator → output grid.
        out_zero: the output's zero point.
        lo, hi: the output clamp (lo is the zero point when a ReLU follows).
        stride, padding, groups: of a convolution.
    """

    kind: str
    weight: np.ndarray
    bias: np.ndarray
    in_zero: int
    multiplier: np.ndarray
    shift: np.ndarray
    out_zero: int
    lo: int
    hi: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    flatten: bool = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Output integers of a batch of input integers (batch first)."""
        acc = self.accumulate(x)
        shape = (1, -1) + (1,) * (acc.ndim - 2)
        out = requantize(acc, self.multiplier.reshape(shape), self.shift.reshape(shape))
        return np.clip(out + self.out_zero, self.lo, self.hi)

    def accumulate(self, x: np.ndarray) -> np.ndarray:
        """The int32 accumulators: Σ weight · (input − input zero point) + bias."""
        centred = torch.from_numpy(np.asarray(x, np.float64) - self.in_zero)
        weight = torch.from_numpy(self.weight.astype(np.float64))
        bound = float(np.abs(self.weight).reshape(len(self.weight), -1).sum(1).max()) \
            * float(centred.abs().max()) if centred.numel() else 0.0
        if bound + float(np.abs(self.bias).max()) >= min(EXACT, 2.0 ** 31):
            raise ReferenceError("an accumulator could leave int32")
        if self.kind == "conv":
            acc = F.conv2d(centred, weight, stride=self.stride, padding=self.padding,
                           groups=self.groups)
        else:
            acc = F.linear(centred.flatten(1) if self.flatten else centred, weight)
        bias = self.bias.reshape((1, -1) + (1,) * (acc.dim() - 2))
        return acc.numpy().astype(np.int64) + bias


def lower(layer: QuantLayer, out_scale: float, out_zero: int, out_bits: int, *,
          relu: bool = False, name: str = "layer") -> IntLayer:
    """The integer form of ``layer`` whose output goes to a grid of ``out_bits`` unsigned bits
    with ``out_scale`` and ``out_zero`` (the next layer's input grid), a ReLU fused if asked.

    Raises:
        ReferenceError: a layer without quantized inputs, or of a kind not lowered yet.
    """
    if layer.a_grid is None:
        raise ReferenceError(f"{name}: its inputs are float; quantize them (act_bits) first")
    inner = layer.layer
    if type(inner) not in (nn.Conv2d, nn.Linear, FlatLinear):
        raise ReferenceError(f"{name}: a quantized {type(inner).__name__} is not lowered yet")
    in_scale = float(layer.a_scale.detach())
    w_scale = layer.w_scale.detach().double().numpy().reshape(-1)
    codes = layer.codes().numpy().astype(np.int64)
    w_scale = np.broadcast_to(w_scale, (codes.shape[0],)).copy()
    acc_scale = in_scale * w_scale
    bias = inner.bias.detach().double().numpy() if inner.bias is not None \
        else np.zeros(codes.shape[0])
    multiplier, shift = quantize_multiplier(acc_scale / out_scale)
    hi = (1 << out_bits) - 1
    common = dict(weight=codes, bias=round_half_away(bias / acc_scale),
                  in_zero=int(layer.a_zero.item()), multiplier=multiplier, shift=shift,
                  out_zero=int(out_zero), lo=int(out_zero) if relu else 0, hi=hi)
    if isinstance(inner, nn.Conv2d):
        return IntLayer("conv", stride=tuple(inner.stride), padding=tuple(inner.padding),
                        groups=inner.groups, **common)
    return IntLayer("linear", flatten=isinstance(inner, FlatLinear), **common)
