"""Entropy coding of integer symbol streams near the Shannon bound (constriction's ANS coder with
the stream's own histogram as a static model), plus the figures to judge it by.

The model travels in front of the stream in one of two forms, whichever makes the smaller
stream: the exact histogram (varint counts), or a coarse one (4 bits per symbol: the count's
log2 relative to the largest, in half steps over 7 octaves, 0 for an absent symbol). A long
stream pays little for exact counts; a short one with a large alphabet (500 weights on 256
centroids) paid a byte per symbol of table for ~2 bits of codes, and the coarse table halves
that for a code length within a fraction of a percent of the exact model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import constriction
import numpy as np

from cnnzip.ops.varint import read_varints, write_varints


@dataclass(frozen=True)
class StreamStats:
    """Sizes of one symbol stream under different codes, in bits.

    Attributes:
        symbols: stream length.
        alphabet: 1 + the largest symbol.
        entropy_bits: n · H(empirical distribution), the bound for a static model.
        huffman_bits: the stream Huffman-coded with its own histogram (Deep Compression's code).
        coded_bits: the ANS payload written by ``encode_symbols`` (without its table).
        table_bits: the histogram stored in front of the payload.
    """

    symbols: int
    alphabet: int
    entropy_bits: float
    huffman_bits: int
    coded_bits: int
    table_bits: int


def histogram(symbols: np.ndarray) -> np.ndarray:
    """Counts of each symbol 0..max."""
    return np.bincount(symbols.astype(np.int64)) if symbols.size else np.zeros(0, np.int64)


def empirical_entropy_bits(symbols: np.ndarray) -> float:
    """n · H(p̂) in bits, p̂ the stream's own symbol frequencies."""
    counts = histogram(symbols)
    counts = counts[counts > 0].astype(np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


def huffman_bits(symbols: np.ndarray) -> int:
    """Length in bits of the stream Huffman-coded with its own histogram (constriction)."""
    counts = histogram(symbols)
    if np.count_nonzero(counts) <= 1:
        return len(symbols)  # a one-symbol alphabet still costs a bit per symbol in Huffman
    tree = constriction.symbol.huffman.EncoderHuffmanTree(counts.astype(np.float64))
    encoder = constriction.symbol.QueueEncoder()
    for s in symbols.tolist():
        encoder.encode_symbol(s, tree)
    return int(encoder.get_compressed()[1])


def _model(counts: np.ndarray) -> "constriction.stream.model.Categorical":
    # constriction needs two symbols at least; a padded zero count costs nothing measurable
    padded = np.zeros(max(2, len(counts)), np.float64)
    padded[: len(counts)] = counts
    return constriction.stream.model.Categorical(padded, perfect=False)


COARSE = 0  # a first varint of 0 (no alphabet is empty) marks a coarse table
_LEVELS, _STEP = 15, 0.5  # coarse levels 1..15: weight 2^((level - 15) / 2); 0: absent


def coarse_levels(counts: np.ndarray) -> np.ndarray:
    """Each count as a level 0..15: 0 for none, else round(2·log2(count / max)) + 15, at least
    1 (counts below 1/128 of the largest are stored as 1/128 of it)."""
    counts = np.asarray(counts, np.float64)
    levels = np.zeros(len(counts), np.int64)
    present = counts > 0
    levels[present] = np.clip(np.round(np.log2(counts[present] / counts.max()) / _STEP)
                              + _LEVELS, 1, _LEVELS)
    return levels


def coarse_weights(levels: np.ndarray) -> np.ndarray:
    """The model's (unnormalised) probabilities for coarse ``levels``."""
    levels = np.asarray(levels, np.int64)
    return np.where(levels > 0, 2.0 ** ((levels - _LEVELS) * _STEP), 0.0)


def _pack_levels(levels: np.ndarray) -> bytes:
    padded = np.zeros(2 * (-(-len(levels) // 2)), np.uint8)
    padded[: len(levels)] = levels
    return (padded[0::2] | (padded[1::2] << 4)).astype(np.uint8).tobytes()


def _unpack_levels(data: bytes, alphabet: int) -> np.ndarray:
    packed = np.frombuffer(data, np.uint8)
    levels = np.empty(2 * len(packed), np.int64)
    levels[0::2], levels[1::2] = packed & 15, packed >> 4
    if levels[alphabet:].any():
        raise ValueError("coarse table has levels past its alphabet")
    return levels[:alphabet]


def _ans(symbols: np.ndarray, weights: np.ndarray) -> bytes:
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), _model(weights))
    return coder.get_compressed().astype("<u4").tobytes()


def _encode(symbols: np.ndarray) -> tuple[bytes, bytes]:
    """The smaller of the two forms: (table, ANS words)."""
    counts = histogram(symbols)
    exact = (write_varints([len(counts), *counts.tolist()]), _ans(symbols, counts))
    levels = coarse_levels(counts)
    coarse = (write_varints([COARSE, len(counts)]) + _pack_levels(levels),
              _ans(symbols, coarse_weights(levels)))
    return min(exact, coarse, key=lambda form: len(form[0]) + len(form[1]))


def encode_symbols(symbols: np.ndarray) -> bytes:
    """Code non-negative integers as ``varint(alphabet) varint(counts…) ANS-words``, or, when
    smaller, ``varint(0) varint(alphabet) 4-bit-levels… ANS-words`` (the coarse table).

    The model travels with the stream, so decoding needs only the bytes and the length.
    """
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.size == 0:
        return b""
    table, words = _encode(symbols)
    return table + words


def decode_symbols(data: bytes, n: int, max_alphabet: int = 1 << 16) -> np.ndarray:
    """Inverse of ``encode_symbols``; ``n`` is the number of symbols, each below
    ``max_alphabet`` (a stream that claims a larger alphabet is refused before its table is read).

    Raises:
        ValueError: the bytes are not a valid stream of ``n`` symbols.
    """
    if n == 0:
        if data:
            raise ValueError("stream of 0 symbols has a payload")
        return np.zeros(0, np.int64)
    (alphabet,), offset = read_varints(data, 1)
    coarse = alphabet == COARSE
    if coarse:
        (alphabet,), offset = read_varints(data, 1, offset)
    if not 1 <= alphabet <= max_alphabet:
        raise ValueError(f"stream alphabet of {alphabet} symbols, expected 1 to {max_alphabet}")
    if coarse:
        end = offset + -(-alphabet // 2)
        if end > len(data):
            raise ValueError("data ends inside the coarse table")
        weights = coarse_weights(_unpack_levels(data[offset:end], alphabet))
        if not weights.any():
            raise ValueError("coarse table gives no symbol a probability")
        offset = end
    else:
        counts, offset = read_varints(data, alphabet, offset)
        if sum(counts) != n:
            raise ValueError(f"stream table counts {sum(counts)} symbols, expected {n}")
        weights = np.asarray(counts, np.float64)
    body = data[offset:]
    if len(body) % 4:
        raise ValueError("stream payload is not a whole number of 32-bit words")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(body, dtype="<u4").astype(np.uint32))
    symbols = coder.decode(_model(weights), n).astype(np.int64)
    if not coder.is_empty():
        raise ValueError("stream payload has words left over after decoding")
    if symbols.max() >= alphabet or not weights[symbols].all():
        raise ValueError("stream decodes to a symbol its table does not hold")
    return symbols


def stream_stats(symbols: np.ndarray) -> StreamStats:
    """Entropy, Huffman and our coded size of a stream, for reports."""
    symbols = np.asarray(symbols, dtype=np.int64)
    counts = histogram(symbols)
    table, words = _encode(symbols) if symbols.size else (b"", b"")
    return StreamStats(int(symbols.size), int(len(counts)), empirical_entropy_bits(symbols),
                       huffman_bits(symbols), 8 * len(words), 8 * len(table))
