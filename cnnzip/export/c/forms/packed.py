"""``packed``: for a layer whose non-zero weights take at most 63 distinct values
(weight-shared layers, 4-, 3-, 2- and 1-bit weights): per output channel a stream of one-byte
entries, EIE's format: ``b`` bits index the layer's table of weight values (entry 0 is zero),
the other ``8 − b`` bits give the distance to the previous non-zero weight (a longer gap takes
a zero-valued padding entry); a convolution maps the weight position to its input offset
through one table per layer. One byte per weight (against three for ``sparse``) for a few more
instructions per multiply-accumulate. The encoding is :func:`pack`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnnzip.errors import CnnzipError
from cnnzip.export.c.ctext import Emitted, carray, epilogue
from cnnzip.export.c.forms.base import RUNS, Form, per_mac_estimate, runs
from cnnzip.export.c.geometry import Geometry

MAX_CODE_BITS = 6  # the packed form keeps at least 2 bits of each entry for the gap
_PER_MAC = {"conv": 17.5, "linear": 13.0}  # per entry, padding included


class PackedForm(Form):
    name, order = "packed", 40

    def fits(self, layer, geo: Geometry) -> bool:
        return pack(layer) is not None

    def estimate(self, layer, geo: Geometry) -> dict[str, float]:
        # bytes of entries; padding entries (or zero codes) are executed too
        packed = pack(layer)
        steps = layer.weight.size if packed.gapless else packed.entries.size
        return per_mac_estimate(layer, geo, _PER_MAC[layer.kind], 1.0,
                                work=steps * geo.positions, weights=packed.entries.size)

    def emit(self, layer, name: str, geo: Geometry) -> Emitted:
        return _emit(layer, name, geo)


def _emit(layer, name: str, geo: Geometry) -> Emitted:
    r = runs(layer, name, geo)
    common, data, const, off, padded = r.common, r.data, r.const, r.off, r.padded
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
    text = RUNS.substitute(
        common, run=run, inner=inner,
        epilogue=epilogue(layer, name, f"(o * {common['poh']} + py) * {common['pow']} + px",
                           "o", "best"))
    return Emitted(data, text, const, padded)



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


FORMS = (PackedForm(),)
