"""The C kernels of a layer, each instantiated for one layer with its shapes as constants: the
forms ``dense``, ``sparse``, ``unrolled``, ``simd`` (its text in :mod:`cnnzip.export.c.simd`)
and ``packed`` that :mod:`cnnzip.export.c.costmodel` describes and chooses among, written as C99
text with their constant arrays (the pieces they share: :mod:`cnnzip.export.c.ctext`).
"""

from __future__ import annotations

from string import Template

import numpy as np

from cnnzip.errors import CnnzipError
from cnnzip.export.c.costmodel import MAX_CODE_BITS, Geometry, pack
from cnnzip.export.c.ctext import PAD, Emitted, carray, epilogue, out_type, pad_copy, params
from cnnzip.export.c.simd import emit_simd

UNROLL_WINDOWS = 1024  # unrolled layers of at most this many terms × pooling positions


# Every conv kernel walks the pooled outputs (py, px) and, in each, the pooling window's q
# positions (qh × qw; 1 × 1 without pooling), keeping the largest accumulator: requantization
# is monotone, so requantizing the maximum equals pooling the requantized values.
_DENSE_CONV = Template(r"""static void $name(const $tin *restrict in, $tout *restrict out$scratch)
{
$pad    for (int o = 0; o < $co; o++) {
        const $tw *k0 = ${name}_w + o * ($cig * $kh * $kw);
        const $tin *g0 = src + (o / $cog) * ($cig * $h * $w);
        for (int py = 0; py < $poh; py++)
            for (int px = 0; px < $pow; px++) {
                $tacc best = 0;
                for (int q = 0; q < $qh * $qw; q++) {
                    const $tin *p = g0 + ((py * $qsh + q / $qw) * $sh) * $w
                                    + (px * $qsw + q % $qw) * $sw;
                    const $tw *k = k0;
                    $tacc acc = ${name}_b[o];
                    for (int c = 0; c < $cig; c++, p += $h * $w, k += $kh * $kw)
                        for (int ky = 0; ky < $kh; ky++)
                            acc += $row;
                    if (q == 0 || acc > best) best = acc;
                }
                $epilogue
            }
    }
}
""")

_DENSE_LINEAR = Template(r"""static void $name(const $tin *restrict in, $tout *restrict out)
{
    for (int o = 0; o < $co; o++) {
        const $tw *k = ${name}_w + o * $n;
        $tacc acc = ${name}_b[o];
        int i = 0;
        for (; i + 4 <= $n; i += 4)
            acc += k[i] * in[i] + k[i + 1] * in[i + 1] + k[i + 2] * in[i + 2] + k[i + 3] * in[i + 3];
        for (; i < $n; i++) acc += k[i] * in[i];
        $epilogue
    }
}
""")

# sparse and packed: per output channel a run of non-zero weights ($run sets it up and the
# channel's input base ``src``; $inner adds the run's products to ``acc``)
_RUNS = Template(r"""static void $name(const uint8_t *restrict in, $tout *restrict out$scratch)
{
$pad    for (int o = 0; o < $co; o++) {
$run        for (int py = 0; py < $poh; py++)
            for (int px = 0; px < $pow; px++) {
                int32_t best = 0;
                for (int q = 0; q < $qh * $qw; q++) {
                    const uint8_t *p = src + ((py * $qsh + q / $qw) * $sh) * $wp
                                       + (px * $qsw + q % $qw) * $sw;
                    int32_t acc = ${name}_b[o];
$inner                    if (q == 0 || acc > best) best = acc;
                }
                $epilogue
            }
    }
}
""")

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


def emit(layer, name: str, geo: Geometry, form: str) -> Emitted:
    """The C of ``layer`` (an IntLayer, Logits or FloatLayer) on ``geo``, computed by ``form``.

    Raises:
        CnnzipError: a form the layer cannot take (float layers are dense only; weights wider
            than 8 bits; a zero point whose folding could overflow).
    """
    is_float = layer.weight.dtype.kind == "f"
    if not is_float and np.abs(layer.weight).max(initial=0) > 127:
        raise CnnzipError(f"{name}: weights wider than 8 bits have no C kernel")
    if form != "dense":
        if is_float:
            raise CnnzipError(f"{name}: float layers have only the dense form")
        return _emit_sparse(layer, name, geo, form)
    tin, tw = ("float", "float") if is_float else ("uint8_t", "int8_t")
    conv = layer.kind == "conv"
    ph, pw = layer.padding if conv else (0, 0)
    # a padding conv reads a padded copy (zeros, or the zero point folded into the bias)
    bias = layer.bias if is_float else _folded_bias(layer, name)
    padded = geo.cin * (geo.h + 2 * ph) * (geo.w + 2 * pw) if conv and (ph or pw) else 0
    data, const = params(layer, name, bias)
    data = carray(tw, f"{name}_w", layer.weight) + data
    const += layer.weight.size * (4 if is_float else 1)
    common = dict(name=name, tin=tin, tout=out_type(layer), tw=tw,
                  tacc="float" if is_float else "int32_t", co=geo.cout)
    if conv:
        _, cig, kh, kw = layer.weight.shape
        qh, qw, qsh, qsw = geo.pool
        poh, pow_ = geo.pooled
        h, w = geo.h + 2 * ph, geo.w + 2 * pw
        pad = f"    const {tin} *src = in;\n"
        if padded:
            zero = "0.0f" if is_float else layer.in_zero
            pad = PAD.substitute(padded=padded, zero=zero, ci=geo.cin, h=geo.h, w=geo.w,
                                 hp=h, wp=w, ph=ph, pw=pw) + f"    const {tin} *src = pad;\n"
        text = _DENSE_CONV.substitute(
            common, cog=geo.cout // layer.groups, cig=cig, kh=kh, kw=kw, h=h, w=w,
            sh=layer.stride[0], sw=layer.stride[1], poh=poh, pow=pow_, qh=qh, qw=qw, qsh=qsh,
            qsw=qsw, pad=pad, scratch=f", {tin} *restrict pad" if padded else "",
            row=" + ".join(f"k[ky * {kw} + {x}] * p[ky * {w} + {x}]" for x in range(kw)),
            epilogue=epilogue(layer, name, f"(o * {poh} + py) * {pow_} + px", "o", "best"))
    else:
        text = _DENSE_LINEAR.substitute(common, n=layer.weight.shape[1],
                                        epilogue=epilogue(layer, name, "o", "o"))
    return Emitted(data, text, const, padded * (4 if is_float else 1))


def _folded_bias(layer, name: str) -> np.ndarray:
    """The bias with the input zero point folded in: Σ w·(x − z) + b = Σ w·x + (b − z·Σ w)."""
    weight = layer.weight.reshape(len(layer.weight), -1)
    bias = layer.bias - layer.in_zero * weight.sum(1)
    if (np.abs(weight).sum(1) * 255 + np.abs(bias)).max(initial=0) >= 2 ** 31:
        raise CnnzipError(f"{name}: folding the zero point could leave int32")
    return bias


def _taps(layer, geo: Geometry) -> tuple[np.ndarray, int, int]:
    """Per weight (out, in/groups·kh·kw), its offset in the (padded) input; the padded width and
    the padded copy's bytes (0: no padding, the kernel reads the input itself). A linear
    layer's offsets are its input indices."""
    if layer.kind != "conv":
        return np.arange(layer.weight.shape[1])[None, :].repeat(len(layer.weight), 0), 1, 0
    co, cig, kh, kw = layer.weight.shape
    ph, pw = layer.padding
    hp, wp = geo.h + 2 * ph, geo.w + 2 * pw
    group = np.arange(co) // (co // layer.groups)
    channel = group[:, None] * cig + np.arange(cig)[None, :]  # (co, cig)
    off = (channel[:, :, None, None] * hp + np.arange(kh)[None, None, :, None]) * wp \
        + np.arange(kw)[None, None, None, :]
    return off.reshape(co, -1), wp, geo.cin * hp * wp if (ph or pw) else 0


def _emit_packed(layer, name: str, geo: Geometry, common: dict, data: str, const: int,
                 off: np.ndarray, padded: int) -> Emitted:
    packed = pack(layer)
    if packed is None:
        raise CnnzipError(f"{name}: more than {2 ** MAX_CODE_BITS - 1} distinct weight values "
                          "have no packed form; use sparse")
    data += (carray("int8_t", f"{name}_t", packed.table)
             + carray("uint8_t", f"{name}_e", packed.entries))
    const += packed.table.size + packed.entries.size
    mask = (1 << packed.bits) - 1
    conv = layer.kind == "conv"
    run = f"        const uint8_t *src = {common['src']};\n"
    if conv:
        # one offset table for the first group's channels; a group's base moves the input
        groups = layer.groups
        if groups > 1:
            gstride = int(off[len(off) // groups, 0] - off[0, 0])
            run = (f"        const uint8_t *src = {common['src']} + (o / {geo.cout // groups}) "
                   f"* {gstride};\n")
        toff = "uint16_t" if off[0].max(initial=0) < 65536 else "uint32_t"
        data += carray(toff, f"{name}_off", off[0])
        const += off.shape[1] * (2 if toff == "uint16_t" else 4)
    tap = f"{name}_off[k]" if conv else "k"
    if packed.gapless:  # every weight's code, 8 / bits to a byte
        per = 8 // packed.bits
        run += f"        const uint8_t *e = {name}_e + o * {packed.start[1]};\n"
        inner = (f"                    for (int k = 0; k < {layer.weight[0].size}; k++)\n"
                 f"                        acc += {name}_t[(e[k / {per}] >> (k % {per} * "
                 f"{packed.bits})) & {mask}] * p[{tap}];\n")
    else:
        tstart = "uint16_t" if packed.entries.size < 65536 else "uint32_t"
        data += carray(tstart, f"{name}_start", packed.start)
        const += len(packed.start) * (2 if tstart == "uint16_t" else 4)
        run += (f"        const uint8_t *e = {name}_e + {name}_start[o];\n"
                f"        const int n = {name}_start[o + 1] - {name}_start[o];\n")
        inner = ("                    int k = -1;\n"
                 "                    for (int j = 0; j < n; j++) {\n"
                 "                        const uint32_t x = e[j];\n"
                 f"                        k += (int)(x >> {packed.bits}) + 1;\n"
                 f"                        acc += {name}_t[x & {mask}] * p[{tap}];\n"
                 "                    }\n")
    text = _RUNS.substitute(
        common, run=run, inner=inner,
        epilogue=epilogue(layer, name, f"(o * {common['poh']} + py) * {common['pow']} + px",
                           "o", "best"))
    return Emitted(data, text, const, padded)


def _terms(weight: np.ndarray, offset: np.ndarray) -> str:
    """`` + 3 * (p[0] + p[9]) - 5 * p[4]``: the non-zero weights of one output channel, inputs
    of equal weights summed before one multiply (with few distinct values, as in weight-shared
    or low-bit layers, most multiply-accumulates become additions)."""
    out = []
    for value in np.unique(weight[weight != 0]):
        reads = " + ".join(f"p[{j}]" for j in offset[weight == value])
        group = f"({reads})" if " + " in reads else reads
        out.append(f" {'+' if value > 0 else '-'} {abs(int(value))} * {group}")
    return "".join(out)


def _emit_sparse(layer, name: str, geo: Geometry, form: str) -> Emitted:
    weight = layer.weight.reshape(len(layer.weight), -1)
    off, wp, padded = _taps(layer, geo)
    # the input zero point folded into the bias; the padded copy holds z where a padding tap
    # reads, so those taps add w·z − w·z = 0 as well
    data, const = params(layer, name, _folded_bias(layer, name))
    conv = layer.kind == "conv"
    pad = pad_copy(layer, geo, wp, padded)
    qh, qw, qsh, qsw = geo.pool
    poh, pow_ = geo.pooled
    common = dict(name=name, tout=out_type(layer), pad=pad, poh=poh, pow=pow_, qh=qh, qw=qw,
                  qsh=qsh, qsw=qsw, sh=layer.stride[0] if conv else 1,
                  sw=layer.stride[1] if conv else 1, wp=wp, co=geo.cout,
                  src="pad" if padded else "in",
                  scratch=", uint8_t *restrict pad" if padded else "")
    if form == "sparse":
        keep = weight != 0
        start = np.concatenate([[0], np.cumsum(keep.sum(1))])
        toff = "uint16_t" if off.max(initial=0) < 65536 else "uint32_t"
        data += (carray("int8_t", f"{name}_v", weight[keep])
                 + carray(toff, f"{name}_off", off[keep])
                 + carray("int32_t", f"{name}_start", start))
        const += int(keep.sum()) * (3 if toff == "uint16_t" else 5) + 4 * len(start)
        run = (f"        const uint8_t *src = {common['src']};\n"
               f"        const int8_t *v = {name}_v + {name}_start[o];\n"
               f"        const {toff} *f = {name}_off + {name}_start[o];\n"
               f"        const int n = {name}_start[o + 1] - {name}_start[o];\n")
        inner = "                    for (int j = 0; j < n; j++) acc += v[j] * p[f[j]];\n"
        text = _RUNS.substitute(common, run=run, inner=inner, epilogue=epilogue(
            layer, name, f"(o * {poh} + py) * {pow_} + px", "o", "best"))
        return Emitted(data, text, const, padded)
    if form == "packed":
        return _emit_packed(layer, name, geo, common, data, const, off, padded)
    if form in ("simd", "simd-rows"):
        return emit_simd(layer, name, geo, common, data, const, off, rows=form == "simd-rows")
    if qh * qw > 1 and np.count_nonzero(weight) * qh * qw <= UNROLL_WINDOWS:
        # small layers: every pooling window position written out too, so each channel's
        # maximum stays in a register and its offsets are constants
        shifts = [(y * layer.stride[0]) * wp + x * layer.stride[1]
                  for y in range(qh) for x in range(qw)]
        body = []
        for o in range(len(weight)):
            for i, dq in enumerate(shifts):
                terms = _terms(weight[o], off[o] + dq)
                if i == 0:
                    body.append(f"            best = {name}_b[{o}]{terms};\n")
                else:
                    body.append(f"            acc = {name}_b[{o}]{terms};\n"
                                "            if (acc > best) best = acc;\n")
            body.append("            " + epilogue(layer, name, f"({o} * {poh} + py) * {pow_} + px",
                                                   str(o), "best") + "\n")
        text = _UNROLLED_WINDOWS.substitute(common, body="".join(body))
        return Emitted(data, text, const, padded)
    if not conv:
        return Emitted(data, _unrolled_linear(layer, name, weight, common["tout"]), const, 0)
    body, stores = [], []
    for o in range(len(weight)):
        terms = _terms(weight[o], off[o])
        body.append(f"                acc = {name}_b[{o}]{terms};\n"
                    f"                if (q == 0 || acc > best[{o}]) best[{o}] = acc;\n")
        stores.append("            " + epilogue(layer, name, f"({o} * {poh} + py) * {pow_} + px",
                                                  str(o), f"best[{o}]") + "\n")
    text = _UNROLLED.substitute(common, body="".join(body), stores="".join(stores))
    return Emitted(data, text, const, padded)


def _unrolled_linear(layer, name: str, weight: np.ndarray, tout: str) -> str:
    """A linear layer unrolled: one ``case`` per output, so that each output's straight-line
    code is a block of its own for the compiler (one block of 10,000 terms took gcc a minute
    to compile; a case each, seconds)."""
    cases = "".join(f"        case {o}: acc = {name}_b[{o}]{_terms(row, np.arange(len(row)))}; "
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
