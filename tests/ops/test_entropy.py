import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnzip.ops.entropy import decode_symbols, empirical_entropy_bits, encode_symbols, stream_stats
from cnnzip.ops.varint import read_varints, write_varints

symbols = st.lists(st.integers(0, 300), min_size=0, max_size=400).map(np.array)


@given(symbols)
@settings(max_examples=60, deadline=None)
def test_round_trip(values):
    data = encode_symbols(values)
    assert np.array_equal(decode_symbols(data, len(values)), values.astype(np.int64))


@given(st.lists(st.integers(0, 2**40), max_size=50))
def test_varints_round_trip(values):
    data = write_varints(values)
    assert read_varints(data, len(values)) == (values, len(data))


def test_golden_bytes():
    # alphabet 3, counts 2 1 1, then one 32-bit ANS word: fixed by the format
    data = encode_symbols(np.array([0, 1, 0, 2]))
    assert data[:4] == bytes([3, 2, 1, 1]) and len(data) == 8
    assert np.array_equal(decode_symbols(data, 4), [0, 1, 0, 2])


def test_near_the_entropy_and_below_huffman():
    rng = np.random.default_rng(0)
    values = rng.choice(16, size=50_000, p=np.r_[0.5, np.full(15, 0.5 / 15)])
    stats = stream_stats(values)
    assert stats.entropy_bits == pytest.approx(empirical_entropy_bits(values))
    assert stats.coded_bits <= 1.01 * stats.entropy_bits
    assert stats.coded_bits < stats.huffman_bits


@pytest.mark.parametrize("damage", ["truncate", "count"])
def test_damaged_stream_is_an_error(damage):
    data = encode_symbols(np.arange(100) % 7)
    if damage == "truncate":
        data = data[:-3]
    else:
        data = bytes([data[0], data[1] + 1]) + data[2:]
    with pytest.raises(ValueError):
        decode_symbols(data, 100)


def test_a_short_stream_on_a_large_alphabet_carries_the_coarse_table():
    rng = np.random.default_rng(0)
    values = rng.choice(256, size=500, p=np.r_[np.full(16, 0.05), np.full(240, 0.2 / 240)])
    values[-1] = 255
    data = encode_symbols(values)
    assert data[0] == 0 and read_varints(data, 1, 1)[0] == [256]  # coarse, alphabet 256
    exact = len(write_varints([256, *np.bincount(values, minlength=256).tolist()]))
    stats = stream_stats(values)
    assert stats.table_bits == 8 * (1 + 2 + 128) < 8 * exact  # varints 0 and 256, 4 bits each
    assert stats.coded_bits <= 1.02 * stats.entropy_bits + 64
    assert np.array_equal(decode_symbols(data, 500), values)


def test_coarse_levels_golden():
    # log2(count / max) in half steps over 7 octaves, 0 absent, below 1/128 of the max at 1
    from cnnzip.ops.entropy import coarse_levels

    assert coarse_levels(np.array([1000, 500, 0, 1, 250, 707])).tolist() == [15, 13, 0, 1, 11, 14]


@pytest.mark.parametrize("damage,message", [
    (lambda d: d[:3], "ends inside the coarse table"),
    (lambda d: d[:3] + bytes(128) + d[131:], "no symbol a probability"),
    (lambda d: bytes([0, 255]) + d[2:], "expected 1 to"),
])
def test_damaged_coarse_table_is_an_error(damage, message):
    values = np.arange(500) % 256
    data = encode_symbols(values)
    assert data[0] == 0
    with pytest.raises(ValueError, match=message):
        decode_symbols(damage(data), 500, max_alphabet=256)
