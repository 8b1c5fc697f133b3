import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnzip.ops.quant import (Grid, calibrate, dequantize, fake_quantize, pack, pow2_codes,
                              qparams, quantize, round_pow2,
                              sqnr_db, unpack)


def _reference(x, scale, zero, qmin, qmax):
    """q = clamp(round(x / s) + z, qmin, qmax); x̂ = (q − z)·s, element by element."""
    out = torch.empty_like(x)
    for i, v in enumerate(x.tolist()):
        q = min(max(round(v / scale) + zero, qmin), qmax)
        out[i] = (q - zero) * scale
    return out


def test_quantize_dequantize_follow_the_affine_formula():
    x = torch.linspace(-3, 5, 101)
    grid = Grid.activations(8)
    scale, zero = qparams(x.min().reshape(1), x.max().reshape(1), grid)
    assert zero.item() == round(3 / scale.item())
    got = dequantize(quantize(x, scale, zero, grid), scale, zero)
    assert torch.allclose(got, _reference(x, scale.item(), zero.item(), 0, 255), atol=1e-6)
    assert (got - x).abs().max() <= scale.item() / 2 + 1e-6  # inside the range: half a step


def test_symmetric_weight_grid_keeps_zero_and_is_ternary_at_two_bits():
    assert Grid.weights(2) == Grid(-1, 1) and Grid.weights(8) == Grid(-127, 127)
    w = torch.tensor([[-2.0, 0.0, 0.4, 1.0], [0.0, 0.1, -0.05, 0.0]])
    scale, zero = calibrate(w, Grid.weights(2), per_channel=True)
    q = quantize(w, scale, zero, Grid.weights(2))
    assert torch.equal(zero, torch.zeros(2)) and set(q.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(q[w == 0], torch.zeros(int((w == 0).sum())))
    assert torch.allclose(scale, torch.tensor([2.0, 0.1]))  # per row: max |w| / qmax


def test_sqnr_grows_about_six_db_per_bit():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    floors = {8: 40.0, 6: 28.0, 4: 16.0, 3: 10.0}
    got = {}
    for bits, floor in floors.items():
        grid = Grid.weights(bits)
        scale, zero = calibrate(w, grid, per_channel=True, observer="mse")
        got[bits] = sqnr_db(w, dequantize(quantize(w, scale, zero, grid), scale, zero))
        assert got[bits] >= floor, (bits, got[bits])
    assert 5.0 < got[8] - got[6] < 7.0 * 2 + 1  # two bits: roughly 12 dB


def test_mse_observer_beats_minmax_on_heavy_tails_and_percentile_ignores_outliers():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(1))
    x[:5] = 60.0  # a few outliers stretch the min-max range
    grid = Grid.activations(4)
    err = {}
    for observer in ("minmax", "percentile", "mse"):
        scale, zero = calibrate(x, grid, observer=observer)
        err[observer] = (dequantize(quantize(x, scale, zero, grid), scale, zero) - x).pow(2).mean()
        if observer == "percentile":
            assert scale.item() * 15 < 20
    assert err["mse"] < err["minmax"] and err["percentile"] < err["minmax"]
    with pytest.raises(ValueError, match="unknown observer"):
        calibrate(x, grid, observer="median")


def test_fake_quantization_passes_gradients_straight_through_and_learns_the_scale():
    x = torch.tensor([-1.0, 0.26, 0.74, 3.0], requires_grad=True)
    scale = torch.tensor([0.5], requires_grad=True)
    grid = Grid.weights(3)  # ±3 steps: 3.0 / 0.5 = 6 is clipped
    y = fake_quantize(x, scale, torch.zeros(1), grid, learn_scale=True)
    assert torch.allclose(y, torch.tensor([-1.0, 0.5, 0.5, 1.5]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 1.0, 1.0, 0.0]))  # zero where clipped
    assert scale.grad is not None and scale.grad.abs().item() > 0


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 1000))
def test_packing_round_trips_at_every_bit_width(bits, n, seed):
    grid = Grid.weights(bits)
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(grid.qmin, grid.qmax + 1, (n,), generator=g)
    if grid.binary:
        q = torch.where(q >= 0, 1, -1)
    data = pack(q, grid)
    assert len(data) == -(-n * bits // 8)
    assert torch.equal(unpack(data, n, grid), q)


def test_unpacking_the_wrong_length_is_an_error():
    grid = Grid.weights(4)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack(b"\x00" * 3, 10, grid)


def test_binary_weights_are_the_sign_times_the_mean_magnitude():
    w = torch.tensor([[0.5, -1.5, 0.0, 2.0], [-0.1, -0.3, 0.2, 0.2]], requires_grad=True)
    grid = Grid.weights(1)
    scale, zero = calibrate(w, grid, per_channel=True, observer="mse")
    assert torch.allclose(scale, torch.tensor([1.0, 0.2]))
    q = quantize(w.detach(), scale, zero, grid)
    assert torch.equal(q, torch.tensor([[1.0, -1.0, 1.0, 1.0], [-1.0, -1.0, 1.0, 1.0]]))
    y = fake_quantize(w, scale, zero, grid)
    assert torch.allclose(y, q * scale[:, None])
    y.sum().backward()
    assert torch.equal(w.grad, torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0]]))
    assert len(pack(q, grid)) == 1 and torch.equal(unpack(pack(q, grid), 8, grid),
                                                   q.flatten().long())


def test_bits_outside_one_to_eight_are_refused():
    with pytest.raises(ValueError, match="from 1 to 8"):
        Grid.weights(0)
    with pytest.raises(ValueError, match="from 2 to 8"):
        Grid.activations(9)


@given(st.integers(2, 8), st.floats(1e-5, 1e3), st.integers(0, 1000))
@settings(max_examples=40, deadline=None)
def test_a_power_of_two_grid_is_found_again_exactly(bits, peak, seed):
    g = torch.Generator().manual_seed(seed)
    original = torch.randn(50, generator=g, dtype=torch.float64)
    original = (original * (peak / original.abs().max())).float()
    x = round_pow2(original, bits)
    assert torch.equal(x.half().float(), x)  # exact in float16, as the container stores it
    q, exponent, found = pow2_codes(x.half())
    assert found <= bits and q.abs().max() <= 2 ** (found - 1) - 1
    assert torch.equal(torch.ldexp(q.double(), torch.tensor(float(exponent))).float(), x)
    # the step is under twice max |x| / qmax, and rounding moves a value half a step at most
    assert (x - original).abs().max() <= peak / (2 ** (bits - 1) - 1) * (1 + 1e-6)


def test_values_needing_sixteen_bits_or_more_have_no_grid():
    assert pow2_codes(torch.tensor([1000.0, 1e-3]).half()) is None
    assert pow2_codes(torch.tensor([1.0, float("inf")]).half()) is None
    assert pow2_codes(torch.tensor([0.0, float("nan")]).half()) is None
    q, exponent, bits = pow2_codes(torch.tensor([0.5, -0.25, 0.0]).half())
    assert q.tolist() == [2, -1, 0] and exponent == -2 and bits == 3


def test_zeros_are_two_bit_integers():
    q, exponent, bits = pow2_codes(torch.zeros(4).half())
    assert q.tolist() == [0] * 4 and exponent == 0 and bits == 2


def test_a_power_of_two_grid_needs_two_to_eight_bits_and_a_nonzero_tensor():
    with pytest.raises(ValueError, match="2 to 8 bits"):
        round_pow2(torch.zeros(3), 8)
    with pytest.raises(ValueError, match="2 to 8 bits"):
        round_pow2(torch.ones(3), 1)
