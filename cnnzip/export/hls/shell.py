"""The integer model (:class:`IntModel`) as a PyTorch graph that hls4ml reads (the *shell*),
with the fixed-point type of every value; :mod:`cnnzip.export.hls.project` makes the project. In
the shell every tensor holds its integers minus its grid's zero point (a ReLU is then a clamp
at 0):

- a conv or linear layer has the integer weights and the int32 bias, and computes its
  accumulators exactly: weights ``ap_fixed<b,b>`` at their own bits (pruned weights are zeros,
  which hls4ml's constant-weight multipliers drop), the accumulator and result
  ``ap_fixed<A,A>`` with ``A`` from the largest Σ|w| · max|input| + |bias| of any output
  channel, so no sum can overflow;
- its requantization follows as two BatchNorms with exact scales (hls4ml's float32 reading is
  replaced by the float64 factors, held in ``ap_ufixed`` types wide enough for every bit): the
  Q31 multiplier ``m · 2^(max(shift, 0) − 31)`` rounded halves up to an integer (CMSIS-NN's
  doubling high multiply), then ``2^min(shift, 0)`` rounded halves away from zero (its
  rounding right shift), saturated to the output grid: by the result type where the grid's
  range is a type's whole range, else by an exact clamp (shift, saturate, shift back); a fused
  ReLU is an hls4ml ReLU;
- rescalings, residual adds (TensorFlow Lite's: each input shifted and requantized, the sum
  exact, then requantized), global average pooling (the exact sum, recovered from hls4ml's
  average), max poolings, flattens, ReLUs and concatenations follow the same rules.

So the C simulation computes the integer reference's logits bit for bit (``--check`` counts
the images where every logit is equal). hls4ml's PyTorch reader takes no grouped or depthwise
convolutions: they are refused by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.fx
from torch import nn

from cnnzip.export.ir.ops import (ADD_SHIFT, Add, Concat, Flatten, GlobalAvgPool, IntLayer,
                                  IntModel, Logits, LoweringError, MaxPool, Relu, Rescale)
from cnnzip.export.ir.facts import accumulator_bits, signed_bits, weight_bits
from cnnzip.ops.intmath import INT32_MAX, INT32_MIN

NOT_NOP = 2.0 ** -30  # a scale's bias as hls4ml reads it when the real one is 0
FRACTION_BITS = 24  # kept by the inputs of a residual add and an average before they round


def fixed(bits: int, integer: int, *, signed: bool = True, rounding: str = "",
          overflow: str = "") -> str:
    """An ``ap_fixed``/``ap_ufixed`` type name (rounding and overflow modes optional)."""
    modes = f",{rounding or 'AP_TRN'},{overflow or 'AP_WRAP'}" if rounding or overflow else ""
    return f"ap_{'' if signed else 'u'}fixed<{bits},{integer}{modes}>"


def _result(lo: int, hi: int) -> str:
    """Integers in [lo, hi], rounded halves away from zero and saturated."""
    if lo >= 0:
        b = max(1, signed_bits(0, hi) - 1)
        return fixed(b, b, signed=False, rounding="AP_RND_INF", overflow="AP_SAT")
    b = signed_bits(lo, hi)
    return fixed(b, b, rounding="AP_RND_INF", overflow="AP_SAT")


def _natural(lo: int, hi: int) -> bool:
    """Whether [lo, hi] is the whole range of an integer type (saturating to it clamps)."""
    top = hi + 1
    return top > 0 and top & (top - 1) == 0 and lo in (0, -top)


def _scale_type(scale: np.ndarray) -> str:
    """An unsigned fixed-point type that holds every factor ``m · 2^(shift − 31)`` exactly."""
    scale = np.asarray(scale, np.float64)
    positive = scale[scale > 0]
    if not len(positive):
        return fixed(1, 1, signed=False)
    integer = max(1, math.floor(math.log2(positive.max())) + 1)
    _, exponents = np.frexp(positive)  # value = mantissa · 2^exponent, mantissa in [0.5, 1)
    fraction = int(max(0, 53 - exponents.min()))  # float64 mantissas: 53 bits at most
    mantissas = positive * np.exp2(fraction)
    while fraction > 0 and np.all(mantissas % 2 == 0):
        mantissas, fraction = mantissas / 2, fraction - 1
    return fixed(integer + fraction, integer, signed=False)


@dataclass
class ShellLayer:
    """One module of the shell: its hls4ml precisions and, for a scale, its exact factors."""

    precision: dict[str, str]
    scale: np.ndarray | None = None
    bias: int = 0  # a scale's integer bias
    source: str = ""  # the cnnzip layer it computes


@dataclass
class Shell:
    """The integer model as a PyTorch graph for hls4ml, with the precision of every node.

    Attributes:
        module: the graph (an ``fx.GraphModule``; inputs: integers minus the input zero point).
        layers: per hls4ml layer name, its precisions and exact scale factors.
        input_name, input_precision: the input node and its type.
        in_zero: subtracted from the input integers before they enter.
    """

    module: torch.fx.GraphModule
    layers: dict[str, ShellLayer]
    input_name: str
    input_precision: str
    in_zero: int
    accumulators: dict[str, int] = field(default_factory=dict)

    def centre(self, codes: np.ndarray) -> np.ndarray:
        """The shell's input for the integer model's input ``codes``: one flat row each."""
        return np.ascontiguousarray((np.asarray(codes, np.float64) - self.in_zero)
                                    .reshape(len(codes), -1))


def _ident(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") or "node"


class _Builder:
    """Adds modules to a graph under unique names, tracking each value's integer range and
    shape (the shell runs on a zero input as it is built)."""

    def __init__(self, in_shape: tuple[int, ...], in_range: tuple[int, int]):
        self.root = nn.Module()
        self.graph = torch.fx.Graph()
        self.layers: dict[str, ShellLayer] = {}
        self.input = self.graph.placeholder("images")
        self.values: dict[torch.fx.Node, tuple[torch.Tensor, tuple[int, int]]] = {
            self.input: (torch.zeros((1, *in_shape)), in_range)}

    def module(self, base: str, module: nn.Module, inputs: list[torch.fx.Node],
               out_range: tuple[int, int], precision: dict[str, str], *,
               scale: np.ndarray | None = None, bias: int = 0,
               source: str = "") -> torch.fx.Node:
        name, k = _ident(base), 1
        while hasattr(self.root, name):
            name, k = f"{_ident(base)}_{k}", k + 1
        self.root.add_module(name, module.eval())
        node = self.graph.call_module(name, tuple(inputs))
        with torch.no_grad():
            out = module(*(self.values[i][0] for i in inputs))
        self.values[node] = (out, out_range)
        self.layers[node.name] = ShellLayer(precision, scale, bias, source)
        return node

    def function(self, fn, inputs: list[torch.fx.Node], out_range: tuple[int, int],
                 precision: dict[str, str], source: str, **kwargs) -> torch.fx.Node:
        node = self.graph.call_function(fn, (inputs,) if fn is torch.cat else tuple(inputs),
                                        kwargs)
        with torch.no_grad():
            args = [self.values[i][0] for i in inputs]
            out = fn(args, **kwargs) if fn is torch.cat else fn(*args, **kwargs)
        self.values[node] = (out, out_range)
        self.layers[node.name] = ShellLayer(precision, source=source)
        return node

    def range(self, node: torch.fx.Node) -> tuple[int, int]:
        return self.values[node][1]

    def shape(self, node: torch.fx.Node) -> tuple[int, ...]:
        return tuple(self.values[node][0].shape)

    def scale(self, base: str, x: torch.fx.Node, factor: np.ndarray, out_range: tuple[int, int],
              result: str, source: str, bias: int = 0) -> torch.fx.Node:
        """``x`` times a factor per channel plus an integer ``bias`` (a BatchNorm with an
        exact scale)."""
        channels = self.shape(x)[1]
        factor = np.broadcast_to(np.asarray(factor, np.float64), (channels,)).copy()
        if np.all(factor == 1.0) and bias == 0:
            # hls4ml removes a BatchNorm that scales by 1 and adds 0, and with it the
            # saturation of its result type: keep only a clamp, where one is needed
            lo, hi = self.range(x)
            if out_range[0] <= lo and hi <= out_range[1]:
                return x
            return self.clamp(base, x, *out_range, source)
        bn = (nn.BatchNorm2d if len(self.shape(x)) == 4 else nn.BatchNorm1d)(channels, eps=0.0)
        with torch.no_grad():
            bn.weight.copy_(torch.from_numpy(factor))
            # hls4ml reads float32 and drops a BatchNorm that scales by 1 and adds 0: a factor
            # of 1 + 2^-30 would be one, so the bias is marked non-zero (set exactly later)
            bn.bias.fill_(float(bias) if bias else NOT_NOP)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
        b_bits = signed_bits(min(bias, 0), max(bias, 0))
        return self.module(base, bn, [x], out_range,
                           {"scale": _scale_type(factor), "bias": fixed(b_bits, b_bits),
                            "result": result}, scale=factor, bias=bias, source=source)

    def clamp(self, base: str, x: torch.fx.Node, lo: int, hi: int, source: str) -> torch.fx.Node:
        """``x`` (integers) clamped to [lo, hi] exactly: shifted so that [lo, hi] ends at the
        top of an unsigned saturating type, then shifted back. Exact at both ends when
        hi − lo + 1 is a power of two, else at the top only (then ``x`` must not be below lo:
        the grids of cnnzip's quantizers give the first, a ReLU the second)."""
        known_lo, known_hi = self.range(x)
        if lo <= known_lo and known_hi <= hi:
            return x
        bits = max(1, signed_bits(0, hi - lo) - 1)
        offset = (1 << bits) - 1 - (hi - lo)
        if offset and known_lo < lo:
            raise LoweringError(f"{source}: a clamp to [{lo}, {hi}] has no exact form")
        x = self.scale(f"{base}_clamp", x, np.array(1.0),
                       (max(0, known_lo - lo + offset), (1 << bits) - 1),
                       fixed(bits, bits, signed=False, rounding="AP_RND", overflow="AP_SAT"),
                       source, bias=offset - lo)
        return self.scale(f"{base}_unclamp", x, np.array(1.0), (lo, hi), _result(lo, hi),
                          source, bias=lo - offset)

    def relu(self, base: str, x: torch.fx.Node, hi: int, source: str) -> torch.fx.Node:
        return self.module(base, nn.ReLU(), [x], (0, hi), {"result": _result(0, hi)},
                           source=source)

    def requantize(self, base: str, x: torch.fx.Node, multiplier: np.ndarray,
                   shift: np.ndarray, out: tuple[int, int], *, relu: bool = False,
                   pre_shift: int = 0, source: str) -> torch.fx.Node:
        """``x << pre_shift`` requantized as :func:`cnnzip.ops.intmath.requantize` does, bit
        for bit, saturated to ``out`` (a ReLU after it where asked): a scale by
        ``m · 2^(max(shift, 0) − 31)`` rounded halves up to an integer (the doubling high
        multiply), then a scale by ``2^min(shift, 0)`` rounded halves away from zero (the
        rounding right shift)."""
        multiplier = np.asarray(multiplier, np.float64)
        shift = np.asarray(shift, np.int64)
        first = multiplier * np.exp2(pre_shift + np.maximum(shift, 0) - 31)
        last = np.exp2(np.minimum(shift, 0)).astype(np.float64)
        lo, hi = self.range(x)
        reach = math.ceil(max(abs(lo), abs(hi)) * float(first.max())) + 1
        bits = signed_bits(-reach, reach)
        # where the output's range is a type's whole range, the last rounding saturates to it
        # (before a ReLU: to its top and a sign; the ReLU clamps at 0); else a clamp follows
        natural = _natural(*out)
        stage = ((-1 - out[1], out[1]) if relu else out) if natural else (-reach, reach)
        if np.all(last == 1.0):
            x = self.scale(f"{base}_requant", x, first, stage,
                           _result(*stage).replace("AP_RND_INF", "AP_RND"), source)
        else:
            x = self.scale(f"{base}_requant", x, first, (-reach, reach),
                           fixed(bits, bits, rounding="AP_RND"), source)
            x = self.scale(f"{base}_shift", x, last, stage, _result(*stage), source)
        if relu:
            x = self.relu(f"{base}_relu", x, out[1] if natural else reach, source)
        return x if natural else self.clamp(base, x, *out, source)

    def finish(self, output: torch.fx.Node) -> torch.fx.GraphModule:
        self.graph.output(output)
        return torch.fx.GraphModule(self.root, self.graph, class_name="CnnzipShell")


def build_shell(model: IntModel, in_shape: tuple[int, ...]) -> Shell:
    """The hls4ml shell of an integer model (see the module docstring).

    Raises:
        LoweringError: an operation hls4ml's PyTorch converter cannot take (named): grouped
            and depthwise convolutions, a classifier that is a convolution.
    """
    in_range = (-model.in_zero, (1 << model.in_bits) - 1 - model.in_zero)
    b = _Builder(in_shape, in_range)
    values: dict[int, torch.fx.Node] = {-1: b.input}
    accumulators: dict[str, int] = {}
    for k, node in enumerate(model.nodes):
        op, name = node.op, node.name or f"node{k}"
        writer = SHELL_WRITERS.get(type(op))
        if writer is None:
            raise LoweringError(f"{name}: {type(op).__name__} has no hls4ml form yet")
        values[k] = writer(b, op, name, [values[i] for i in node.inputs], accumulators)
    return Shell(b.finish(values[len(model.nodes) - 1]), b.layers, b.input.name,
                 _result(*in_range).replace(",AP_RND_INF,AP_SAT", ""), model.in_zero,
                 accumulators)


def _rescale(b: _Builder, op: Rescale, name: str, xs: list, acc: dict) -> torch.fx.Node:
    return b.requantize(f"{name}_rescale", xs[0], op.multiplier, op.shift,
                        (op.lo - op.out_zero, op.hi - op.out_zero), source=name)


def _maxpool(b: _Builder, op: MaxPool, name: str, xs: list, acc: dict) -> torch.fx.Node:
    return b.module(f"{name}_pool", nn.MaxPool2d(op.kernel, op.stride), xs, b.range(xs[0]),
                    {"result": _result(*b.range(xs[0])), "accum": _result(*b.range(xs[0]))},
                    source=name)


def _flatten(b: _Builder, op: Flatten, name: str, xs: list, acc: dict) -> torch.fx.Node:
    return b.module(f"{name}_flatten", nn.Flatten(), xs, b.range(xs[0]),
                    {"result": _result(*b.range(xs[0]))}, source=name)


def _relu(b: _Builder, op: Relu, name: str, xs: list, acc: dict) -> torch.fx.Node:
    return b.relu(f"{name}_relu", xs[0], b.range(xs[0])[1], name)


def _concat(b: _Builder, op: Concat, name: str, xs: list, acc: dict) -> torch.fx.Node:
    out = (min(b.range(x)[0] for x in xs), max(b.range(x)[1] for x in xs))
    return b.function(torch.cat, xs, out, {"result": _result(*out)}, name, dim=1)


def _layer(b: _Builder, op: IntLayer, name: str, x: torch.fx.Node,
           accumulators: dict[str, int]) -> torch.fx.Node:
    """A conv or linear layer with integer weights, then its requantization (and ReLU)."""
    if op.kind == "conv" and op.groups != 1:
        raise LoweringError(f"{name}: hls4ml's PyTorch converter does not take grouped or "
                             f"depthwise convolutions (groups={op.groups})")
    if op.is_logits and op.kind == "conv":
        raise LoweringError(f"{name}: a convolution as the classifier has no hls4ml form yet")
    if op.flatten or (op.kind == "linear" and len(b.shape(x)) > 2):
        x = b.module(f"{name}_flatten", nn.Flatten(), [x], b.range(x),
                     {"result": _result(*b.range(x))}, source=name)
    weight = torch.from_numpy(op.weight.astype(np.float32))
    if op.kind == "conv":
        layer = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]),
                          stride=op.stride, padding=op.padding)
    else:
        layer = nn.Linear(weight.shape[1], weight.shape[0])
    if np.abs(op.bias).max(initial=0) >= 2 ** 24:
        raise LoweringError(f"{name}: a bias past 2^24 cannot pass through hls4ml's float32 "
                             "reader exactly")
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.from_numpy(op.bias.astype(np.float32)))
    acc_bits = accumulators[name] = accumulator_bits(op, b.range(x))
    w_bits = weight_bits(op)
    b_bits = signed_bits(int(op.bias.min(initial=0)), int(op.bias.max(initial=0)))
    acc = fixed(acc_bits, acc_bits)
    x = b.module(name, layer, [x], (-(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1),
                 {"weight": fixed(w_bits, w_bits), "bias": fixed(b_bits, b_bits),
                  "accum": acc, "result": acc}, source=name)
    out = (INT32_MIN, INT32_MAX) if op.is_logits else (op.lo - op.out_zero, op.hi - op.out_zero)
    relu = not op.is_logits and op.lo == op.out_zero
    return b.requantize(name, x, op.multiplier, op.shift, out, relu=relu, source=name)


def _add(b: _Builder, op: Add, name: str, xs: list[torch.fx.Node]) -> torch.fx.Node:
    """TensorFlow Lite's integer add: each input shifted left and requantized, the two summed
    exactly, the sum requantized to the output grid."""
    scaled = []
    for i, (x, m, s) in enumerate(zip(xs, op.multipliers, op.shifts)):
        lo, hi = b.range(x)
        reach = (max(abs(lo), abs(hi)) << ADD_SHIFT) + 1
        scaled.append(b.requantize(f"{name}_in{i}", x, m, s, (-reach, reach),
                                   pre_shift=ADD_SHIFT, source=name))
    reach = sum(max(abs(v) for v in b.range(x)) for x in scaled)
    total = b.function(torch.add, scaled, (-reach, reach),
                       {"result": fixed(*(2 * [signed_bits(-reach, reach)]))}, name)
    out = (op.lo - op.out_zero, op.hi - op.out_zero)
    return b.requantize(name, total, op.out_multiplier, op.out_shift, out,
                        relu=op.lo == op.out_zero, source=name)


def _global_average(b: _Builder, op: GlobalAvgPool, name: str, x: torch.fx.Node) -> torch.fx.Node:
    """The sum over the map (an average pooling keeping fraction bits, times the map's size,
    rounded: exact, as the average's error times the size stays far below one half), then
    the requantization."""
    h, w = b.shape(x)[2:]
    lo, hi = b.range(x)
    ib = signed_bits(lo, hi)
    avg = fixed(ib + FRACTION_BITS, ib)
    total = (lo * h * w, hi * h * w)
    acc_bits = signed_bits(*total)
    x = b.module(f"{name}_avg", nn.AvgPool2d((h, w)), [x], (lo, hi),
                 {"result": avg, "accum": fixed(acc_bits + FRACTION_BITS, acc_bits)},
                 source=name)
    if not op.keepdim:
        x = b.module(f"{name}_flatten", nn.Flatten(), [x], (lo, hi), {"result": avg},
                     source=name)
    x = b.scale(f"{name}_sum", x, np.array(float(h * w)), total,
                fixed(acc_bits, acc_bits, rounding="AP_RND"), name)
    out = (op.lo - op.out_zero, op.hi - op.out_zero)
    return b.requantize(name, x, op.multiplier, op.shift, out, relu=op.lo == op.out_zero,
                        source=name)


# Each operation of the integer IR as PyTorch modules hls4ml reads, by the operation's exact
# type: (builder, op, name, input nodes, accumulator bits by layer) → the output node. A new
# operation adds its writer here.
SHELL_WRITERS: dict[type, Callable[..., torch.fx.Node]] = {
    IntLayer: lambda b, op, name, xs, acc: _layer(b, op, name, xs[0], acc),
    Logits: lambda b, op, name, xs, acc: _layer(b, op, name, xs[0], acc),
    GlobalAvgPool: lambda b, op, name, xs, acc: _global_average(b, op, name, xs[0]),
    Rescale: _rescale,
    Add: lambda b, op, name, xs, acc: _add(b, op, name, xs),
    MaxPool: _maxpool, Flatten: _flatten, Relu: _relu, Concat: _concat}
