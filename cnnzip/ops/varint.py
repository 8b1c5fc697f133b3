"""LEB128 varints: compact storage of small non-negative integers (histograms, lengths)."""

from __future__ import annotations

from typing import Iterable


def write_varints(values: Iterable[int]) -> bytes:
    """Each value as 7-bit groups, least significant first, high bit set on all but the last."""
    out = bytearray()
    for value in values:
        if value < 0:
            raise ValueError(f"varint of negative value {value}")
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
    return bytes(out)


def read_varints(data: bytes, count: int, offset: int = 0) -> tuple[list[int], int]:
    """Read ``count`` varints from ``data`` at ``offset``; returns the values and the new offset.

    Raises:
        ValueError: the data ends inside a varint, or a varint is longer than 64 bits.
    """
    values = []
    for _ in range(count):
        value = shift = 0
        while True:
            if offset >= len(data):
                raise ValueError("data ends inside a varint")
            byte = data[offset]
            offset += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte & 0x80 and shift >= 64:
                raise ValueError("varint longer than 64 bits")
            if not byte & 0x80:
                break
        values.append(value)
    return values, offset
