"""The C of the operations other than conv and linear layers (max and global average pooling,
rescaling, residual adds, ReLU, concatenation; float means and adds for the baseline), looked
up by the operation's exact type in :data:`GLUE`. A new operation adds its writer here."""

from __future__ import annotations

from string import Template
from typing import Any, Callable

import numpy as np

from cnnzip.export.ir.lower_float import FloatAdd, FloatMean
from cnnzip.export.ir.ops import (ADD_SHIFT, Add, Concat, GlobalAvgPool, LoweringError, MaxPool,
                                  Relu, Rescale)

_MAXPOOL = Template(r"""static void $name(const $t *in, $t *out)
{
    for (int c = 0; c < $c; c++)
        for (int y = 0; y < $oh; y++)
            for (int x = 0; x < $ow; x++) {
                const $t *p = in + (c * $h + y * $sh) * $w + x * $sw;
                $t m = p[0];
                for (int ky = 0; ky < $kh; ky++)
                    for (int kx = 0; kx < $kw; kx++)
                        if (p[ky * $w + kx] > m) m = p[ky * $w + kx];
                out[(c * $oh + y) * $ow + x] = m;
            }
}
""")


_ELEMENTWISE = Template(r"""static void $name($params, $t *restrict out)
{
    for (int i = 0; i < $n; i++) {
$body
    }
}
""")

_GAP = Template(r"""static void $name(const uint8_t *restrict in, uint8_t *restrict out)
{
    for (int c = 0; c < $c; c++) {
        int32_t acc = 0;
        for (int i = 0; i < $hw; i++) acc += (int32_t)in[c * $hw + i] - $zero;
        const int32_t v = cnz_requantize(acc, $m, $s) + $out_zero;
        out[c] = cnz_clamp(v, $lo, $hi);
    }
}
""")


def _clamp(v: str, lo: int, hi: int) -> str:
    return f"cnz_clamp({v}, {lo}, {hi})"


# The C of each operation other than a conv or linear layer, by the operation's exact type:
# (op, function name, element type, input shapes, output shape) → a C function. A new
# operation adds its writer here.
GlueWriter = Callable[[Any, str, str, list, tuple], str]
GLUE: dict[type, GlueWriter] = {}


def _glue(*types: type) -> Callable[[GlueWriter], GlueWriter]:
    def register(fn: GlueWriter) -> GlueWriter:
        for t in types:
            GLUE[t] = fn
        return fn
    return register


@_glue(MaxPool)
def _maxpool(op, name: str, elem: str, in_shapes: list, out_shape) -> str:
    c, h, w = in_shapes[0]
    return _MAXPOOL.substitute(name=name, t=elem, c=c, h=h, w=w, kh=op.kernel[0],
                               kw=op.kernel[1], sh=op.stride[0], sw=op.stride[1],
                               oh=out_shape[1], ow=out_shape[2])


@_glue(GlobalAvgPool)
def _global_avg_pool(op, name: str, elem: str, in_shapes: list, out_shape) -> str:
    c, h, w = in_shapes[0]
    return _GAP.substitute(name=name, c=c, hw=h * w, zero=op.in_zero, m=op.multiplier,
                           s=op.shift, out_zero=op.out_zero, lo=op.lo, hi=op.hi)


@_glue(FloatMean)
def _float_mean(op, name: str, elem: str, in_shapes: list, out_shape) -> str:
    c, h, w = in_shapes[0]
    value = "v > 0.0f ? v : 0.0f" if op.relu else "v"
    return (f"static void {name}(const float *restrict in, float *restrict out)\n{{\n"
            f"    for (int c = 0; c < {c}; c++) {{\n        float acc = 0.0f;\n"
            f"        for (int i = 0; i < {h * w}; i++) acc += in[c * {h * w} + i];\n"
            f"        const float v = acc / {float(h * w)!r}f;\n"
            f"        out[c] = {value};\n    }}\n}}\n")


@_glue(FloatAdd)
def _float_add(op, name: str, elem: str, in_shapes: list, out_shape) -> str:
    value = "v > 0.0f ? v : 0.0f" if op.relu else "v"
    return _ELEMENTWISE.substitute(
        name=name, params="const float *restrict in0, const float *restrict in1", t="float",
        n=int(np.prod(out_shape)),
        body=f"        const float v = in0[i] + in1[i];\n        out[i] = {value};")


@_glue(Rescale)
def _rescale(op, name: str, elem: str, in_shapes: list, out_shape) -> str:
    body = (f"        const int32_t v = cnz_requantize((int32_t)in0[i] - {op.in_zero}, "
            f"{op.multiplier}, {op.shift}) + {op.out_zero};\n"
            f"        out[i] = {_clamp('v', op.lo, op.hi)};")
    return _ELEMENTWISE.substitute(name=name, params="const uint8_t *restrict in0",
                                   t="uint8_t", n=int(np.prod(out_shape)), body=body)


@_glue(Add)
def _add(op, name: str, elem: str, in_shapes: list, out_shape) -> str:
    terms = " + ".join(f"cnz_requantize(((int32_t)in{k}[i] - {op.zeros[k]}) * (1 << "
                       f"{ADD_SHIFT}), {op.multipliers[k]}, {op.shifts[k]})"
                       for k in range(2))
    body = (f"        const int32_t sum = {terms};\n"
            f"        const int32_t v = cnz_requantize(sum, {op.out_multiplier}, "
            f"{op.out_shift}) + {op.out_zero};\n"
            f"        out[i] = {_clamp('v', op.lo, op.hi)};")
    return _ELEMENTWISE.substitute(
        name=name, params="const uint8_t *restrict in0, const uint8_t *restrict in1",
        t="uint8_t", n=int(np.prod(out_shape)), body=body)


@_glue(Relu)
def _relu(op, name: str, elem: str, in_shapes: list, out_shape) -> str:
    return _ELEMENTWISE.substitute(
        name=name, params=f"const {elem} *restrict in0", t=elem, n=int(np.prod(out_shape)),
        body=f"        out[i] = in0[i] > {op.zero} ? in0[i] : {op.zero};")


@_glue(Concat)
def _concat(op, name: str, elem: str, in_shapes: list, out_shape) -> str:
    params = ", ".join(f"const {elem} *restrict in{k}" for k in range(len(in_shapes)))
    copies, offset = [], 0
    for k, shape in enumerate(in_shapes):
        size = int(np.prod(shape))
        copies.append(f"    for (int i = 0; i < {size}; i++) out[{offset} + i] = in{k}[i];")
        offset += size
    return f"static void {name}({params}, {elem} *restrict out)\n{{\n" + "\n".join(copies) \
        + "\n}\n"


def glue_function(op, name: str, elem: str, in_shapes: list, out_shape) -> str:
    """The C of an operation other than a conv or linear layer (:data:`GLUE`)."""
    writer = GLUE.get(type(op))
    if writer is None:
        raise LoweringError(f"{type(op).__name__} has no C kernel yet")
    return writer(op, name, elem, in_shapes, out_shape)
