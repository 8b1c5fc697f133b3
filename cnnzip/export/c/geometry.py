"""Where a conv or linear layer reads and writes (:class:`Geometry`), its multiply-accumulates,
and where each of its weights reads the (padded) input (:func:`taps`): what every kernel form
and the cost model need of a layer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Where a layer reads and writes: input (C, H, W), its own output (C', H', W') and, with a
    max pooling fused into it, the pooled output (C', PH, PW) with the pooling's window and
    stride. A linear layer has H = W = H' = W' = 1."""

    cin: int
    h: int
    w: int
    cout: int
    oh: int
    ow: int
    pool: tuple[int, int, int, int] = (1, 1, 1, 1)  # window h, w; stride h, w

    @property
    def pooled(self) -> tuple[int, int]:
        qh, qw, sh, sw = self.pool
        return (self.oh - qh) // sh + 1, (self.ow - qw) // sw + 1

    @property
    def outputs(self) -> int:
        """Values stored (requantized once each: the pooling takes the maximum accumulator)."""
        return self.cout * self.pooled[0] * self.pooled[1]

    @property
    def positions(self) -> int:
        """Accumulators computed per output channel."""
        qh, qw, _, _ = self.pool
        return self.pooled[0] * self.pooled[1] * qh * qw


def geometry(layer, in_shape, out_shape, pool=None) -> Geometry:
    """The geometry of ``layer`` from its input and output shapes and a fused max pooling."""
    if layer.kind != "conv":
        return Geometry(int(np.prod(in_shape)), 1, 1, int(np.prod(out_shape)), 1, 1)
    window = (1, 1, 1, 1) if pool is None else (*pool.kernel, *pool.stride)
    return Geometry(*in_shape, *out_shape, window)


def macs(layer, geo: Geometry) -> tuple[int, int]:
    """(dense, non-zero) multiply-accumulates of one inference (padding taps counted)."""
    weight = layer.weight.reshape(len(layer.weight), -1)
    return int(weight.size * geo.positions), int(np.count_nonzero(weight) * geo.positions)


def taps(layer, geo: Geometry) -> tuple[np.ndarray, int, int]:
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
