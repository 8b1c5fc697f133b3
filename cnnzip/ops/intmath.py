"""Integer-only arithmetic, defined once: the fixed-point requantization that the numpy
reference and the generated C both follow, bit for bit.

A real factor ``s`` (e.g. ``input scale × weight scale / output scale``) becomes a Q31
multiplier ``m`` in [2^30, 2^31) and a power-of-two ``shift`` with ``s ≈ m · 2^(shift - 31)``
(as TensorFlow Lite's ``QuantizeMultiplier``); an int32 accumulator ``x`` is scaled by it as
CMSIS-NN's default ``arm_nn_requantize`` does: a left shift for ``shift > 0``, the rounding
doubling high multiply by ``m`` (``(x·m + 2^30) >> 31``), then a right shift for
``shift < 0`` that rounds halves away from zero. Everything here works on numpy int64 arrays
holding int32 values and never touches a float after :func:`quantize_multiplier`.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def quantize_multiplier(scale: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Q31 multipliers and shifts for positive real factors (elementwise).

    Returns:
        (multiplier, shift) as int64 arrays: multiplier in [2^30, 2^31) (0 for a factor too
        small to represent, below 2^-62), shift in [-31, 30].

    Raises:
        ValueError: a factor that is not finite and positive, or one of 2^30 or more.
    """
    values = np.atleast_1d(np.asarray(scale, dtype=np.float64))
    if not np.all(np.isfinite(values)) or np.any(values <= 0) or np.any(values >= 2.0 ** 30):
        raise ValueError("requantization factors must be finite, positive and below 2^30")
    mult = np.zeros(values.shape, np.int64)
    shift = np.zeros(values.shape, np.int64)
    for i, v in enumerate(values.flat):
        q, e = math.frexp(v)  # v = q · 2^e, q in [0.5, 1)
        m = int(math.floor(q * (1 << 31) + 0.5))  # halves away from zero (q > 0), as TFLite
        if m == 1 << 31:
            m, e = m // 2, e + 1
        if e < -31:  # too small for the shift range: the factor is zero
            m, e = 0, 0
        mult.flat[i], shift.flat[i] = m, e
    return mult.reshape(values.shape), shift.reshape(values.shape)


def mean_multiplier(scale: float, count: int) -> tuple[int, int]:
    """The multiplier and shift that requantize a sum of ``count`` values to their mean times
    ``scale``, derived as TensorFlow Lite's integer MEAN derives them (so both compute the
    same integers): ``scale``'s own multiplier, shifted left by the bits of ``count`` and
    divided by it (truncating), the shift lowered to match."""
    (m,), (s,) = quantize_multiplier(scale)
    up = min(int(count).bit_length() - 1, 32, 31 + int(s))
    return (int(m) << up) // int(count), int(s) - up


def _wrap32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values to int32 (what a C cast to int32_t does)."""
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def doubling_high_mult(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a·b + 2^30) >> 31`` in 64 bits, kept to 32: the high word of the doubled product,
    rounded (CMSIS-NN's ``arm_nn_doubling_high_mult_no_sat``)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    return _wrap32((a * b + (1 << 30)) >> 31)


def divide_by_power_of_two(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """``x / 2^exponent`` rounded to nearest, halves away from zero (an arithmetic shift, then
    +1 where the remainder is past half; ``arm_nn_divide_by_power_of_two``)."""
    x, exponent = np.asarray(x, np.int64), np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    result = x >> exponent
    threshold = (mask >> 1) + (result < 0)
    return result + (remainder > threshold)


def requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``acc · multiplier · 2^(shift - 31)``, rounded exactly as CMSIS-NN's default
    ``arm_nn_requantize`` (per-channel parameters broadcast against ``acc``).

    Raises:
        OverflowError: an accumulator that the left shift would take past int32 (C would
            overflow; the caller's ranges are wrong).
    """
    acc = np.asarray(acc, np.int64)
    multiplier, shift = np.asarray(multiplier, np.int64), np.asarray(shift, np.int64)
    left = acc * (np.int64(1) << np.maximum(shift, 0))
    if left.size and (left.min() < INT32_MIN or left.max() > INT32_MAX):
        raise OverflowError("an accumulator shifted left leaves int32")
    return divide_by_power_of_two(doubling_high_mult(left, multiplier), np.maximum(-shift, 0))


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, halves away from zero (C's ``round``), as int64."""
    x = np.asarray(x, np.float64)
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)
