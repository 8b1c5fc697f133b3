"""What every kernel form is (:class:`Form`: ``fits``, ``estimate``, ``emit``) and what the
forms share: the cost of a form that spends a fixed number of instructions per
multiply-accumulate, the limits on straight-line code, and the set-up of the integer forms
that read only the non-zero weights (the input zero point folded into the bias, the padded
copy, the loop over a run of weights)."""

from __future__ import annotations

from dataclasses import dataclass
from string import Template

import numpy as np

from cnnzip.errors import CnnzipError
from cnnzip.export.c.ctext import Emitted, params, pad_copy, out_type
from cnnzip.export.c.geometry import Geometry, macs, taps

# Instructions per stored output (requantization, clamp, store), fitted on the emulated
# Cortex-M4 (arm-none-eabi-gcc -O2, lenet5 layers; benchmarks/c_speed.py prints prediction
# and measurement side by side)
PER_OUTPUT = {"int": 20.0, "float": 6.0}
UNROLL_LIMIT = 8192  # non-zero weights of an unrolled convolution (one block of code)
# ... of a simd convolution or an unrolled linear layer (a block of code per output channel,
# which the compiler takes in linear time)
CHANNEL_UNROLL_LIMIT = 65536


class Form:
    """One way a conv or linear layer's kernel computes (an IntLayer, Logits or FloatLayer):
    ``name`` (what ``--kernels`` names), ``order`` (among forms the cost model finds equal, the
    lower first), whether it ``fits`` a layer, its predicted Cortex-M4 instructions and
    constant bytes (``estimate``), and its C (``emit``)."""

    name: str = ""
    order: int = 0

    def fits(self, layer, geo: Geometry) -> bool:
        return True

    def estimate(self, layer, geo: Geometry) -> dict[str, float]:
        raise NotImplementedError

    def emit(self, layer, name: str, geo: Geometry) -> Emitted:
        raise NotImplementedError


def per_mac_estimate(layer, geo: Geometry, per_mac: float, bytes_per_weight: float, *,
                     work: int, weights: int) -> dict[str, float]:
    """Instructions of ``work`` multiply-accumulates at ``per_mac`` each and one requantized
    output per stored value; constant bytes of ``weights`` at ``bytes_per_weight`` each (times
    the float weight size) and the bias (and multiplier and shift) arrays."""
    is_float = layer.weight.dtype.kind == "f"
    item = layer.weight.dtype.itemsize if is_float else 1
    bias = 4 * layer.weight.shape[0] * (1 if is_float else 3)  # bias (and multiplier, shift)
    return {"instructions": per_mac * work
            + PER_OUTPUT["float" if is_float else "int"] * geo.outputs,
            "const_bytes": bytes_per_weight * weights * item + bias}


def nonzero_estimate(layer, geo: Geometry, per_mac: float,
                     bytes_per_weight: float) -> dict[str, float]:
    """:func:`per_mac_estimate` of a form that computes and stores only the non-zero
    weights."""
    return per_mac_estimate(layer, geo, per_mac, bytes_per_weight, work=macs(layer, geo)[1],
                            weights=np.count_nonzero(layer.weight))


def folded_bias(layer, name: str) -> np.ndarray:
    """The bias with the input zero point folded in: Σ w·(x − z) + b = Σ w·x + (b − z·Σ w)."""
    weight = layer.weight.reshape(len(layer.weight), -1)
    bias = layer.bias - layer.in_zero * weight.sum(1)
    if (np.abs(weight).sum(1) * 255 + np.abs(bias)).max(initial=0) >= 2 ** 31:
        raise CnnzipError(f"{name}: folding the zero point could leave int32")
    return bias


@dataclass(frozen=True)
class Runs:
    """The set-up of an integer form that reads only the non-zero weights: the weight rows
    (out, in/groups·kh·kw), each weight's input offset, the padded copy's bytes, the bias and
    requantization arrays (the zero point folded in: the padded copy holds z where a padding
    tap reads, so those taps add w·z − w·z = 0 as well), and the template values the forms'
    C shares (``common``)."""

    weight: np.ndarray
    off: np.ndarray
    padded: int
    data: str
    const: int
    common: dict


def runs(layer, name: str, geo: Geometry) -> Runs:
    """:class:`Runs` of ``layer`` on ``geo``."""
    weight = layer.weight.reshape(len(layer.weight), -1)
    off, wp, padded = taps(layer, geo)
    data, const = params(layer, name, folded_bias(layer, name))
    conv = layer.kind == "conv"
    qh, qw, qsh, qsw = geo.pool
    poh, pow_ = geo.pooled
    common = dict(name=name, tout=out_type(layer), pad=pad_copy(layer, geo, wp, padded),
                  poh=poh, pow=pow_, qh=qh, qw=qw, qsh=qsh, qsw=qsw,
                  sh=layer.stride[0] if conv else 1, sw=layer.stride[1] if conv else 1, wp=wp,
                  co=geo.cout, src="pad" if padded else "in",
                  scratch=", uint8_t *restrict pad" if padded else "")
    return Runs(weight, off, padded, data, const, common)


# sparse and packed: per output channel a run of non-zero weights ($run sets it up and the
# channel's input base ``src``; $inner adds the run's products to ``acc``)
RUNS = Template(r"""static void $name(const uint8_t *restrict in, $tout *restrict out$scratch)
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
