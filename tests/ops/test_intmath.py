"""Integer requantization: the numpy reference against exact arithmetic and against the same
arithmetic compiled from cnnzip's C runtime header."""

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from cnnzip.ops.intmath import divide_by_power_of_two, quantize_multiplier, requantize

HEADER = Path(__file__).parent.parent.parent / "cnnzip" / "export" / "c" / "runtime" / "cnz_math.h"


def test_multipliers_are_q31_and_represent_the_factor():
    scales = np.array([1.0, 0.5, 0.75, 1e-3, 3.7e-5, 0.999999999, 2.5, 1e-9])
    mult, shift = quantize_multiplier(scales)
    assert ((mult >= 1 << 30) & (mult < 1 << 31)).all()
    assert (mult[0], shift[0]) == (1 << 30, 1) and (mult[1], shift[1]) == (1 << 30, 0)
    represented = mult * np.exp2(shift.astype(float) - 31)
    assert np.allclose(represented, scales, rtol=2.0 ** -30, atol=0)
    assert [int(v[0]) for v in quantize_multiplier(1e-12)] == [0, 0]  # below 2^-31: zero
    with pytest.raises(ValueError):
        quantize_multiplier(np.array([0.1, 0.0]))
    with pytest.raises(ValueError):
        quantize_multiplier(np.array([np.nan]))


@pytest.mark.parametrize("x,exponent,expected", [
    (3, 1, 2), (-3, 1, -2), (1, 1, 1), (-1, 1, -1), (-2, 1, -1), (5, 2, 1), (6, 2, 2),
    (-6, 2, -2), (-5, 2, -1), (7, 0, 7), (-(1 << 31), 31, -1), ((1 << 31) - 1, 31, 1),
])
def test_division_by_a_power_of_two_rounds_halves_away_from_zero(x, exponent, expected):
    assert int(divide_by_power_of_two(np.array([x]), np.array([exponent]))[0]) == expected


def _floor_half_up(x: Fraction) -> int:
    return int((x + Fraction(1, 2)) // 1)


def _away(x: Fraction) -> int:
    return int((abs(x) + Fraction(1, 2)) // 1) * (1 if x >= 0 else -1)


def test_requantize_is_the_two_roundings_of_cmsis_nn_exactly():
    """(acc·2^left·m + 2^30) >> 31 is the product rounded half up at 2^31; the right shift then
    rounds halves away from zero: checked in exact rational arithmetic."""
    rng = np.random.default_rng(0)
    acc = rng.integers(-(1 << 20), 1 << 20, 20_000)
    scales = np.exp(rng.uniform(np.log(1e-6), np.log(4.0), 20_000))
    mult, shift = quantize_multiplier(scales)
    got = requantize(acc, mult, shift)
    expected, single = [], []
    for a, m, s in zip(acc.tolist(), mult.tolist(), shift.tolist()):
        high = _floor_half_up(Fraction(a * (1 << max(s, 0)) * m, 1 << 31))
        expected.append(_away(Fraction(high, 1 << max(-s, 0))))
        single.append(_away(Fraction(a * m) * Fraction(2) ** (s - 31)))
    assert got.tolist() == expected
    # the double rounding is at most one off the exactly rounded product
    assert np.abs(got - np.array(single)).max() <= 1
    with pytest.raises(OverflowError):
        requantize(np.array([1 << 30]), np.array([1 << 30]), np.array([2]))


def _run_c(tmp_path, columns: np.ndarray, call: str) -> np.ndarray:
    """Each row of int32 ``columns`` through the C expression ``call`` (of ``t[0]``, ``t[1]``,
    ...), compiled with the runtime header."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "no C compiler: scripts/setup.sh installs gcc"
    (tmp_path / "in.bin").write_bytes(columns.astype("<i4").tobytes())
    (tmp_path / "t.c").write_text(f'''#include <stdio.h>
#include "{HEADER}"
int main(void) {{
    int32_t t[{columns.shape[1]}];
    FILE *in = fopen("in.bin", "rb"), *out = fopen("out.bin", "wb");
    while (fread(t, sizeof t, 1, in) == 1) {{
        int32_t r = {call};
        fwrite(&r, sizeof r, 1, out);
    }}
    fclose(in); fclose(out); return 0;
}}
''')
    subprocess.run([gcc, "-O2", "-std=c99", "-Wall", "-Werror", "t.c", "-o", "t"],
                   cwd=tmp_path, check=True)
    subprocess.run(["./t"], cwd=tmp_path, check=True)
    return np.frombuffer((tmp_path / "out.bin").read_bytes(), "<i4")


def test_the_c_rounding_shift_agrees_on_ties_and_extremes(tmp_path):
    """Every exponent 0..31 on the int32 extremes, the values around each half (the ties that
    round away from zero) and random values."""
    rng = np.random.default_rng(2)
    xs, es = [], []
    for e in range(32):
        half = 1 << max(e - 1, 0)
        around = [m * (1 << e) + d for m in (-3, -1, 0, 1, 2) for d in (half - 1, half, half + 1)]
        values = [-(1 << 31), (1 << 31) - 1, -1, 0, 1, *around,
                  *rng.integers(-(1 << 31), 1 << 31, 200).tolist()]
        values = [v for v in values if -(1 << 31) <= v < (1 << 31)]
        xs += values
        es += [e] * len(values)
    x, e = np.array(xs, np.int64), np.array(es, np.int64)
    got = _run_c(tmp_path, np.stack([x, e], 1), "cnz_divide_by_pot(t[0], t[1])")
    assert np.array_equal(got, divide_by_power_of_two(x, e))


def test_the_c_runtime_computes_the_same_integers(tmp_path):
    rng = np.random.default_rng(1)
    n = 50_000
    acc = rng.integers(-(1 << 24), 1 << 24, n)
    acc[:8] = [0, 1, -1, (1 << 24) - 1, -(1 << 24), 2, -2, 3]
    mult, shift = quantize_multiplier(np.exp(rng.uniform(np.log(1e-7), np.log(60.0), n)))
    shift = np.where(shift > 0, np.minimum(shift, 6), shift)  # keep acc << shift in int32
    expected = requantize(acc, mult, shift)
    got = _run_c(tmp_path, np.stack([acc, mult, shift], 1), "cnz_requantize(t[0], t[1], t[2])")
    assert got.shape == (n,) and np.array_equal(got, expected)
