"""The ``simd`` kernel form (:mod:`cnnzip.export.costmodel` describes it and chooses it):
stride-1 convolutions unrolled over four adjacent output columns at once in 16-bit lanes."""

from __future__ import annotations

from string import Template

import numpy as np

from cnnzip.export.costmodel import LANES, Geometry, lane_groups
from cnnzip.export.ctext import Emitted, epilogue, pad_copy

_SIMD = Template(r"""static void $name(const uint8_t *restrict in, $tout *restrict out$scratch)
{
$pad$channels}
""")

# one output channel of the simd form: its own loops, so the block's maxima stay in registers,
# and the pooling window's rows in one run of code (no loop to carry them across)
_SIMD_CHANNEL = Template(r"""    for (int py = 0; py < $poh; py++)
        for (int bx = 0; bx < $blocks; bx++) {
            const uint8_t *p = $src + (py * $qsh * $sh) * $wp + bx * $lanes;
            int32_t $best;
            $decl
$body$stores        }
""")


def emit_simd(layer, name: str, geo: Geometry, common: dict, data: str, const: int,
               off: np.ndarray) -> Emitted:
    """The ``simd`` form: unrolled as ``unrolled``, over blocks of :data:`LANES` adjacent
    output columns at once. Each input word (four adjacent bytes) is added into two registers of
    two 16-bit lanes (columns 0 and 2, 1 and 3), the inputs of equal weights summed there before
    one multiply per lane. The last block may run past the row: its extra columns read the
    padded copy's slack and are not stored."""
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
    channels = []
    indent = " " * 12
    per = LANES // qw  # pooled outputs per block
    for o in range(len(weight)):
        groups = lane_groups(weight[o], off[o])
        body = []
        for q in range(qh):  # a row of the pooling window: its own accumulators, then the maxima
            row = q * sh * wp
            body.append(f"{indent}{'{'} int32_t a0 = {name}_b[{o}], a1 = a0, a2 = a0, a3 = a0;\n")
            for value, taps in groups:
                for i, t in enumerate(taps):
                    add = ("e = cnz_even(w); d = cnz_odd(w);" if i == 0 else
                           "e = cnz_add_even(e, w); d = cnz_add_odd(d, w);")
                    body.append(f"{indent}w = cnz_load4(p + {row + t}); {add}\n")
                body.append(f"{indent}a0 = cnz_mla_lo(a0, e, {value}); "
                            f"a1 = cnz_mla_lo(a1, d, {value}); a2 = cnz_mla_hi(a2, e, {value}); "
                            f"a3 = cnz_mla_hi(a3, d, {value}); CNZ_BARRIER();\n")
            # the block's columns pooled across (a value per pooled output), then down the rows
            for k in range(per):
                value = f"b{k}"
                for j in range(k * qw, (k + 1) * qw):
                    value = f"cnz_max({value}, a{j})"
                body.append(f"{indent}b{k} = {value};\n")
            body.append(f"{indent}{'}'}\n")
        stores = []
        for k in range(per):
            px = f"bx * {per} + {k}"
            store = epilogue(layer, name, f"({o} * {poh} + py) * {pow_} + {px}", str(o), f"b{k}")
            guard = f"if ({px} < {pow_}) " if per * blocks > pow_ else ""
            stores.append(f"            {guard}{store}\n")
        channels.append(_SIMD_CHANNEL.substitute(
            best=", ".join(f"b{k} = INT32_MIN" for k in range(per)), poh=poh, blocks=blocks,
            decl="uint32_t w, e, d;" if groups else "(void)p;",
            src="pad" if padded else "in", qsh=qsh, sh=sh, wp=wp, lanes=LANES,
            body="".join(body), stores="".join(stores)))
    text = _SIMD.substitute(name=name, tout=common["tout"], pad=pad,
                            scratch=", uint8_t *restrict pad" if padded else "",
                            channels="".join(channels))
    return Emitted(data, text, const, padded)
