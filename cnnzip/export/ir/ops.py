"""The integer operations of the reference (:mod:`cnnzip.export.ir.lower`), defined once in
numpy: a lowered conv or linear layer (:class:`IntLayer`: weight integers, an int32 bias on the
accumulator's scale, per output channel a Q31 multiplier and shift rounded as CMSIS-NN does,
the zero point, a clamp that performs a following ReLU), the classifier's int32 logits, max and
average pooling, rescaling, the residual add, concatenation, ReLU, flatten, and the node list
that runs them in order. The generated C computes the same integers.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnzip.errors import CnnzipError
from cnnzip.modules import FlatLinear, QuantLayer
from cnnzip.modules.merged import ConvMaxPool
from cnnzip.ops.intmath import (INT32_MAX, INT32_MIN, quantize_multiplier, requantize,
                                round_half_away)


class LoweringError(CnnzipError):
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
        w_scale: per output channel, the real value of one weight step (the accumulator's
            step is the input's scale times it; a channel whose weights are all zero counts
            its bias on the output's scale, and this is that scale over the input's).
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
    w_scale: np.ndarray | None = None

    is_logits = False  # the classifier (Logits) writes int32

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
        if bound + float(np.abs(self.bias).max()) >= 2.0 ** 31:
            raise LoweringError("an accumulator could leave int32")
        if self.kind == "conv":
            acc = F.conv2d(centred, weight, stride=self.stride, padding=self.padding,
                           groups=self.groups)
        else:
            acc = F.linear(centred.flatten(1) if self.flatten else centred, weight)
        bias = self.bias.reshape((1, -1) + (1,) * (acc.dim() - 2))
        return acc.numpy().astype(np.int64) + bias


def lower(layer: QuantLayer, out_scale: float, out_zero: int, out_bits: int, *,
          relu: bool = False, cap: float | None = None, name: str = "layer") -> IntLayer:
    """The integer form of ``layer`` whose output goes to a grid of ``out_bits`` unsigned bits
    with ``out_scale`` and ``out_zero`` (the next layer's input grid), a ReLU fused if asked,
    and with ``cap`` also the clamp at that value (ReLU6: the grid point nearest 6).

    Raises:
        LoweringError: a layer without quantized inputs, or of a kind not lowered yet.
    """
    if layer.a_grid is None:
        raise LoweringError(f"{name}: its inputs are float; quantize them (act_bits) first")
    inner = layer.layer
    if type(inner) not in (nn.Conv2d, nn.Linear, FlatLinear, ConvMaxPool):
        raise LoweringError(f"{name}: a quantized {type(inner).__name__} is not lowered yet")
    if isinstance(inner, ConvMaxPool) and inner.act is not None \
            and type(inner.act) is not nn.ReLU:
        raise LoweringError(f"{name}: a merged convolution with a {type(inner.act).__name__} "
                             "before its pooling is not lowered yet")
    codes = layer.codes().numpy().astype(np.int64)
    acc_scale = _acc_scale(layer).copy()
    # a channel whose weights are all zero outputs its bias: count it on the output's scale
    # (its own weight scale may be vanishingly small and the bias would leave int32)
    acc_scale[~codes.reshape(len(codes), -1).any(1)] = out_scale
    bias = inner.bias.detach().double().numpy() if inner.bias is not None \
        else np.zeros(codes.shape[0])
    multiplier, shift = quantize_multiplier(acc_scale / out_scale)
    hi = (1 << out_bits) - 1
    if cap is not None:
        hi = min(hi, int(out_zero) + int(round(cap / out_scale)))
    common = dict(weight=codes, bias=round_half_away(bias / acc_scale),
                  in_zero=int(layer.a_zero.item()), multiplier=multiplier, shift=shift,
                  out_zero=int(out_zero), lo=int(out_zero) if relu else 0, hi=hi,
                  w_scale=acc_scale / float(layer.a_scale.detach()))
    if isinstance(inner, nn.Conv2d):
        return IntLayer("conv", stride=tuple(inner.stride), padding=tuple(inner.padding),
                        groups=inner.groups, **common)
    return IntLayer("linear", flatten=isinstance(inner, FlatLinear), **common)


def _acc_scale(layer: QuantLayer) -> np.ndarray:
    """Per output channel, the real value of one accumulator step: input scale × weight
    scale."""
    w_scale = layer.w_scale.detach().double().numpy().reshape(-1)
    return float(layer.a_scale.detach()) * np.broadcast_to(w_scale, (layer.latent.shape[0],))


@dataclass(frozen=True)
class MaxPool:
    """Max pooling, on integers (it commutes with the monotone requantization before it) or on
    floats."""

    kernel: tuple[int, int]
    stride: tuple[int, int]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        t = torch.from_numpy(x.astype(np.float64))
        return F.max_pool2d(t, self.kernel, self.stride).numpy().astype(x.dtype)


@dataclass(frozen=True)
class Flatten:
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)


@dataclass(frozen=True)
class IntModel:
    """A quantized CNN in integers: input integers in, int32 logits out.

    Attributes:
        in_scale, in_zero, in_bits: the input grid (what the caller quantizes its images onto).
        nodes: the integer operations (:class:`Node`) in an order that computes each input
            before it is read; the last is the classifier, whose outputs are int32 logits on
            the common scale ``logit_scale`` (or, lowered with 8-bit logits, integers on the
            classifier's output grid, ``grids[-1]``).
        grids: per node, the grid of its output (the classifier's int32 logits: its input's).
    """

    in_scale: float
    in_zero: int
    in_bits: int
    nodes: tuple
    logit_scale: float
    grids: tuple = ()

    def quantize_input(self, images: torch.Tensor) -> np.ndarray:
        """Images (normalised floats) → the first layer's input integers, computed as the
        fake-quantized model computes them (float32 division, halves to even)."""
        scale = torch.tensor(self.in_scale, dtype=torch.float32)
        q = torch.round(images.float() / scale) + self.in_zero
        return q.clamp(0, (1 << self.in_bits) - 1).numpy().astype(np.int64)

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        return run_nodes(self.nodes, codes)


SKIPPED = (nn.Identity, nn.Dropout)
RELUS = (nn.ReLU,)
RELU6_CAP = 6.0


@dataclass(frozen=True)
class Grid:
    """An integer tensor's grid: real value = scale · (integer − zero), integers in
    [0, 2^bits)."""

    scale: float
    zero: int
    bits: int

    @property
    def hi(self) -> int:
        return (1 << self.bits) - 1


def layer_grid(layer: QuantLayer, which: str) -> Grid:
    if which == "in":
        return Grid(float(layer.a_scale.detach()), int(layer.a_zero.item()), layer.act_bits)
    return Grid(float(layer.o_scale.detach()), int(layer.o_zero.item()), layer.out_bits)


def rescaler(src: Grid, dst: Grid) -> tuple[np.ndarray, np.ndarray]:
    return quantize_multiplier(src.scale / dst.scale)


@dataclass(frozen=True)
class Rescale:
    """An integer tensor moved to another grid: (x − in_zero) · in/out scale + out_zero,
    clamped to [lo, hi] (lo: the zero point where a ReLU is fused)."""

    in_zero: int
    multiplier: int
    shift: int
    out_zero: int
    lo: int
    hi: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.requantized(np.asarray(x, np.int64) - self.in_zero)

    def requantized(self, acc: np.ndarray) -> np.ndarray:
        """``acc`` (zero point removed) on the output grid, clamped."""
        out = requantize(acc, self.multiplier, self.shift)
        return np.clip(out + self.out_zero, self.lo, self.hi)


ADD_SHIFT = 20  # inputs are shifted left by this before their rescaling (TFLite's add)


@dataclass(frozen=True)
class Add:
    """Residual add of two integer tensors on their own grids (TensorFlow Lite's integer add):
    each input, zero point removed and shifted left by :data:`ADD_SHIFT`, is rescaled to twice
    the larger input scale, the two are summed, and the sum is requantized to the output grid
    and clamped (a following ReLU fused)."""

    zeros: tuple[int, int]
    multipliers: tuple[int, int]
    shifts: tuple[int, int]
    out_multiplier: int
    out_shift: int
    out_zero: int
    lo: int
    hi: int

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        total = 0
        for x, zero, m, s in zip((a, b), self.zeros, self.multipliers, self.shifts):
            total = total + requantize((np.asarray(x, np.int64) - zero) << ADD_SHIFT, m, s)
        out = requantize(total, self.out_multiplier, self.out_shift) + self.out_zero
        return np.clip(out, self.lo, self.hi)


def add_node(a: Grid, b: Grid, out: Grid, relu: bool) -> Add:
    twice = 2 * max(a.scale, b.scale)
    (ma, sa), (mb, sb) = (quantize_multiplier(g.scale / twice) for g in (a, b))
    mo, so = quantize_multiplier(twice / (out.scale * 2 ** ADD_SHIFT))
    return Add((a.zero, b.zero), (int(ma[0]), int(mb[0])), (int(sa[0]), int(sb[0])),
               int(mo[0]), int(so[0]), out.zero, out.zero if relu else 0, out.hi)


@dataclass(frozen=True)
class GlobalAvgPool(Rescale):
    """The mean over height and width: Σ (x − in_zero) requantized by in scale / (out scale ·
    H·W) to the output grid, the multiplier derived as TensorFlow Lite's MEAN derives it
    (:func:`cnnzip.ops.intmath.mean_multiplier`; ``keepdim``: output N×C×1×1, else N×C)."""

    keepdim: bool = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.requantized((np.asarray(x, np.int64) - self.in_zero)
                                .sum((2, 3), keepdims=self.keepdim))


@dataclass(frozen=True)
class Concat:
    """Channel concatenation of tensors already on one grid."""

    def __call__(self, *parts: np.ndarray) -> np.ndarray:
        return np.concatenate(parts, 1)


@dataclass(frozen=True)
class Relu:
    """A ReLU that could not be fused into its producer: the clamp at the zero point."""

    zero: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, self.zero)


@dataclass(frozen=True)
class Node:
    """One operation of an integer or float model and the tensors it reads: -1 is the model's
    input, k the output of node k; ``name``: the model's layer or operation it computes."""

    op: object
    inputs: tuple[int, ...]
    name: str = ""


def run_nodes(nodes: tuple[Node, ...], x: np.ndarray) -> np.ndarray:
    """Every node in order; the last one's output."""
    values: dict[int, np.ndarray] = {-1: x}
    for k, node in enumerate(nodes):
        values[k] = node.op(*(values[i] for i in node.inputs))
    return values[len(nodes) - 1]



@dataclass(frozen=True)
class Logits(IntLayer):
    """The classifier: int32 logits on one scale for every class (so the largest is top-1)."""

    logit_scale: float = 1.0

    is_logits = True

    def __call__(self, x: np.ndarray) -> np.ndarray:
        acc = self.accumulate(x)
        return requantize(acc, self.multiplier[None, :], self.shift[None, :])


def lower_logits(layer: QuantLayer, name: str) -> Logits:
    """The last layer: accumulators on per-channel scales brought to the largest of them (a
    factor ≤ 1 each, so nothing overflows), the bias on the same scale."""
    if not isinstance(layer.layer, (nn.Linear, nn.Conv2d)) or isinstance(layer.layer, ConvMaxPool):
        raise LoweringError(f"{name}: the classifier must be a plain conv or linear layer")
    common = float(_acc_scale(layer).max())
    layer_on_common = lower(layer, common, 0, 8, name=name)
    kept = {f.name: getattr(layer_on_common, f.name) for f in fields(IntLayer)}
    return Logits(**{**kept, "lo": INT32_MIN, "hi": INT32_MAX}, logit_scale=common)
