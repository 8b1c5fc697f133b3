"""``unrolled``: only the non-zero weights, as immediates in straight-line code (no index
loads; the inputs of equal weights are summed before one multiply; the most flash per
weight)."""

from __future__ import annotations

from string import Template

import numpy as np

from cnnzip.export.c.ctext import Emitted, epilogue
from cnnzip.export.c.forms.base import (CHANNEL_UNROLL_LIMIT, UNROLL_LIMIT, Form,
                                        nonzero_estimate, runs)
from cnnzip.export.c.geometry import Geometry

UNROLL_WINDOWS = 1024  # unrolled layers of at most this many terms × pooling positions
_PER_MAC = {"conv": 3.3, "linear": 3.8}
_BYTES_PER_WEIGHT = 12.0  # about 12 bytes of Thumb-2 code per multiply-accumulate

_UNROLLED_WINDOWS = Template(r"""static void $name(const uint8_t *restrict in, $tout *restrict out$scratch)
{
$pad    for (int py = 0; py < $poh; py++)
        for (int px = 0; px < $pow; px++) {
            const uint8_t *p = $src + (py * $qsh * $sh) * $wp + px * $qsw * $sw;
            int32_t acc, best;
$body        }
}
""")

_UNROLLED = Template(r"""static void $name(const uint8_t *restrict in, $tout *restrict out$scratch)
{
$pad    for (int py = 0; py < $poh; py++)
        for (int px = 0; px < $pow; px++) {
            int32_t best[$co];
            for (int q = 0; q < $qh * $qw; q++) {
                const uint8_t *p = $src + ((py * $qsh + q / $qw) * $sh) * $wp
                                   + (px * $qsw + q % $qw) * $sw;
                int32_t acc;
$body            }
$stores        }
}
""")


def terms(weight: np.ndarray, offset: np.ndarray) -> str:
    """`` + 3 * (p[0] + p[9]) - 5 * p[4]``: the non-zero weights of one output channel, inputs
    of equal weights summed before one multiply (with few distinct values, as in weight-shared
    or low-bit layers, most multiply-accumulates become additions)."""
    out = []
    for value in np.unique(weight[weight != 0]):
        reads = " + ".join(f"p[{j}]" for j in offset[weight == value])
        group = f"({reads})" if " + " in reads else reads
        out.append(f" {'+' if value > 0 else '-'} {abs(int(value))} * {group}")
    return "".join(out)


class Unrolled(Form):
    name, order = "unrolled", 20

    def fits(self, layer, geo: Geometry) -> bool:
        limit = UNROLL_LIMIT if layer.kind == "conv" else CHANNEL_UNROLL_LIMIT
        return np.count_nonzero(layer.weight) <= limit

    def estimate(self, layer, geo: Geometry) -> dict[str, float]:
        return nonzero_estimate(layer, geo, _PER_MAC[layer.kind], _BYTES_PER_WEIGHT)

    def emit(self, layer, name: str, geo: Geometry) -> Emitted:
        r = runs(layer, name, geo)
        weight, off, wp, common = r.weight, r.off, r.common["wp"], r.common
        qh, qw = geo.pool[:2]
        poh, pow_ = geo.pooled
        if qh * qw > 1 and np.count_nonzero(weight) * qh * qw <= UNROLL_WINDOWS:
            # small layers: every pooling window position written out too, so each channel's
            # maximum stays in a register and its offsets are constants
            shifts = [(y * layer.stride[0]) * wp + x * layer.stride[1]
                      for y in range(qh) for x in range(qw)]
            body = []
            for o in range(len(weight)):
                for i, dq in enumerate(shifts):
                    sums = terms(weight[o], off[o] + dq)
                    if i == 0:
                        body.append(f"            best = {name}_b[{o}]{sums};\n")
                    else:
                        body.append(f"            acc = {name}_b[{o}]{sums};\n"
                                    "            if (acc > best) best = acc;\n")
                body.append("            " + epilogue(
                    layer, name, f"({o} * {poh} + py) * {pow_} + px", str(o), "best") + "\n")
            text = _UNROLLED_WINDOWS.substitute(common, body="".join(body))
            return Emitted(r.data, text, r.const, r.padded)
        if layer.kind != "conv":
            return Emitted(r.data, _unrolled_linear(layer, name, weight, common["tout"]),
                           r.const, 0)
        body, stores = [], []
        for o in range(len(weight)):
            body.append(f"                acc = {name}_b[{o}]{terms(weight[o], off[o])};\n"
                        f"                if (q == 0 || acc > best[{o}]) best[{o}] = acc;\n")
            stores.append("            " + epilogue(
                layer, name, f"({o} * {poh} + py) * {pow_} + px", str(o), f"best[{o}]") + "\n")
        text = _UNROLLED.substitute(common, body="".join(body), stores="".join(stores))
        return Emitted(r.data, text, r.const, r.padded)


def _unrolled_linear(layer, name: str, weight: np.ndarray, tout: str) -> str:
    """A linear layer unrolled: one ``case`` per output, so that each output's straight-line
    code is a block of its own for the compiler (one block of 10,000 terms took gcc a minute
    to compile; a case each, seconds)."""
    cases = "".join(f"        case {o}: acc = {name}_b[{o}]{terms(row, np.arange(len(row)))}; "
                    "break;\n" for o, row in enumerate(weight))
    return (f"static void {name}(const uint8_t *restrict in, {tout} *restrict out)\n{{\n"
            "    const uint8_t *p = in;\n"
            f"    for (int o = 0; o < {len(weight)}; o++) {{\n"
            "        int32_t acc;\n"
            "        switch (o) {\n"
            f"{cases}"
            "        default: acc = 0; break;\n"
            "        }\n"
            f"        {epilogue(layer, name, 'o', 'o')}\n"
            "    }\n}\n")


FORMS = (Unrolled(),)
