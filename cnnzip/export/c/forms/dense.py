"""``dense``: every weight, from a ``const`` array (what a runtime without sparse kernels
runs); a padding convolution reads a padded copy of its input (zeros, or for integers the zero
point, folded into the bias as ``sparse`` does), so its loops have constant bounds and each
kernel row is one expression. The one form of float layers (the baseline's C)."""

from __future__ import annotations

from string import Template

from cnnzip.export.c.ctext import PAD, Emitted, carray, epilogue, out_type, params
from cnnzip.export.c.forms.base import Form, folded_bias, per_mac_estimate
from cnnzip.export.c.geometry import Geometry, macs

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

# instructions per multiply-accumulate by layer kind, integer and float (fitted on the
# emulated Cortex-M4; benchmarks/c_speed.py)
_PER_MAC = {"conv": 4.8, "linear": 4.6}
_FLOAT_PER_MAC = {"conv": 5.0, "linear": 4.6}


class Dense(Form):
    name, order = "dense", 0

    def estimate(self, layer, geo: Geometry) -> dict[str, float]:
        per_mac = (_FLOAT_PER_MAC if layer.weight.dtype.kind == "f" else _PER_MAC)[layer.kind]
        return per_mac_estimate(layer, geo, per_mac, 1.0, work=macs(layer, geo)[0],
                                weights=layer.weight.size)

    def emit(self, layer, name: str, geo: Geometry) -> Emitted:
        is_float = layer.weight.dtype.kind == "f"
        tin, tw = ("float", "float") if is_float else ("uint8_t", "int8_t")
        conv = layer.kind == "conv"
        ph, pw = layer.padding if conv else (0, 0)
        # a padding conv reads a padded copy (zeros, or the zero point folded into the bias)
        bias = layer.bias if is_float else folded_bias(layer, name)
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
                sh=layer.stride[0], sw=layer.stride[1], poh=poh, pow=pow_, qh=qh, qw=qw,
                qsh=qsh, qsw=qsw, pad=pad, scratch=f", {tin} *restrict pad" if padded else "",
                row=" + ".join(f"k[ky * {kw} + {x}] * p[ky * {w} + {x}]" for x in range(kw)),
                epilogue=epilogue(layer, name, f"(o * {poh} + py) * {pow_} + px", "o", "best"))
        else:
            text = _DENSE_LINEAR.substitute(common, n=layer.weight.shape[1],
                                            epilogue=epilogue(layer, name, "o", "o"))
        return Emitted(data, text, const, padded * (4 if is_float else 1))


FORMS = (Dense(),)
