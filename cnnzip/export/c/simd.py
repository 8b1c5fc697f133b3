"""The ``simd`` and ``simd-rows`` kernel forms (:mod:`cnnzip.export.c.costmodel` describes them
and chooses among them): stride-1 convolutions unrolled over four adjacent output columns at
once in 16-bit lanes; ``simd-rows`` writes each row of a fused pooling window as its own code
instead of a loop over them (faster, its code once per row)."""

from __future__ import annotations

from string import Template

import numpy as np

from cnnzip.export.c.costmodel import LANES, Geometry, lane_groups
from cnnzip.export.c.ctext import Emitted, epilogue, pad_copy

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
