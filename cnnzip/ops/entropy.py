"""Entropy coding of integer symbol streams near the Shannon bound (constriction's ANS coder with
the stream's own histogram as a static model), plus the figures to judge it by."""

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


def encode_symbols(symbols: np.ndarray) -> bytes:
    """Code non-negative integers as ``varint(alphabet) varint(counts…) ANS-words``.

    The histogram travels with the stream, so decoding needs only the bytes and the length.
    """
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.size == 0:
        return b""
    counts = histogram(symbols)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), _model(counts))
    words = coder.get_compressed().astype("<u4")
    return write_varints([len(counts), *counts.tolist()]) + words.tobytes()


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
    if not 1 <= alphabet <= max_alphabet:
        raise ValueError(f"stream alphabet of {alphabet} symbols, expected 1 to {max_alphabet}")
    counts, offset = read_varints(data, alphabet, offset)
    if sum(counts) != n:
        raise ValueError(f"stream table counts {sum(counts)} symbols, expected {n}")
    body = data[offset:]
    if len(body) % 4:
        raise ValueError("stream payload is not a whole number of 32-bit words")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(body, dtype="<u4").astype(np.uint32))
    symbols = coder.decode(_model(np.asarray(counts)), n).astype(np.int64)
    if not coder.is_empty():
        raise ValueError("stream payload has words left over after decoding")
    return symbols


def stream_stats(symbols: np.ndarray) -> StreamStats:
    """Entropy, Huffman and our coded size of a stream, for reports."""
    symbols = np.asarray(symbols, dtype=np.int64)
    counts = histogram(symbols)
    data = encode_symbols(symbols)
    table = len(write_varints([len(counts), *counts.tolist()])) if symbols.size else 0
    return StreamStats(int(symbols.size), int(len(counts)), empirical_entropy_bits(symbols),
                       huffman_bits(symbols), 8 * (len(data) - table), 8 * table)
