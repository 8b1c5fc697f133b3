"""Weight sharing into TensorFlow Lite Micro's LUT compression: a weight tensor with few
distinct values (k-means shared, low-bit) is stored as a table of its values and bit-packed
indices, and a DECODE operator before its layer rebuilds it at run time (tflite-micro's own
``compression`` package writes both). The file shrinks; the decoded weights need arena
memory while their layer runs, which TFLM's planner counts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
# compress: the package's function (its module of the same name is shadowed)
from tflite_micro.tensorflow.lite.micro.compression import compress, lut, spec

MAX_INDEX_BITS = 7  # what the LUT format's index fields take


@dataclass(frozen=True)
class Table:
    """How one weight tensor is compressed: ``bits`` per index, a table of values per slice
    along ``axis``, ``bytes`` its indices and tables take against ``plain`` bytes as int8."""

    tensor: int
    bits: int
    axis: int
    bytes: int
    plain: int


def plan(weights: list[tuple[int, np.ndarray, int]]) -> list[Table]:
    """For each weight tensor (its index, values, channel axis), a table of values per output
    channel (the quantization's channels), where its indices and tables take fewer bytes than
    the int8 values. One table for the whole tensor would often be smaller, but this TFLM
    release decodes such a tensor wrongly in layers with per-channel scales (measured: every
    logit differs), so it is not used."""
    tables = []
    for index, values, axis in weights:
        packed = lut.compress_array(values, axis)
        bits = packed.index_bitwidth
        size = -(-values.size * bits // 8) + len(packed.lookup_tables) * max(
            len(t) for t in packed.lookup_tables)
        if bits <= MAX_INDEX_BITS and size < values.size:
            tables.append(Table(index, bits, axis, size, values.size))
    return tables


def compressed(model: bytes, tables: list[Table]) -> bytes:
    """``model`` with each planned tensor LUT-compressed and its DECODE operator inserted."""
    specs = [spec.Tensor(0, t.tensor, [spec.LookUpTableCompression(t.bits,
                                                                    spec.PerChannel(t.axis))])
             for t in tables]
    return bytes(compress(model, specs))
