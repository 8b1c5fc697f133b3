"""The two-multiplies-per-DSP48E2 model: exhaustive over int8, its accumulation bounds, and a
quantized convolution computed with it."""

import numpy as np
import pytest
import torch

from cnnzip.export.hls.dsp import (dsp_dot, dsp_multiply, max_exact_terms, packed_conv2d,
                               packed_matmul)

INT8 = np.arange(-128, 128, dtype=np.int64)


def test_every_int8_triple_gives_both_products_exactly():
    a, b, c = INT8[:, None, None], INT8[None, :, None], INT8[None, None, :]  # 2^24 cases
    high, low = dsp_multiply(a, b, c)
    assert np.array_equal(high, np.broadcast_to(a * c, high.shape))
    assert np.array_equal(low, np.broadcast_to(b * c, low.shape))


def test_without_the_correction_the_high_product_is_wrong_whenever_the_low_one_is_negative():
    a, b, c = INT8[:, None, None], INT8[None, :, None], INT8[None, None, :]
    high, _ = dsp_multiply(a, b, c, correct=False)
    wrong = high != a * c
    assert np.array_equal(wrong, np.broadcast_to(b * c < 0, wrong.shape))
    assert 0.45 < wrong.mean() < 0.55


def test_int8_accumulates_seven_products_exactly_and_eight_fail_only_at_minus_128_squared():
    assert max_exact_terms((-128, 127), (-128, 127)) == 7
    rng = np.random.default_rng(0)
    for n in (7, 8):
        a, b, c = (rng.integers(-128, 128, (20000, n)) for _ in range(3))
        high, low = dsp_dot(a, b, c)
        assert np.array_equal(high, (a * c).sum(1)) and np.array_equal(low, (b * c).sum(1))
    for n, exact in ((7, True), (8, False)):
        high, low = dsp_dot(np.full(n, -128), np.full(n, -128), np.full(n, -128))
        assert (int(low) == n * 16384 and int(high) == n * 16384) == exact
    # eight products one short of all −128 · −128: exact again
    b = np.array([-128] * 7 + [127])
    high, low = dsp_dot(b, b, np.full(8, -128))
    assert int(low) == int(high) == int((b * -128).sum())


def test_uint8_activations_accumulate_four_products_exactly():
    assert max_exact_terms((-128, 127), (0, 255)) == 4
    for n, exact in ((4, True), (5, False)):
        for w in (127, -128):
            high, low = dsp_dot(np.full(n, w), np.full(n, w), np.full(n, 255))
            assert (int(low) == n * w * 255 and int(high) == n * w * 255) == exact, (n, w)
    # 7-bit weights (the int8 recipe's ±63) leave room for eight
    assert max_exact_terms((-63, 63), (0, 255)) == 8


def test_operands_wider_than_the_ports_are_refused():
    with pytest.raises(ValueError, match="8-bit"):
        max_exact_terms((-200, 100), (0, 255))
    with pytest.raises(ValueError, match="18-bit"):
        max_exact_terms((-128, 127), (0, 1 << 18))


def test_a_quantized_convolution_computed_two_per_dsp_equals_the_integer_convolution():
    from cnnzip.data import batches, synthetic_splits
    from cnnzip.export.ir.lower import lower_model
    from cnnzip.methods import Context, apply
    from cnnzip.methods.quant import Quantize
    from cnnzip.surgery import build_model, resolve_spec

    torch.manual_seed(0)
    model = build_model(resolve_spec("lenet5", (1, 28, 28), 10)).eval()
    splits = synthetic_splits()
    apply(model, Quantize(calibration=256, weight_bits=8), Context(splits, finetune_epochs=0,
                                                                   quiet=True))
    x, _ = next(iter(batches(splits.test, splits.info, 8)))
    int_model = lower_model(model, (1, 28, 28))
    conv = int_model.nodes[0].op
    centred = int_model.quantize_input(x) - conv.in_zero  # 9-bit signed: fits the 18-bit port
    expected = conv.accumulate(int_model.quantize_input(x)) - conv.bias.reshape(1, -1, 1, 1)
    got = packed_conv2d(conv.weight, centred, conv.stride, conv.padding)
    assert np.array_equal(got, expected)
    # the second convolution reads uint8 activations: four products per slice at a time
    second = int_model.nodes[2].op
    acts = np.random.default_rng(1).integers(0, 256, (2, *second.weight.shape[1:2], 12, 12))
    plain = second.accumulate(acts + second.in_zero) - second.bias.reshape(1, -1, 1, 1)
    assert np.array_equal(packed_conv2d(second.weight, acts), plain)


def test_packed_matmul_pairs_an_odd_last_row_with_zeros():
    rng = np.random.default_rng(2)
    w, x = rng.integers(-128, 128, (5, 30)), rng.integers(0, 256, (3, 30))
    assert np.array_equal(packed_matmul(w, x), x @ w.T)
    with pytest.raises(ValueError, match="do not multiply"):
        packed_matmul(w, x[:, :10])
