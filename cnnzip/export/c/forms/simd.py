"""``simd``: a convolution of row stride 1 as ``unrolled``, over four adjacent output columns at
once: each load of four input bytes is added into two registers of two 16-bit lanes (UXTAB16
on a Cortex-M4, one 32-bit add elsewhere), the inputs of equal weights summed in the lanes
before one multiply per column (SMLABB / SMLATB); where weights repeat (shared or 4-bit
layers) about two thirds of ``unrolled``'s instructions, where each weight is its own value
about as many; a fused pooling window's rows are a loop over one copy of the code.

``simd-rows``: ``simd`` with each row of the pooling window as its own copy of the code (no
loop to carry the maxima and the counter across rows): fewer instructions, the code once per
row."""

from __future__ import annotations

from string import Template

import numpy as np

from cnnzip.export.c.ctext import Emitted, epilogue, pad_copy
from cnnzip.export.c.forms.base import CHANNEL_UNROLL_LIMIT, PER_OUTPUT, Form, runs
from cnnzip.export.c.geometry import Geometry

LANES = 4  # output columns a simd block computes
MAX_LANE_TERMS = 128  # bytes summed in one 16-bit lane: 128 · 255 < 2^15 (SMLABB reads it signed)
# instructions per word loaded (per tap and block row: a load, two lane adds), per lane group
# (four multiplies and a weight constant), per channel and block row (bias, maxima, the loop
# over the pooling window's rows; fewer in simd-rows, whose rows are each their own code), and
# constant bytes per tap (code) and per group
_TAP, _GROUP, _CHANNEL, _ROW_LOOP = 3.0, 5.0, 12.5, 9.0
_TAP_BYTES, _GROUP_BYTES = 12.0, 20.0


def lane_groups(weight: np.ndarray, offset: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """One output channel's non-zero weights as (value, input offsets) groups of at most
    :data:`MAX_LANE_TERMS` offsets: what one simd lane sums before one multiply."""
    groups = []
    for value in np.unique(weight[weight != 0]):
        taps = offset[weight == value]
        groups += [(int(value), taps[i:i + MAX_LANE_TERMS])
                   for i in range(0, len(taps), MAX_LANE_TERMS)]
    return groups


class Simd(Form):
    def __init__(self, rows: bool) -> None:
        self.rows = rows
        self.name, self.order = ("simd-rows", 31) if rows else ("simd", 30)

    def fits(self, layer, geo: Geometry) -> bool:
        """An integer convolution of row stride 1 whose fused pooling (if any) takes 1, 2 or 4
        adjacent columns without overlap, with code of a size the compiler takes."""
        _, qw, _, qsw = geo.pool
        return (layer.kind == "conv" and layer.weight.dtype.kind != "f"
                and layer.stride[1] == 1 and qw == qsw and qw in (1, 2, 4)
                and np.count_nonzero(layer.weight) <= CHANNEL_UNROLL_LIMIT)

    def estimate(self, layer, geo: Geometry) -> dict[str, float]:
        qh = geo.pool[0]
        blocks = -(-geo.pooled[1] * geo.pool[1] // LANES) * geo.pooled[0] * qh
        weight = layer.weight.reshape(len(layer.weight), -1)
        groups = sum(len(lane_groups(row, np.zeros(len(row), np.int64))) for row in weight)
        taps = np.count_nonzero(weight)
        copies = qh if self.rows else 1  # the code of a row, once or once per row
        channel = _CHANNEL + (_ROW_LOOP if copies < qh else 0.0)
        work = _TAP * taps + _GROUP * groups + channel * len(weight)
        return {"instructions": blocks * work + PER_OUTPUT["int"] * geo.outputs,
                "const_bytes": copies * (_TAP_BYTES * taps + _GROUP_BYTES * groups)
                + 12 * len(weight)}

    def emit(self, layer, name: str, geo: Geometry) -> Emitted:
        r = runs(layer, name, geo)
        return emit_simd(layer, name, geo, r.common, r.data, r.const, r.off, rows=self.rows)

_SIMD = Template(r"""static void $name(const uint8_t *restrict in, $tout *restrict out$scratch)
{
$pad$channels}
""")

# one output channel: its own loops, so the block's maxima stay in registers; the rows of the
# pooling window in a loop (simd) or each as its own code, one after the other (simd-rows)
_SIMD_CHANNEL = Template(r"""    for (int py = 0; py < $poh; py++)
        for (int bx = 0; bx < $blocks; bx++) {
            int32_t $best;
$rows$stores        }
""")
_LOOPED_ROWS = Template(r"""            for (int q = 0; q < $qh; q++) {
                const uint8_t *p = $src + ((py * $qsh + q) * $sh) * $wp + bx * $lanes;
$row            }
""")
_WRITTEN_ROWS = Template(r"""            const uint8_t *p = $src + (py * $qsh * $sh) * $wp + bx * $lanes;
$rows""")


def _row(name: str, o: int, groups: list, shift: int, qw: int, per: int) -> str:
    """One row of a block: the accumulators of its four columns from the bias, each lane group's
    inputs (at ``shift`` + their offsets from ``p``) summed and multiplied, then the maxima. A
    compiler barrier after each group keeps gcc from hoisting every load of the row at once
    (which spills registers on a Cortex-M4)."""
    lines = [f"int32_t a0 = {name}_b[{o}], a1 = a0, a2 = a0, a3 = a0;"]
    lines.append("uint32_t w, e, d;" if groups else "(void)p;")
    for value, taps in groups:
        for i, t in enumerate(taps):
            add = ("e = cnz_even(w); d = cnz_odd(w);" if i == 0 else
                   "e = cnz_add_even(e, w); d = cnz_add_odd(d, w);")
            lines.append(f"w = cnz_load4(p + {shift + t}); {add}")
        lines.append(f"a0 = cnz_mla_lo(a0, e, {value}); a1 = cnz_mla_lo(a1, d, {value}); "
                     f"a2 = cnz_mla_hi(a2, e, {value}); a3 = cnz_mla_hi(a3, d, {value}); "
                     "CNZ_BARRIER();")
    for k in range(per):  # the block's columns pooled across (a value per pooled output)
        value = f"b{k}"
        for j in range(k * qw, (k + 1) * qw):
            value = f"cnz_max({value}, a{j})"
        lines.append(f"b{k} = {value};")
    return "".join(f"{' ' * 16}{line}\n" for line in lines)


def emit_simd(layer, name: str, geo: Geometry, common: dict, data: str, const: int,
              off: np.ndarray, rows: bool = False) -> Emitted:
    """The ``simd`` form (``rows``: ``simd-rows``): unrolled as ``unrolled``, over blocks of
    :data:`LANES` adjacent output columns at once. Each input word (four adjacent bytes) is
    added into two registers of two 16-bit lanes (columns 0 and 2, 1 and 3), the inputs of
    equal weights summed there before one multiply per lane. The last block may run past the
    row: its extra columns read the padded copy's slack and are not stored."""
    weight = layer.weight.reshape(len(layer.weight), -1)
    qh, qw, qsh, _ = geo.pool
    poh, pow_ = geo.pooled
    blocks = -(-pow_ * qw // LANES)
    sh, wp = layer.stride[0], common["wp"]
    ph, pw = layer.padding
    size = geo.cin * (geo.h + 2 * ph) * wp
    reach = (((poh - 1) * qsh + qh - 1) * sh * wp + (blocks - 1) * LANES + int(off.max(initial=0))
             + LANES)  # one past the last byte a word load reads
    padded = max(size, reach) if (ph or pw or reach > size) else 0
    pad = pad_copy(layer, geo, wp, padded)
    where = dict(src="pad" if padded else "in", qsh=qsh, sh=sh, wp=wp, lanes=LANES)
    channels = []
    per = LANES // qw  # pooled outputs per block
    for o in range(len(weight)):
        groups = lane_groups(weight[o], off[o])
        if rows:
            text = "".join("            {\n" + _row(name, o, groups, q * sh * wp, qw, per)
                           + "            }\n" for q in range(qh))
            text = _WRITTEN_ROWS.substitute(where, rows=text)
        else:
            text = _LOOPED_ROWS.substitute(where, qh=qh, row=_row(name, o, groups, 0, qw, per))
        stores = []
        for k in range(per):
            px = f"bx * {per} + {k}"
            store = epilogue(layer, name, f"({o} * {poh} + py) * {pow_} + {px}", str(o), f"b{k}")
            guard = f"if ({px} < {pow_}) " if per * blocks > pow_ else ""
            stores.append(f"            {guard}{store}\n")
        channels.append(_SIMD_CHANNEL.substitute(
            best=", ".join(f"b{k} = INT32_MIN" for k in range(per)), poh=poh, blocks=blocks,
            rows=text, stores="".join(stores)))
    text = _SIMD.substitute(name=name, tout=common["tout"], pad=pad,
                            scratch=", uint8_t *restrict pad" if padded else "",
                            channels="".join(channels))
    return Emitted(data, text, const, padded)


FORMS = (Simd(rows=False), Simd(rows=True))
