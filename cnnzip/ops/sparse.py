"""Positions of non-zero weights as relative indices (gaps) with filler symbols for long runs,
the index coding of Deep Compression; the gap alphabet is chosen per layer for the smallest
entropy-coded size."""

from __future__ import annotations

import numpy as np

from cnnzip.ops.entropy import empirical_entropy_bits, histogram


def positions_to_gaps(positions: np.ndarray, max_gap: int) -> np.ndarray:
    """Sorted flat positions → symbols in ``[0, max_gap]``.

    Symbol ``g < max_gap`` means "skip g zeros, then a non-zero"; ``max_gap`` is a filler that
    means "skip max_gap zeros" (no weight), so any run length can be expressed.
    """
    positions = np.asarray(positions, dtype=np.int64)
    runs = np.diff(positions, prepend=-1) - 1  # zeros before each non-zero, (nnz,)
    if runs.size and runs.min() < 0:
        raise ValueError("positions must be strictly increasing")
    fillers, rest = np.divmod(runs, max_gap)
    out = np.full(int(fillers.sum() + runs.size), max_gap, dtype=np.int64)
    ends = np.cumsum(fillers + 1) - 1  # where each non-zero's symbol lands
    out[ends] = rest
    return out


def gaps_to_positions(symbols: np.ndarray, max_gap: int) -> np.ndarray:
    """Inverse of ``positions_to_gaps``."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.size and (symbols.min() < 0 or symbols.max() > max_gap):
        raise ValueError(f"gap symbols must lie in [0, {max_gap}]")
    filler = symbols == max_gap
    advance = np.where(filler, max_gap, symbols + 1)
    return np.cumsum(advance)[~filler] - 1


def choose_max_gap(positions: np.ndarray, candidates: tuple[int, ...] = (7, 15, 31, 63, 127,
                                                                         255)) -> int:
    """The filler length whose gap stream costs fewest estimated bits (entropy plus table)."""
    def cost(max_gap: int) -> float:
        symbols = positions_to_gaps(positions, max_gap)
        table = 12 * len(histogram(symbols))  # about a varint and a half per count
        return empirical_entropy_bits(symbols) + table

    return min(candidates, key=cost)
