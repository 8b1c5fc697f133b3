"""The forms a conv or linear layer's C kernel can take, how each stores the weights (the packed
form's encoding, :func:`pack`), and the cost model that chooses among them; the C text itself
is :mod:`cnnzip.export.c.kernels`.

Six forms compute a conv or linear layer (an :class:`~cnnzip.export.reference.IntLayer`, or a
:class:`~cnnzip.export.floatref.FloatLayer` for the float baseline):

``dense``
    every weight, from a ``const`` array (what a runtime without sparse kernels runs); a
    padding convolution reads a padded copy of its input (zeros, or for integers the zero
    point, folded into the bias as ``sparse`` does), so its loops have constant bounds and
    each kernel row is one expression;
``sparse``
    only the non-zero weights: per output channel a run of values and input offsets (the
    offsets index a zero-point-padded copy of the input, so the inner loop has no bounds); the
    input zero point is folded into the bias (``Σ w·(x − z) = Σ w·x − z·Σ w``), so each
    multiply-accumulate is a load of the offset, the value and the input;
``unrolled``
    only the non-zero weights, as immediates in straight-line code (no index loads; the
    inputs of equal weights are summed before one multiply; the most flash per weight);
``simd``
    a convolution of row stride 1 as ``unrolled``, over four adjacent output columns at once:
    each load of four input bytes is added into two registers of two 16-bit lanes (UXTAB16 on
    a Cortex-M4, one 32-bit add elsewhere), the inputs of equal weights summed in the lanes
    before one multiply per column (SMLABB / SMLATB); where weights repeat (shared or 4-bit
    layers) about two thirds of ``unrolled``'s instructions, where each weight is its own
    value about as many; a fused pooling window's rows are a loop over one copy of the code;
``simd-rows``
    ``simd`` with each row of the pooling window as its own copy of the code (no loop to
    carry the maxima and the counter across rows): fewer instructions, the code once per row;
``packed``
    for a layer whose non-zero weights take at most 63 distinct values (weight-shared layers,
    4-, 3-, 2- and 1-bit weights): per output channel a stream of one-byte entries, EIE's
    format: ``b`` bits index the layer's table of weight values (entry 0 is zero), the other
    ``8 − b`` bits give the distance to the previous non-zero weight (a longer gap takes a
    zero-valued padding entry); a convolution maps the weight position to its input offset
    through one table per layer. One byte per weight (against three for ``sparse``) for a few
    more instructions per multiply-accumulate.

The cost model (:func:`estimate`) predicts each form's executed instructions on a Cortex-M4
from the multiply-accumulates it performs and the outputs it requantizes, with per-form
constants fitted to measurements on the emulated Cortex-M4 (``benchmarks/c_speed.py`` prints
the prediction beside the measurement); :func:`choose` takes the fastest form (``fast``), the
one with the fewest constant bytes (``small``) or weighs both (``balanced``, the default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnnzip.errors import CnnzipError

FORMS = ("dense", "sparse", "unrolled", "simd", "simd-rows", "packed")
POLICIES = ("balanced", "fast", "small", *FORMS)
UNROLL_LIMIT = 8192  # non-zero weights of an unrolled convolution (one block of code)
# ... of a simd convolution or an unrolled linear layer (a block of code per output channel,
# which the compiler takes in linear time)
CHANNEL_UNROLL_LIMIT = 65536
LANES = 4  # output columns a simd block computes
MAX_LANE_TERMS = 128  # bytes summed in one 16-bit lane: 128 · 255 < 2^15 (SMLABB reads it signed)
MAX_CODE_BITS = 6  # the packed form keeps at least 2 bits of each entry for the gap

# The cost model, fitted on the emulated Cortex-M4 (arm-none-eabi-gcc -O2, lenet5 layers;
# benchmarks/c_speed.py prints prediction and measurement side by side): executed instructions
# per multiply-accumulate by form and layer kind (packed: per entry, padding included), per
# stored output (requantization, clamp, store), and constant bytes per non-zero weight (sparse:
# a 2-byte offset beside the value; unrolled: about 12 bytes of Thumb-2 code per
# multiply-accumulate; packed: per entry byte).
_PER_MAC = {("dense", "conv"): 4.8, ("dense", "linear"): 4.6, ("sparse", "conv"): 9.0,
            ("sparse", "linear"): 8.5, ("unrolled", "conv"): 3.3, ("unrolled", "linear"): 3.8,
            ("packed", "conv"): 17.5, ("packed", "linear"): 13.0,
            ("float", "conv"): 5.0, ("float", "linear"): 4.6}
_PER_OUTPUT = {"int": 20.0, "float": 6.0}
_BYTES_PER_WEIGHT = {"dense": 1.0, "sparse": 3.0, "unrolled": 12.0, "simd": 12.0, "packed": 1.0}
# simd: instructions per word loaded (per tap and block row: a load, two lane adds), per lane
# group (four multiplies and a weight constant), per channel and block row (bias, maxima, the
# loop over the pooling window's rows; fewer in simd-rows, whose rows are each their own
# code), and constant bytes per group
_SIMD_TAP, _SIMD_GROUP, _SIMD_CHANNEL, _SIMD_ROW_LOOP, _SIMD_GROUP_BYTES = 3.0, 5.0, 12.5, 9.0, 20.0
# ``balanced``: one byte of constant data is worth this many instructions per inference
BYTE_WORTH = 8.0


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


def simd_fits(layer, geo: Geometry) -> bool:
    """Whether ``layer`` has the simd form: an integer convolution of row stride 1 whose fused
    pooling (if any) takes 1, 2 or 4 adjacent columns without overlap."""
    _, qw, _, qsw = geo.pool
    return (layer.kind == "conv" and layer.weight.dtype.kind != "f" and layer.stride[1] == 1
            and qw == qsw and qw in (1, 2, 4))


def lane_groups(weight: np.ndarray, offset: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """One output channel's non-zero weights as (value, input offsets) groups of at most
    :data:`MAX_LANE_TERMS` offsets: what one simd lane sums before one multiply."""
    groups = []
    for value in np.unique(weight[weight != 0]):
        taps = offset[weight == value]
        groups += [(int(value), taps[i:i + MAX_LANE_TERMS])
                   for i in range(0, len(taps), MAX_LANE_TERMS)]
    return groups


def _estimate_simd(layer, geo: Geometry, form: str) -> dict[str, float]:
    qh = geo.pool[0]
    blocks = -(-geo.pooled[1] * geo.pool[1] // LANES) * geo.pooled[0] * qh
    weight = layer.weight.reshape(len(layer.weight), -1)
    groups = sum(len(lane_groups(row, np.zeros(len(row), np.int64))) for row in weight)
    taps = np.count_nonzero(weight)
    copies = qh if form == "simd-rows" else 1  # the code of a row, once or once per row
    channel = _SIMD_CHANNEL + (_SIMD_ROW_LOOP if copies < qh else 0.0)
    work = _SIMD_TAP * taps + _SIMD_GROUP * groups + channel * len(weight)
    return {"instructions": blocks * work + _PER_OUTPUT["int"] * geo.outputs,
            "const_bytes": copies * (_BYTES_PER_WEIGHT["simd"] * taps
                                     + _SIMD_GROUP_BYTES * groups) + 12 * len(weight)}


def estimate(layer, geo: Geometry, form: str) -> dict[str, float]:
    """Predicted Cortex-M4 instructions and constant bytes of ``layer`` computed by ``form``."""
    if form in ("simd", "simd-rows"):
        return _estimate_simd(layer, geo, form)
    dense, nonzero = macs(layer, geo)
    is_float = layer.weight.dtype.kind == "f"
    per_mac = _PER_MAC["float" if is_float else form, layer.kind]
    work = dense if form == "dense" else nonzero
    weights = layer.weight.size if form == "dense" else np.count_nonzero(layer.weight)
    if form == "packed":  # bytes of entries; padding entries (or zero codes) are executed too
        packed = pack(layer)
        weights = packed.entries.size
        steps = layer.weight.size if packed.gapless else packed.entries.size
        work = steps * geo.positions
    item = layer.weight.dtype.itemsize if is_float else 1
    params = 4 * layer.weight.shape[0] * (1 if is_float else 3)  # bias (and multiplier, shift)
    return {"instructions": per_mac * work
            + _PER_OUTPUT["float" if is_float else "int"] * geo.outputs,
            "const_bytes": _BYTES_PER_WEIGHT[form] * weights * item + params}


def choose(layer, geo: Geometry, policy: str = "balanced") -> str:
    """The form of ``layer``: ``policy`` itself when it names one, else the one the cost model
    finds best: fewest instructions (``fast``), fewest constant bytes (``small``) or fewest
    instructions plus :data:`BYTE_WORTH` per constant byte (``balanced``). Float layers are
    always dense; a convolution with more than :data:`UNROLL_LIMIT` non-zero weights is not
    unrolled, nor a linear layer or a simd convolution with more than
    :data:`CHANNEL_UNROLL_LIMIT` (sparse instead): their straight-line code would take minutes
    to compile; a layer with more than 2^:data:`MAX_CODE_BITS` − 1 distinct weight values is not
    packed (sparse instead)."""
    if policy not in POLICIES:
        raise CnnzipError(f"kernels {policy!r}: choose one of {', '.join(POLICIES)}")
    if layer.weight.dtype.kind == "f":
        return "dense"
    nonzero = np.count_nonzero(layer.weight)
    simd = simd_fits(layer, geo) and nonzero <= CHANNEL_UNROLL_LIMIT
    fits = {"unrolled": nonzero <= (UNROLL_LIMIT if layer.kind == "conv"
                                    else CHANNEL_UNROLL_LIMIT),
            "simd": simd, "simd-rows": simd, "packed": pack(layer) is not None}
    allowed = [f for f in FORMS if fits.get(f, True)]
    if policy in FORMS:
        return policy if policy in allowed else "sparse"
    worth = {"fast": (1.0, 0.0), "small": (1e-9, 1.0), "balanced": (1.0, BYTE_WORTH)}[policy]

    def cost(form: str) -> float:
        e = estimate(layer, geo, form)
        return worth[0] * e["instructions"] + worth[1] * e["const_bytes"]
    return min(allowed, key=cost)


@dataclass(frozen=True)
class Packed:
    """A layer's weights in the packed form: a ``table`` of its weight values (int8) and, per
    output channel, a run of codes into it, in one of two layouts, whichever is smaller:

    - with gaps (``gapless`` false): one byte per entry; its low ``bits`` index the table
      (entry 0 is zero), its high ``8 − bits`` the distance to the previous non-zero weight
      minus one (a longer gap takes zero-valued padding entries); ``start`` says where each
      channel's run begins (one more than the channels);
    - gapless: every weight's code, ``bits`` of 1, 2 or 4, packed 8 / bits to a byte, the
      first in the low bits; each channel's run a whole number of bytes.
    """

    table: np.ndarray
    bits: int
    entries: np.ndarray
    start: np.ndarray
    gapless: bool = False

    def weights(self, width: int) -> np.ndarray:
        """The (out, width) weight rows the entries stand for (decoding, for tests)."""
        rows = np.zeros((len(self.start) - 1, width), np.int64)
        mask = (1 << self.bits) - 1
        for o in range(len(rows)):
            run = self.entries[self.start[o]:self.start[o + 1]].astype(np.int64)
            if self.gapless:
                shifts = np.arange(0, 8, self.bits)
                codes = ((run[:, None] >> shifts[None, :]) & mask).reshape(-1)[:width]
                rows[o] = self.table[codes]
            else:
                position = np.cumsum((run >> self.bits) + 1) - 1
                rows[o, position] += self.table[run & mask]
        return rows


def pack(layer) -> Packed | None:
    """``layer``'s weights in the packed form (the smaller layout), or None when they take more
    than 2^:data:`MAX_CODE_BITS` − 1 distinct non-zero values (or are float)."""
    if layer.weight.dtype.kind == "f":
        return None
    weight = layer.weight.reshape(len(layer.weight), -1)
    values = np.unique(weight[weight != 0])
    bits = max(1, int(np.ceil(np.log2(len(values) + 1))))
    if bits > MAX_CODE_BITS:
        return None
    gaps = _with_gaps(weight, values, bits)
    table = np.unique(weight)  # zero only where a weight is zero
    dense_bits = next(b for b in (1, 2, 4, 8) if (1 << b) >= len(table))
    if dense_bits < 8:
        per = 8 // dense_bits
        width = -(-weight.shape[1] // per) * per
        codes = np.zeros((len(weight), width), np.int64)
        codes[:, :weight.shape[1]] = np.searchsorted(table, weight)
        shifts = np.arange(per) * dense_bits
        entries = (codes.reshape(len(weight), -1, per) << shifts).sum(2).reshape(-1)
        if entries.size < gaps.entries.size:
            return Packed(table, dense_bits, entries.astype(np.uint8),
                          np.arange(len(weight) + 1) * (width // per), gapless=True)
    return gaps


def _with_gaps(weight: np.ndarray, values: np.ndarray, bits: int) -> Packed:
    span = 1 << (8 - bits)  # the longest gap one entry spans
    runs = []
    for row in weight:
        position = np.flatnonzero(row)
        gaps = np.diff(position, prepend=-1)
        pads = (gaps - 1) // span  # zero-valued entries that bridge a longer gap
        gap = np.full(len(position) + int(pads.sum()), span)
        code = np.zeros(len(gap), np.int64)
        real = np.cumsum(pads + 1) - 1
        gap[real] = gaps - pads * span
        code[real] = np.searchsorted(values, row[position]) + 1
        runs.append(((gap - 1) << bits) | code)
    start = np.concatenate([[0], np.cumsum([len(r) for r in runs])])
    entries = np.concatenate(runs).astype(np.uint8) if runs else np.zeros(0, np.uint8)
    return Packed(np.concatenate([[0], values]).astype(np.int64), bits, entries, start)
