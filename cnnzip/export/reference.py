"""The integer-only reference: what a quantized layer computes with integers alone, in numpy.

A :class:`~cnnzip.modules.quant.QuantLayer` with quantized inputs is lowered to an
:class:`IntLayer`: its weight integers, an int32 bias on the accumulator's scale (input scale
× the channel's weight scale), and per output channel a Q31 multiplier and shift that take the
accumulator to the next tensor's grid (:mod:`cnnzip.ops.intmath`, rounded as CMSIS-NN does),
then the zero point, then a clamp that also performs a following ReLU. Everything after
lowering is integer arithmetic: the convolution runs in float64 on integer values, exact
since every sum is checked to stay in int32 (far below 2^53), and the generated C computes the
same integers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from cnnzip.errors import CnnzipError
from cnnzip.graph import foldable_pairs, with_shapes
from cnnzip.modules import FlatLinear, QuantLayer
from cnnzip.ops.intmath import (INT32_MAX, INT32_MIN, quantize_multiplier, requantize,
                                round_half_away)
from cnnzip.surgery.fold import fold_batchnorm
from cnnzip.surgery.replace import pair


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
    codes = layer.codes().numpy().astype(np.int64)
    acc_scale = _acc_scale(layer)
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
    """A quantized sequential CNN in integers: input integers in, int32 logits out.

    Attributes:
        in_scale, in_zero, in_bits: the first layer's input grid (what the caller quantizes
            its images onto).
        ops: the integer operations in order; the last is the classifier, whose outputs are
            int32 logits on the common scale ``logit_scale``.
    """

    in_scale: float
    in_zero: int
    in_bits: int
    ops: tuple
    logit_scale: float

    def quantize_input(self, images: torch.Tensor) -> np.ndarray:
        """Images (normalised floats) → the first layer's input integers, computed as the
        fake-quantized model computes them (float32 division, halves to even)."""
        scale = torch.tensor(self.in_scale, dtype=torch.float32)
        q = torch.round(images.float() / scale) + self.in_zero
        return q.clamp(0, (1 << self.in_bits) - 1).numpy().astype(np.int64)

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        x = codes
        for op in self.ops:
            x = op(x)
        return x


_SKIP = (nn.Identity, nn.Dropout)
_RELU = (nn.ReLU,)


def _chain(model: nn.Module, in_shape: tuple[int, ...], kinds: tuple[type, ...],
           what: str) -> tuple[list[tuple[str, nn.Module]], list[int]]:
    """The model's graph as a chain of (name, module), and the positions of its layers (modules
    of ``kinds``).

    Raises:
        ReferenceError: an operation other than those layers, ReLU, max pooling and flatten,
            a join, or a model that does not start with a layer.
    """
    gm = with_shapes(model, in_shape, what, leaves=(QuantLayer, FlatLinear))
    modules = dict(model.named_modules())
    chain: list[tuple[str, nn.Module]] = []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "call_module":
            module = modules[node.target]
            if not isinstance(module, _SKIP):
                chain.append((node.target, module))
        elif node.op == "call_function" and node.target in (torch.flatten,):
            chain.append((node.name, nn.Flatten()))
        elif node.op == "call_function" and node.target in (F.relu, torch.relu):
            chain.append((node.name, nn.ReLU()))
        else:
            raise ReferenceError(f"{node.name}: {node.op} {node.target} is not lowered {what} "
                                 "yet")
        if len(node.args) and sum(isinstance(a, torch.fx.Node) for a in node.args) > 1:
            raise ReferenceError(f"{node.name}: joins (residual adds, concatenation) are not "
                                 f"lowered {what} yet")
    layers = [i for i, (_, m) in enumerate(chain) if isinstance(m, kinds)]
    for name, module in chain[:layers[0] if layers else 0]:
        if not (isinstance(module, nn.Flatten) and module.start_dim == 1):
            raise ReferenceError(f"{name}: the model must start with a "
                                 f"{'quantized ' if kinds == (QuantLayer,) else ''}layer")
    return chain, layers


def _between(chain, layers: list[int], k: int) -> list[tuple[str, nn.Module]]:
    end = layers[k + 1] if k + 1 < len(layers) else len(chain)
    return chain[layers[k] + 1:end]


def _glue(between: list[tuple[str, nn.Module]]) -> list:
    """The pooling and flattening between two layers (ReLUs are fused into the layer)."""
    ops = []
    for other, module in between:
        if isinstance(module, nn.MaxPool2d) and _plain_pool(module):
            ops.append(MaxPool(pair(module.kernel_size), pair(module.stride or module.kernel_size)))
        elif isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
            ops.append(Flatten())
        elif not isinstance(module, _RELU):
            raise ReferenceError(f"{other}: a {type(module).__name__} is not lowered to "
                                 "integers yet")
    return ops


def lower_model(model: nn.Module, in_shape: tuple[int, ...]) -> IntModel:
    """The integer form of a quantized model whose graph is a chain of quantized conv and
    linear layers with ReLUs, max poolings and a flatten between them (lenet300, lenet5).

    Raises:
        ReferenceError: another operation (residual adds, average pooling and the rest are
            not lowered yet), or a layer without quantized inputs.
    """
    model = model.eval()
    chain, layers = _chain(model, in_shape, (QuantLayer,), "to integers")
    if not layers:
        raise ReferenceError("the model has no quantized layer: compress it with the int8 "
                             "recipe first")
    ops: list = [Flatten() for _ in chain[:layers[0]]]
    for k, i in enumerate(layers):
        name, layer = chain[i]
        between = _between(chain, layers, k)
        relu = any(isinstance(m, _RELU) for _, m in between)
        if k + 1 < len(layers):
            nxt = chain[layers[k + 1]][1]
            if nxt.a_grid is None:
                raise ReferenceError(f"{chain[layers[k + 1]][0]}: its inputs are float")
            ops.append(lower(layer, float(nxt.a_scale.detach()), int(nxt.a_zero.item()),
                             nxt.act_bits, relu=relu, name=name))
        else:
            if between:
                raise ReferenceError(f"{between[0][0]}: only the classifier may end the model")
            ops.append(_lower_logits(layer, name))
        ops += _glue(between)
    first = chain[layers[0]][1]
    if first.a_grid is None:
        raise ReferenceError(f"{chain[layers[0]][0]}: its inputs are float")
    return IntModel(float(first.a_scale.detach()), int(first.a_zero.item()), first.act_bits,
                    tuple(ops), ops[-1].logit_scale)


@dataclass(frozen=True)
class FloatLayer:
    """A conv or linear layer in float32, as the float C computes it (the baseline)."""

    kind: str
    weight: np.ndarray
    bias: np.ndarray
    relu: bool
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    flatten: bool = False

    is_logits = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t, w = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(self.weight)
        b = torch.from_numpy(self.bias)
        if self.kind == "conv":
            y = F.conv2d(t, w, b, stride=self.stride, padding=self.padding, groups=self.groups)
        else:
            y = F.linear(t.flatten(1) if self.flatten else t, w, b)
        return (y.relu() if self.relu else y).numpy()


@dataclass(frozen=True)
class FloatModel:
    """A float sequential CNN for the C generator (the baseline the compressed C is timed
    against): normalised images in, float logits out."""

    ops: tuple

    def quantize_input(self, images: torch.Tensor) -> np.ndarray:
        return images.float().numpy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for op in self.ops:
            x = op(x)
        return x


def lower_float_model(model: nn.Module, in_shape: tuple[int, ...]) -> FloatModel:
    """The float form of an unquantized chain model (lenet300, lenet5), BatchNorms folded.

    Raises:
        ReferenceError: as :func:`lower_model`, or a quantized or weight-shared layer.
    """
    model = copy.deepcopy(model).eval()
    fold_batchnorm(model, foldable_pairs(model))
    kinds = (nn.Conv2d, nn.Linear)
    chain, layers = _chain(model, in_shape, kinds, "to C")
    if not layers:
        raise ReferenceError("the model has no conv or linear layer")
    ops: list = [Flatten() for _ in chain[:layers[0]]]
    for k, i in enumerate(layers):
        name, layer = chain[i]
        if type(layer) not in (nn.Conv2d, nn.Linear, FlatLinear):
            raise ReferenceError(f"{name}: a {type(layer).__name__} is not lowered to C yet")
        between = _between(chain, layers, k)
        relu = any(isinstance(m, _RELU) for _, m in between)
        weight = layer.weight.detach().float().numpy()
        bias = layer.bias.detach().float().numpy() if layer.bias is not None \
            else np.zeros(len(weight), np.float32)
        if isinstance(layer, nn.Conv2d):
            ops.append(FloatLayer("conv", weight, bias, relu, tuple(layer.stride),
                                  pair(layer.padding), layer.groups))
        else:
            ops.append(FloatLayer("linear", weight, bias, relu,
                                  flatten=isinstance(layer, FlatLinear)))
        ops += _glue(between)
    return FloatModel(tuple(ops))


def _plain_pool(m: nn.MaxPool2d) -> bool:
    return pair(m.padding) == (0, 0) and pair(m.dilation) == (1, 1) and not m.ceil_mode


@dataclass(frozen=True)
class Logits(IntLayer):
    """The classifier: int32 logits on one scale for every class (so the largest is top-1)."""

    logit_scale: float = 1.0

    is_logits = True

    def __call__(self, x: np.ndarray) -> np.ndarray:
        acc = self.accumulate(x)
        return requantize(acc, self.multiplier[None, :], self.shift[None, :])


def _lower_logits(layer: QuantLayer, name: str) -> Logits:
    """The last layer: accumulators on per-channel scales brought to the largest of them (a
    factor ≤ 1 each, so nothing overflows), the bias on the same scale."""
    common = float(_acc_scale(layer).max())
    layer_on_common = lower(layer, common, 0, 8, name=name)
    kept = {f.name: getattr(layer_on_common, f.name) for f in fields(IntLayer)}
    return Logits(**{**kept, "lo": INT32_MIN, "hi": INT32_MAX}, logit_scale=common)
