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

import operator
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from cnnzip.errors import CnnzipError
from cnnzip.graph import shape_of, with_shapes
from cnnzip.modules import CodebookLayer, FlatLinear, QuantLayer
from cnnzip.modules.merged import ConvMaxPool
from cnnzip.ops.intmath import (INT32_MAX, INT32_MIN, quantize_multiplier, requantize,
                                round_half_away)
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
    if type(inner) not in (nn.Conv2d, nn.Linear, FlatLinear, ConvMaxPool):
        raise ReferenceError(f"{name}: a quantized {type(inner).__name__} is not lowered yet")
    if isinstance(inner, ConvMaxPool) and inner.act is not None \
            and type(inner.act) is not nn.ReLU:
        raise ReferenceError(f"{name}: a merged convolution with a {type(inner.act).__name__} "
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
    """A quantized CNN in integers: input integers in, int32 logits out.

    Attributes:
        in_scale, in_zero, in_bits: the input grid (what the caller quantizes its images onto).
        nodes: the integer operations (:class:`Node`) in an order that computes each input
            before it is read; the last is the classifier, whose outputs are int32 logits on
            the common scale ``logit_scale``.
    """

    in_scale: float
    in_zero: int
    in_bits: int
    nodes: tuple
    logit_scale: float

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


def _layer_grid(layer: QuantLayer, which: str) -> Grid:
    if which == "in":
        return Grid(float(layer.a_scale.detach()), int(layer.a_zero.item()), layer.act_bits)
    return Grid(float(layer.o_scale.detach()), int(layer.o_zero.item()), layer.out_bits)


def _rescaler(src: Grid, dst: Grid) -> tuple[np.ndarray, np.ndarray]:
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


def _add(a: Grid, b: Grid, out: Grid, relu: bool) -> Add:
    twice = 2 * max(a.scale, b.scale)
    (ma, sa), (mb, sb) = (quantize_multiplier(g.scale / twice) for g in (a, b))
    mo, so = quantize_multiplier(twice / (out.scale * 2 ** ADD_SHIFT))
    return Add((a.zero, b.zero), (int(ma[0]), int(mb[0])), (int(sa[0]), int(sb[0])),
               int(mo[0]), int(so[0]), out.zero, out.zero if relu else 0, out.hi)


@dataclass(frozen=True)
class GlobalAvgPool(Rescale):
    """The mean over height and width: Σ (x − in_zero) requantized by in scale / (out scale ·
    H·W) to the output grid (``keepdim``: output N×C×1×1, else N×C)."""

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


_GRID_PRESERVING = ("relu", "maxpool", "flatten", "skip")


def _kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    """What an fx node is to the lowering, or a ReferenceError naming it."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, QuantLayer):
            return "layer"
        if isinstance(m, SKIPPED):
            return "skip"
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, nn.MaxPool2d) and plain_pool(m):
            return "maxpool"
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return "flatten"
        if isinstance(m, nn.AdaptiveAvgPool2d) and pair(m.output_size) == (1, 1):
            return "mean"
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            raise ReferenceError(f"{node.target}: its weights are float; quantize it (the int8 "
                                 "recipe) first, or export with --calibrate")
        raise ReferenceError(f"{node.target}: a {type(m).__name__} is not lowered to integers "
                             "yet")
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu):
            return "relu"
        if node.target in (torch.flatten,) and node.args[1:2] in ((1,), ()) \
                and node.kwargs.get("end_dim", -1) == -1:
            return "flatten"
        if node.target in (operator.add, torch.add) and len(node.args) == 2 \
                and all(isinstance(a, torch.fx.Node) for a in node.args):
            return "add"
        if node.target is torch.cat and _cat_dim(node) == 1:
            return "cat"
        if node.target is F.adaptive_avg_pool2d and pair(node.args[1]) == (1, 1):
            return "mean"
    if node.op == "call_method":
        if node.target == "relu":
            return "relu"
        if node.target == "flatten" and node.args[1:2] == (1,):
            return "flatten"
        if node.target == "mean" and _mean_dims(node) == {2, 3}:
            return "mean"
    raise ReferenceError(f"{node.name}: {node.op} {getattr(node.target, '__name__', node.target)}"
                         " is not lowered to integers yet")


def _cat_dim(node: torch.fx.Node) -> int:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return dim % 4


def _mean_dims(node: torch.fx.Node) -> set[int]:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    return {d % 4 for d in dims}


def _observed(gm: torch.fx.GraphModule, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every node's value on ``images`` (the fake-quantized model run node by node)."""
    seen: dict[str, torch.Tensor] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                seen[n.name] = out.detach()
            return out

    with torch.no_grad():
        Recorder(gm).run(images.float())
    return seen


def _grid_from_range(values: torch.Tensor, bits: int = 8) -> Grid:
    """An asymmetric grid over [min(0, lowest), max(0, highest)] of ``values``."""
    lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
    scale = (hi - lo) / ((1 << bits) - 1) or 1.0
    return Grid(scale, int(round(-lo / scale)), bits)


def lower_model(model: nn.Module, in_shape: tuple[int, ...],
                calibration: torch.Tensor | None = None) -> IntModel:
    """The integer form of a quantized model: its quantized conv (also depthwise and grouped)
    and linear layers, ReLUs, max poolings, global average poolings, flattens, residual adds
    and channel concatenations, as a graph of :class:`Node`.

    Each tensor is on one grid: a quantized layer's output grid where it has one (layers that
    feed a join), else the input grid of the quantized layer it reaches first through ReLUs,
    max poolings and flattens, else (a residual sum that only an average pooling reads) an
    8-bit grid over its range on the ``calibration`` images (normalised training images).
    A layer requantizes straight onto that grid (a ReLU that follows fused into the clamp);
    where a layer reads a tensor on another grid, a :class:`Rescale` moves it first.

    Raises:
        ReferenceError: an operation that is not lowered yet (named), a float layer, or a
            tensor whose grid needs calibration images that were not given.
    """
    model = model.eval()
    shared = [name for name, m in model.named_modules() if isinstance(m, CodebookLayer)]
    if shared:
        raise ReferenceError(f"{shared[0]}: weight-shared layers compute on float feature "
                             "maps; quantize them first (export with --calibrate)")
    gm = with_shapes(model, in_shape, "for the integer reference",
                     leaves=(QuantLayer, FlatLinear))
    modules = dict(model.named_modules())
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    kinds = {n: _kind(n, modules) for n in nodes}
    if "layer" not in kinds.values():
        raise ReferenceError("the model has no quantized layer: compress it with the int8 "
                             "recipe first, or export with --calibrate")
    for n in nodes:
        if kinds[n] == "layer" and modules[n.target].a_grid is None:
            raise ReferenceError(f"{n.target}: its inputs are float; quantize them (act_bits) "
                                 "first, or export with --calibrate")
    output = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if not isinstance(output, torch.fx.Node) or kinds.get(output) != "layer":
        raise ReferenceError("the model must end with its classifier (a quantized layer)")

    def grid_of(n: torch.fx.Node) -> Grid:
        """The grid of ``n``'s value (see the docstring)."""
        if n in kinds and kinds[n] == "layer" and modules[n.target].o_grid is not None:
            return _layer_grid(modules[n.target], "out")
        todo, seen = list(n.users), set()
        while todo:
            user = todo.pop(0)
            if user in seen or user not in kinds:
                continue
            seen.add(user)
            if kinds[user] == "layer":
                return _layer_grid(modules[user.target], "in")
            if kinds[user] in _GRID_PRESERVING:
                todo += list(user.users)
        if calibration is None:
            raise ReferenceError(f"{n.name}: no quantized layer reads it, so its grid comes "
                                 "from calibration images, and none were given")
        if not observed:
            observed.update(_observed(gm, calibration))
        return _grid_from_range(observed[n.name])

    observed: dict[str, torch.Tensor] = {}
    out: list[Node] = []
    tensor: dict[torch.fx.Node, int] = {}  # fx node → the integer tensor holding its value
    grids: dict[int, Grid] = {}
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    tensor[placeholder], grids[-1] = -1, grid_of(placeholder)

    def emit(op, inputs: tuple[int, ...], grid: Grid) -> int:
        out.append(Node(op, inputs, current))
        grids[len(out) - 1] = grid
        return len(out) - 1

    def on_grid(t: int, grid: Grid) -> int:
        src = grids[t]
        if src == grid:
            return t
        m, s = _rescaler(src, grid)
        return emit(Rescale(src.zero, int(m[0]), int(s[0]), grid.zero, 0, grid.hi), (t,), grid)

    current = ""  # the fx node being lowered: what each emitted node is named after

    def fused_relu(n: torch.fx.Node) -> bool:
        users = list(n.users)
        return len(users) == 1 and kinds.get(users[0]) == "relu"

    for n in nodes:
        current = n.target if n.op == "call_module" else n.name
        kind, args = kinds[n], [a for a in n.args if isinstance(a, torch.fx.Node)]
        if kind == "cat":
            args = list(n.args[0])
        if kind == "skip":
            tensor[n] = tensor[args[0]]
        elif kind == "relu":
            src = args[0]
            if fused_relu(src) and kinds.get(src) in ("layer", "add", "mean"):
                tensor[n] = tensor[src]  # the producer clamps at its zero point
            else:
                t = tensor[src]
                tensor[n] = emit(Relu(grids[t].zero), (t,), grids[t])
        elif kind == "flatten":
            t = tensor[args[0]]
            tensor[n] = emit(Flatten(), (t,), grids[t])
        elif kind == "maxpool":
            m = modules[n.target]
            t = tensor[args[0]]
            tensor[n] = emit(MaxPool(pair(m.kernel_size), pair(m.stride or m.kernel_size)), (t,),
                             grids[t])
        elif kind == "layer":
            layer = modules[n.target]
            t = on_grid(tensor[args[0]], _layer_grid(layer, "in"))
            if n is output:
                tensor[n] = emit(_lower_logits(layer, n.target), (t,), grids[t])
            else:
                # a convolution merged with its max pooling (and ReLU) is the two again: the C
                # fuses them back, requantizing the window's largest accumulator
                g, merged = grid_of(n), layer.layer if isinstance(layer.layer, ConvMaxPool) \
                    else None
                relu = fused_relu(n) or (merged is not None and merged.act is not None)
                t = emit(lower(layer, g.scale, g.zero, g.bits, relu=relu, name=n.target),
                         (t,), g)
                if merged is not None:
                    t = emit(MaxPool(merged.pool_kernel, merged.pool_stride), (t,), g)
                tensor[n] = t
        elif kind == "add":
            a, b = (tensor[x] for x in args)
            g = grid_of(n)
            tensor[n] = emit(_add(grids[a], grids[b], g, fused_relu(n)), (a, b), g)
        elif kind == "mean":
            t = tensor[args[0]]
            src, g = grids[t], grid_of(n)
            h, w = shape_of(args[0])[2:]
            m, s = quantize_multiplier(src.scale / (g.scale * h * w))
            keep = n.op == "call_module" or bool(n.kwargs.get("keepdim", False)) \
                or (len(n.args) > 2 and bool(n.args[2]))
            tensor[n] = emit(GlobalAvgPool(src.zero, int(m[0]), int(s[0]), g.zero,
                                           g.zero if fused_relu(n) else 0, g.hi, keep), (t,), g)
        elif kind == "cat":
            g = grid_of(n)
            parts = tuple(on_grid(tensor[x], g) for x in args)
            tensor[n] = emit(Concat(), parts, g)
    if tensor[output] != len(out) - 1:
        raise ReferenceError("the classifier must be the last operation")
    first = grids[-1]
    return IntModel(first.scale, first.zero, first.bits, tuple(out), out[-1].op.logit_scale)


def plain_pool(m: nn.MaxPool2d) -> bool:
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
    if not isinstance(layer.layer, (nn.Linear, nn.Conv2d)) or isinstance(layer.layer, ConvMaxPool):
        raise ReferenceError(f"{name}: the classifier must be a plain conv or linear layer")
    common = float(_acc_scale(layer).max())
    layer_on_common = lower(layer, common, 0, 8, name=name)
    kept = {f.name: getattr(layer_on_common, f.name) for f in fields(IntLayer)}
    return Logits(**{**kept, "lo": INT32_MIN, "hi": INT32_MAX}, logit_scale=common)
