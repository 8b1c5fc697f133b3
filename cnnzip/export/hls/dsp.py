"""Two 8-bit multiplies in one DSP48E2 slice, as a bit-exact software model.

The published scheme (Xilinx WP486, "Deep learning with INT8 optimization"): two weights ``a``
and ``b`` that multiply the same activation ``c`` enter the slice's pre-adder as
``(a << 18) + b`` (27 bits), which the multiplier takes times ``c`` (18 bits) into the 48-bit
accumulator ``P``: ``P = (a·c << 18) + b·c``. The low product is ``P[17:0]`` sign-extended;
the high product is ``(P >> 18) + P[17]``: when the low product is negative it borrows one
from the high half, and bit 17 (its sign) gives it back. Without that correction the high
product is wrong whenever ``b·c < 0``, about half the time.

``P`` can also accumulate: after ``n`` products the low half holds Σ b·c, exact while it stays
in 18 signed bits. :func:`max_exact_terms` finds the longest such sum for given weight and
activation ranges (7 for int8 × int8: 8 fail only when all eight are −128 · −128; 4 for int8
weights × uint8 activations).
"""

from __future__ import annotations

import numpy as np

LOW_BITS = 18  # the low product's field in P
P_BITS = 48  # the accumulator
PRE_ADDER_BITS = 27
B_BITS = 18  # the multiplier's second operand (the shared activation)


def _wrap(x: np.ndarray, bits: int) -> np.ndarray:
    """Two's-complement wrap of int64 values to ``bits`` bits (what the slice's register
    holds)."""
    half = np.int64(1) << (bits - 1)
    return ((x + half) & ((np.int64(1) << bits) - 1)) - half


def pre_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The pre-adder's output ``(a << 18) + b`` in its 27 bits."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    return _wrap((a << LOW_BITS) + b, PRE_ADDER_BITS)


def unpack(p: np.ndarray, *, correct: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) products from the accumulator ``P`` (48-bit values in int64);
    ``correct=False`` leaves out the ``P[17]`` term (to show what it fixes)."""
    p = np.asarray(p, np.int64)
    low = _wrap(p, LOW_BITS)
    high = p >> LOW_BITS
    if correct:
        high = high + ((p >> (LOW_BITS - 1)) & 1)
    return high, low


def dsp_multiply(a: np.ndarray, b: np.ndarray, c: np.ndarray, *, correct: bool = True,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(a·c, b·c)`` computed as one DSP48E2 does (elementwise over arrays)."""
    c = np.asarray(c, np.int64)
    return unpack(_wrap(pre_add(a, b) * c, P_BITS), correct=correct)


def dsp_dot(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Σ a·c, Σ b·c)`` over the last axis accumulated in one slice's ``P`` (each product
    added to the 48-bit accumulator), then unpacked once."""
    c = np.asarray(c, np.int64)
    products = _wrap(pre_add(a, b) * c, P_BITS)
    return unpack(_wrap(products.sum(-1), P_BITS))


def max_exact_terms(w_range: tuple[int, int], x_range: tuple[int, int]) -> int:
    """The most products of weights in ``w_range`` and activations in ``x_range`` one slice
    can accumulate with both sums exact (the low sum must stay in 18 signed bits); 0 if not
    even one product fits.

    Raises:
        ValueError: operands wider than the slice's ports (pre-adder: 27 bits with the high
            weight shifted by 18, so weights of 8 bits at most; activations: 18 bits).
    """
    (w_lo, w_hi), (x_lo, x_hi) = w_range, x_range
    if w_lo < -128 or w_hi > 127:
        raise ValueError(f"weights in [{w_lo}, {w_hi}] do not fit the packed 8-bit field")
    if x_lo < -(1 << (B_BITS - 1)) or x_hi >= 1 << (B_BITS - 1):
        raise ValueError(f"activations in [{x_lo}, {x_hi}] do not fit the 18-bit port")
    corners = [w * x for w in (w_lo, w_hi) for x in (x_lo, x_hi)]
    most, least = max(corners + [0]), min(corners + [0])
    limit_hi, limit_lo = (1 << (LOW_BITS - 1)) - 1, -(1 << (LOW_BITS - 1))
    n = 0
    while (n + 1) * most <= limit_hi and (n + 1) * least >= limit_lo:
        n += 1
        if n >= 1 << 20:  # all-zero ranges: any number of terms
            break
    return n


def packed_matmul(weight: np.ndarray, x: np.ndarray, terms: int | None = None) -> np.ndarray:
    """``x @ weight.T`` for integer weights (out, in) and activations (batch, in) with output
    rows paired two per slice: rows 2k and 2k+1 share every activation, each slice
    accumulates ``terms`` products (default: :func:`max_exact_terms` of the operands) and is
    unpacked, and the partial sums are added outside the slice (an odd last row is paired
    with zeros)."""
    weight, x = np.asarray(weight, np.int64), np.asarray(x, np.int64)
    if weight.ndim != 2 or x.ndim != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"shapes {weight.shape} and {x.shape} do not multiply")
    if terms is None:
        terms = max_exact_terms((int(weight.min(initial=0)), int(weight.max(initial=0))),
                                (int(x.min(initial=0)), int(x.max(initial=0))))
    if terms < 1:
        raise ValueError("not one product fits the slice's low field")
    rows = weight if len(weight) % 2 == 0 else np.concatenate([weight, weight[:1] * 0])
    high, low = rows[0::2], rows[1::2]  # (pairs, in)
    out = np.zeros((len(x), len(rows)), np.int64)
    for start in range(0, weight.shape[1], terms):
        part = slice(start, start + terms)
        # (batch, pairs, terms): the slice of every pair for every input row
        h, lo = dsp_dot(high[None, :, part], low[None, :, part], x[:, None, part])
        out[:, 0::2] += h
        out[:, 1::2] += lo
    return out[:, :len(weight)]


def packed_conv2d(weight: np.ndarray, x: np.ndarray, stride: tuple[int, int] = (1, 1),
                  padding: tuple[int, int] = (0, 0), terms: int | None = None) -> np.ndarray:
    """An integer convolution (groups 1) computed by :func:`packed_matmul` on its unfolded
    input: (batch, in, h, w) integers, weights (out, in, kh, kw) → (batch, out, oh, ow)."""
    import torch
    import torch.nn.functional as F

    weight, x = np.asarray(weight, np.int64), np.asarray(x, np.int64)
    out_c, _, kh, kw = weight.shape
    cols = F.unfold(torch.from_numpy(x.astype(np.float64)), (kh, kw), stride=stride,
                    padding=padding).numpy().astype(np.int64)  # (batch, in·kh·kw, L)
    n, k, positions = cols.shape
    flat = cols.transpose(0, 2, 1).reshape(n * positions, k)
    acc = packed_matmul(weight.reshape(out_c, -1), flat, terms)
    oh = (x.shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    ow = (x.shape[3] + 2 * padding[1] - kw) // stride[1] + 1
    return acc.reshape(n, oh, ow, out_c).transpose(0, 3, 1, 2)
