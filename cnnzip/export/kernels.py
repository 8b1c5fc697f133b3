"""The C kernels of a layer, each instantiated for one layer with its shapes as constants: the
forms ``dense``, ``sparse``, ``unrolled``, ``simd`` and ``packed`` that
:mod:`cnnzip.export.costmodel` describes and chooses among, written as C99 text with their
constant arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template

import numpy as np

from cnnzip.errors import CnnzipError
from cnnzip.export.costmodel import LANES, MAX_CODE_BITS, Geometry, lane_groups, pack

UNROLL_WINDOWS = 1024  # unrolled layers of at most this many terms × pooling positions


def carray(ctype: str, name: str, values) -> str:
    """A ``static const`` C array."""
    flat = np.asarray(values).reshape(-1).tolist()
    if ctype == "float":
        flat = [float_literal(v) for v in flat]
    rows = [", ".join(map(str, flat[i:i + 16])) for i in range(0, len(flat), 16)]
    return (f"static const {ctype} {name}[{max(len(flat), 1)}] = {{\n    "
            + ",\n    ".join(rows or ["0"]) + "\n};\n")


def float_literal(v: float) -> str:
    """A float32 value as a C literal that reads back to the same bits."""
    return f"{float(np.float32(v))!r}f"


@dataclass(frozen=True)
class Emitted:
    """A layer in C: its constant arrays, its function, the bytes of its constant data and of
    the scratch (a padded copy of the input) the function takes as a third argument."""

    data: str
    function: str
    const_bytes: int
    scratch_bytes: int


def _epilogue(layer, name: str, index: str, o: str, acc: str = "acc") -> str:
    """Store accumulator ``acc`` of channel ``o`` into ``out[index]``: requantized, zero point,
    clamp (int); ReLU or not (float); int32 logits on the common scale (classifier)."""
    if layer.weight.dtype.kind == "f":
        if layer.relu and layer.cap is not None:
            cap = float_literal(layer.cap)
            return f"out[{index}] = {acc} < 0.0f ? 0.0f : {acc} > {cap} ? {cap} : {acc};"
        return f"out[{index}] = {f'{acc} > 0.0f ? {acc} : 0.0f' if layer.relu else acc};"
    if layer.is_logits:
        return f"out[{index}] = cnz_requantize({acc}, {name}_m[{o}], {name}_s[{o}]);"
    return (f"{{ const int32_t v = cnz_requantize({acc}, {name}_m[{o}], {name}_s[{o}]) + "
            f"{layer.out_zero}; out[{index}] = (uint8_t)(v < {layer.lo} ? {layer.lo} : "
            f"v > {layer.hi} ? {layer.hi} : v); }}")


def _out_type(layer) -> str:
    if layer.weight.dtype.kind == "f":
        return "float"
    return "int32_t" if layer.is_logits else "uint8_t"


def _params(layer, name: str, bias: np.ndarray) -> tuple[str, int]:
    """Bias (and requantization) arrays: C text and bytes."""
    if layer.weight.dtype.kind == "f":
        return carray("float", f"{name}_b", bias), 4 * bias.size
    return (carray("int32_t", f"{name}_b", bias) + carray("int32_t", f"{name}_m", layer.multiplier)
            + carray("int32_t", f"{name}_s", layer.shift), 12 * bias.size)


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

_PAD = Template(r"""    for (int i = 0; i < $padded; i++) pad[i] = $zero;
    for (int c = 0; c < $ci; c++)
        for (int y = 0; y < $h; y++)
            for (int x = 0; x < $w; x++)
                pad[(c * $hp + y + $ph) * $wp + x + $pw] = in[(c * $h + y) * $w + x];
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


_SIMD = Template(r"""static void $name(const uint8_t *restrict in, $tout *restrict out$scratch)
{
$pad$channels}
""")

# one output channel of the simd form: its own loops, so the block's maxima stay in registers
_SIMD_CHANNEL = Template(r"""    for (int py = 0; py < $poh; py++)
        for (int bx = 0; bx < $blocks; bx++) {
            int32_t $best;
            for (int q = 0; q < $qh; q++) {
                const uint8_t *p = $src + ((py * $qsh + q) * $sh) * $wp + bx * $lanes;
$body            }
$stores        }
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
    data, const = _params(layer, name, bias)
    data = carray(tw, f"{name}_w", layer.weight) + data
    const += layer.weight.size * (4 if is_float else 1)
    common = dict(name=name, tin=tin, tout=_out_type(layer), tw=tw,
                  tacc="float" if is_float else "int32_t", co=geo.cout)
    if conv:
        _, cig, kh, kw = layer.weight.shape
        qh, qw, qsh, qsw = geo.pool
        poh, pow_ = geo.pooled
        h, w = geo.h + 2 * ph, geo.w + 2 * pw
        pad = f"    const {tin} *src = in;\n"
        if padded:
            zero = "0.0f" if is_float else layer.in_zero
            pad = _PAD.substitute(padded=padded, zero=zero, ci=geo.cin, h=geo.h, w=geo.w,
                                  hp=h, wp=w, ph=ph, pw=pw) + f"    const {tin} *src = pad;\n"
        text = _DENSE_CONV.substitute(
            common, cog=geo.cout // layer.groups, cig=cig, kh=kh, kw=kw, h=h, w=w,
            sh=layer.stride[0], sw=layer.stride[1], poh=poh, pow=pow_, qh=qh, qw=qw, qsh=qsh,
            qsw=qsw, pad=pad, scratch=f", {tin} *restrict pad" if padded else "",
            row=" + ".join(f"k[ky * {kw} + {x}] * p[ky * {w} + {x}]" for x in range(kw)),
            epilogue=_epilogue(layer, name, f"(o * {poh} + py) * {pow_} + px", "o", "best"))
    else:
        text = _DENSE_LINEAR.substitute(common, n=layer.weight.shape[1],
                                        epilogue=_epilogue(layer, name, "o", "o"))
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
        epilogue=_epilogue(layer, name, f"(o * {common['poh']} + py) * {common['pow']} + px",
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
    data, const = _params(layer, name, _folded_bias(layer, name))
    conv = layer.kind == "conv"
    ph, pw = layer.padding if conv else (0, 0)
    pad = "" if not padded else _PAD.substitute(
        padded=padded, zero=layer.in_zero, ci=geo.cin, h=geo.h, w=geo.w,
        hp=geo.h + 2 * ph, wp=wp, ph=ph, pw=pw)
    qh, qw, qsh, qsw = geo.pool
    poh, pow_ = geo.pooled
    common = dict(name=name, tout=_out_type(layer), pad=pad, poh=poh, pow=pow_, qh=qh, qw=qw,
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
        text = _RUNS.substitute(common, run=run, inner=inner, epilogue=_epilogue(
            layer, name, f"(o * {poh} + py) * {pow_} + px", "o", "best"))
        return Emitted(data, text, const, padded)
    if form == "packed":
        return _emit_packed(layer, name, geo, common, data, const, off, padded)
    if form == "simd":
        return _emit_simd(layer, name, geo, common, data, const, off)
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
            body.append("            " + _epilogue(layer, name, f"({o} * {poh} + py) * {pow_} + px",
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
        stores.append("            " + _epilogue(layer, name, f"({o} * {poh} + py) * {pow_} + px",
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
            f"        {_epilogue(layer, name, 'o', 'o')}\n"
            "    }\n}\n")


def _emit_simd(layer, name: str, geo: Geometry, common: dict, data: str, const: int,
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
    pad = "" if not padded else _PAD.substitute(
        padded=padded, zero=layer.in_zero, ci=geo.cin, h=geo.h, w=geo.w,
        hp=geo.h + 2 * ph, wp=wp, ph=ph, pw=pw)
    channels = []
    indent = " " * 16
    per = LANES // qw  # pooled outputs per block
    for o in range(len(weight)):
        groups = lane_groups(weight[o], off[o])
        body = [f"{indent}int32_t a0 = {name}_b[{o}], a1 = a0, a2 = a0, a3 = a0;\n"]
        body.append(f"{indent}uint32_t w, e, d;\n" if groups else f"{indent}(void)p;\n")
        for value, taps in groups:
            for i, t in enumerate(taps):
                add = ("e = cnz_even(w); d = cnz_odd(w);" if i == 0 else
                       "e = cnz_add_even(e, w); d = cnz_add_odd(d, w);")
                body.append(f"{indent}w = cnz_load4(p + {t}); {add}\n")
            body.append(f"{indent}a0 = cnz_mla_lo(a0, e, {value}); "
                        f"a1 = cnz_mla_lo(a1, d, {value}); a2 = cnz_mla_hi(a2, e, {value}); "
                        f"a3 = cnz_mla_hi(a3, d, {value});\n")
        # the block's columns pooled across (a value per pooled output), then down the rows
        stores = []
        for k in range(per):
            value = f"b{k}"
            for j in range(k * qw, (k + 1) * qw):
                value = f"cnz_max({value}, a{j})"
            body.append(f"{indent}b{k} = {value};\n")
            px = f"bx * {per} + {k}"
            store = _epilogue(layer, name, f"({o} * {poh} + py) * {pow_} + {px}", str(o), f"b{k}")
            guard = f"if ({px} < {pow_}) " if per * blocks > pow_ else ""
            stores.append(f"            {guard}{store}\n")
        channels.append(_SIMD_CHANNEL.substitute(
            best=", ".join(f"b{k} = INT32_MIN" for k in range(per)), poh=poh, blocks=blocks,
            qh=qh, src="pad" if padded else "in", qsh=qsh, sh=sh, wp=wp, lanes=LANES,
            body="".join(body), stores="".join(stores)))
    text = _SIMD.substitute(name=name, tout=common["tout"], pad=pad,
                            scratch=", uint8_t *restrict pad" if padded else "",
                            channels="".join(channels))
    return Emitted(data, text, const, padded)
