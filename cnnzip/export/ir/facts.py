"""Facts about the tensors of a lowered model, computed once, for every backend: each tensor's
shape (one pass over the model on a zero input), the range of an integer tensor's values about
its zero point, and the bits that hold a layer's weights and accumulators. Range rules are
looked up by the operation's exact type (:data:`RANGE_RULES`); a new operation adds its rule
here."""

from __future__ import annotations

from typing import Callable

import numpy as np

from cnnzip.export.ir.lower_float import FloatModel
from cnnzip.export.ir.ops import (Add, Concat, Flatten, GlobalAvgPool, IntLayer, IntModel,
                                  Logits, MaxPool, Relu, Rescale)

Range = tuple[int, int]


def shapes(model: IntModel | FloatModel, in_shape: tuple[int, ...]) -> dict[int, tuple]:
    """Per node index (-1: the input), its output's shape per sample: (C, H, W) or (N,)."""
    is_float = isinstance(model, FloatModel)
    values = {-1: np.zeros((1, *in_shape), np.float32 if is_float else np.int64)}
    if not is_float:
        values[-1] = values[-1] + model.in_zero
    for k, node in enumerate(model.nodes):
        values[k] = node.op(*(values[i] for i in node.inputs))
    return {k: tuple(v.shape[1:]) for k, v in values.items()}


def classes(model: IntModel | FloatModel, in_shape: tuple[int, ...]) -> int:
    """The number of logits."""
    return int(np.prod(shapes(model, in_shape)[len(model.nodes) - 1]))


def _own(op, inputs: list[Range]) -> Range:
    return op.lo - op.out_zero, op.hi - op.out_zero


def _layer(op, inputs: list[Range]) -> Range:
    return (-(1 << 31), (1 << 31) - 1) if op.is_logits else _own(op, inputs)


def _concat(op, inputs: list[Range]) -> Range:
    return min(p[0] for p in inputs), max(p[1] for p in inputs)


RANGE_RULES: dict[type, Callable[[object, list[Range]], Range]] = {
    IntLayer: _layer, Logits: _layer, Rescale: _own, GlobalAvgPool: _own, Add: _own,
    Relu: lambda op, inputs: (0, inputs[0][1]), Concat: _concat,
    MaxPool: lambda op, inputs: inputs[0], Flatten: lambda op, inputs: inputs[0]}


def value_ranges(model: IntModel) -> dict[int, Range]:
    """Each node's output integers minus their grid's zero point, as [lo, hi] (-1: the
    input); a classifier's logits span int32."""
    ranges = {-1: (-model.in_zero, (1 << model.in_bits) - 1 - model.in_zero)}
    for k, node in enumerate(model.nodes):
        rule = RANGE_RULES.get(type(node.op))
        if rule is None:
            raise TypeError(f"{node.name}: no range rule for {type(node.op).__name__}")
        ranges[k] = rule(node.op, [ranges[i] for i in node.inputs])
    return ranges


def signed_bits(lo: float, hi: float) -> int:
    """The fewest bits of a two's-complement integer that holds every value in [lo, hi]."""
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


def weight_bits(op: IntLayer) -> int:
    """Signed bits that hold every weight integer of ``op``."""
    return signed_bits(int(op.weight.min(initial=0)), int(op.weight.max(initial=0)))


def accumulator_bits(op: IntLayer, x_range: Range) -> int:
    """Signed bits that hold every accumulator of ``op`` on inputs in ``x_range``: the largest
    Σ|w| · max|x| + |bias| of an output channel."""
    reach = max(abs(x_range[0]), abs(x_range[1]))
    per_channel = np.abs(op.weight).reshape(len(op.weight), -1).sum(1) * reach \
        + np.abs(op.bias)
    most = float(per_channel.max(initial=0))
    return signed_bits(-most, most)
