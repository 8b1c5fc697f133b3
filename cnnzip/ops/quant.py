"""Affine (uniform) quantization: ranges, scales and zero points, rounding, calibration.

A real value x maps to the integer q = clamp(round(x / scale) + zero_point, qmin, qmax) and back
to (q - zero_point) * scale. Weights use the symmetric signed grid (zero point 0, qmin = -qmax,
so 0 stays exactly 0 and the 2-bit grid is ternary {-1, 0, 1}; 1 bit is binary {-1, 1}, the
sign, with the least-squares scale mean |w|); feature maps use the asymmetric
unsigned grid [0, 2^bits - 1] with an integer zero point, the ONNX/onnxruntime U8S8 convention.
Per-channel parameters run along dimension 0 (a layer's output channels).

Observers choose the clipping range from data: ``minmax`` (the extremes), ``percentile`` (the
extremes of the central 99.99 %), ``mse`` (the clip, among a grid of fractions of the extremes,
whose quantized values have the least squared error).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import torch


class Observer(enum.StrEnum):
    """How a quantizer's range is chosen from the values it will see."""

    MINMAX = "minmax"  # the extremes
    PERCENTILE = "percentile"  # the 0.01% and 99.99% quantiles
    MSE = "mse"  # the clip with the least squared rounding error

# The smallest scale: the smallest positive float16, so that a scale survives the container's
# float16 storage (a fully pruned channel's scale would otherwise round to 0 and its codes to NaN).
MIN_SCALE = 2.0 ** -24


@dataclass(frozen=True)
class Grid:
    """The integers of a quantization grid (``binary``: only qmin and qmax, no zero)."""

    qmin: int
    qmax: int
    binary: bool = False

    @classmethod
    def weights(cls, bits: int) -> Grid:
        """Symmetric signed: ±(2^(bits-1) - 1); 2 bits is ternary, 1 bit binary (±1)."""
        _check_bits(bits, 1)
        if bits == 1:
            return cls(-1, 1, binary=True)
        q = 2 ** (bits - 1) - 1
        return cls(-q, q)

    @property
    def bits(self) -> int:
        return 1 if self.binary else max(1, (self.qmax - self.qmin).bit_length())

    @classmethod
    def activations(cls, bits: int) -> Grid:
        """Unsigned: [0, 2^bits - 1] with a zero point."""
        _check_bits(bits, 2)
        return cls(0, 2 ** bits - 1)

    @property
    def symmetric(self) -> bool:
        return self.qmin == -self.qmax


def _check_bits(bits: int, low: int) -> None:
    if not (isinstance(bits, int) and low <= bits <= 8):
        raise ValueError(f"bits must be an integer from {low} to 8; got {bits!r}")


def qparams(lo: torch.Tensor, hi: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point mapping [lo, hi] (widened to hold 0) onto ``grid``.

    A symmetric grid gets zero point 0 and covers ±max(|lo|, |hi|)."""
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    if grid.symmetric:
        scale = (torch.maximum(-lo, hi) / grid.qmax).clamp(min=MIN_SCALE)
        return scale, torch.zeros_like(scale)
    scale = ((hi - lo) / (grid.qmax - grid.qmin)).clamp(min=MIN_SCALE)
    zero = (grid.qmin - lo / scale).round().clamp(grid.qmin, grid.qmax)
    return scale, zero


def _shape(scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel (dimension 0) parameter viewed to broadcast against ``x``."""
    return scale.view(-1, *[1] * (x.dim() - 1)) if scale.numel() > 1 else scale


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, grid: Grid) -> torch.Tensor:
    """The integers (as float) of ``x`` on the grid; per-channel parameters run along dim 0."""
    s, z = _shape(scale, x), _shape(zero, x)
    if grid.binary:
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    return (torch.round(x / s) + z).clamp(grid.qmin, grid.qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q - _shape(zero, q)) * _shape(scale, q)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (x.round() - x).detach()


def _scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    return x * factor + (x - x * factor).detach()


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, grid: Grid,
                  *, learn_scale: bool = False) -> torch.Tensor:
    """quantize then dequantize, differentiable: the rounding passes gradients straight through
    (inside the clipping range; zero outside), and ``scale`` gets the learned-step-size (LSQ)
    gradient, scaled by 1/sqrt(elements per scale × qmax) when ``learn_scale``."""
    if learn_scale:
        per = x.numel() / scale.numel()
        scale = _scale_grad(scale, 1.0 / (per * max(grid.qmax, 1)) ** 0.5)
    s, z = _shape(scale, x), _shape(zero, x)
    if grid.binary:  # sign, its gradient passed straight through inside ±scale
        v = torch.clamp(x / s, -1.0, 1.0)
        return (v + (torch.where(x >= 0, 1.0, -1.0) - v).detach()) * s
    q = torch.clamp(_round_ste(x / s) + z, grid.qmin, grid.qmax)
    return (q - z) * s


def _extremes(flat: torch.Tensor, observer: Observer) -> tuple[torch.Tensor, ...]:
    """Per-row low and high ends of ``flat`` (rows × values)."""
    if observer is Observer.PERCENTILE:
        # quantile has an input-size limit; a strided subsample of large tensors is plenty
        step = max(1, flat.shape[1] // 1_000_000)
        sample = flat[:, ::step].float()
        return torch.quantile(sample, 1e-4, dim=1), torch.quantile(sample, 1 - 1e-4, dim=1)
    return flat.min(dim=1).values, flat.max(dim=1).values


def calibrate(x: torch.Tensor, grid: Grid, *, per_channel: bool = False,
              observer: Observer | str = Observer.MINMAX) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (shape (channels,) per channel, else (1,)) for the values ``x``.

    Raises:
        ValueError: an unknown observer.
    """
    try:
        observer = Observer(observer)
    except ValueError:
        raise ValueError(f"unknown observer {observer!r}; choose from "
                         f"{', '.join(o.value for o in Observer)}") from None
    flat = x.detach().reshape(x.shape[0] if per_channel else 1, -1)  # a row per scale
    if grid.binary:  # the least-squares scale of sign(x) is mean |x|
        scale = flat.abs().mean(1).clamp(min=MIN_SCALE)
        return scale, torch.zeros_like(scale)
    lo, hi = _extremes(flat, observer)
    if observer is not Observer.MSE:
        return qparams(lo, hi, grid)
    best_err = torch.full_like(lo, float("inf"))
    best = qparams(lo, hi, grid)
    for frac in torch.linspace(0.3, 1.0, 36):
        scale, zero = qparams(lo * frac, hi * frac, grid)
        err = (dequantize(quantize(flat, scale, zero, grid), scale, zero) - flat).pow(2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = (torch.where(better, scale, best[0]), torch.where(better, zero, best[1]))
    return best


def sqnr_db(x: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in decibels."""
    x, approx = x.detach(), approx.detach()
    noise = (x - approx).pow(2).sum().clamp(min=1e-30)
    return float(10 * torch.log10(x.pow(2).sum() / noise))


def pack(q: torch.Tensor, grid: Grid) -> bytes:
    """The integers ``q`` (on ``grid``), bits wide each, little-endian bit order."""
    bits = grid.bits
    u = (q.detach().flatten().to(torch.int64) - grid.qmin).numpy().astype("uint16")
    if grid.binary:
        u = u // 2  # -1, 1 → 0, 1
    planes = ((u[:, None] >> np.arange(bits, dtype="uint16")) & 1).astype("uint8")
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes, count: int, grid: Grid) -> torch.Tensor:
    """Inverse of :func:`pack`: ``count`` integers (int64).

    Raises:
        ValueError: ``data`` is not the packed size of ``count`` values.
    """
    bits = grid.bits
    if len(data) != -(-count * bits // 8):
        raise ValueError(f"{len(data)} bytes cannot hold {count} values of {bits} bits")
    planes = np.unpackbits(np.frombuffer(data, dtype="uint8"), bitorder="little")
    planes = planes[: count * bits].reshape(count, bits).astype("int64")
    u = (planes << np.arange(bits, dtype="int64")).sum(1)
    q = torch.from_numpy(u * 2 - 1 if grid.binary else u + grid.qmin)
    if count and (q.max() > grid.qmax):
        raise ValueError(f"packed values exceed the {bits}-bit grid")
    return q


# Power-of-two grids: the values q · 2^exponent with small integers q. Such values are exact in
# float16 (|q| < 2^11), and a tensor that lies on one is stored as its integers and exponent.
POW2_EXPONENTS = (-24, 15)  # float16's: its smallest subnormal 2^-24 to 2^15


def pow2_grid(bits: int) -> Grid:
    """The signed grid ±(2^(bits-1) - 1) that :func:`pow2_codes`' integers of ``bits`` fit
    (the weights' grid, at up to 15 bits)."""
    return Grid(-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)


def round_pow2(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` rounded onto the signed ``bits``-bit grid (±(2^(bits-1) - 1)) whose step is the
    smallest power of two that covers max |x|."""
    grid = Grid.weights(bits)
    peak = float(x.detach().abs().max()) if x.numel() else 0.0
    if peak == 0.0 or grid.binary:
        raise ValueError(f"a power-of-two grid needs 2 to 8 bits and a non-zero tensor; got "
                         f"{bits} bits, max |x| {peak}")
    exponent = max(math.ceil(math.log2(peak / grid.qmax)), POW2_EXPONENTS[0])
    step = 2.0 ** exponent
    return (torch.round(x / step).clamp(grid.qmin, grid.qmax) * step).to(x.dtype)


def pow2_values(q: torch.Tensor, exponent: int) -> torch.Tensor:
    """Inverse of :func:`pow2_codes`: the float32 values q · 2^exponent."""
    return torch.ldexp(q.double(), torch.tensor(float(exponent))).float()


def pow2_codes(x: torch.Tensor) -> tuple[torch.Tensor, int, int] | None:
    """The integers q, their exponent and their bits (sign included) of the coarsest
    power-of-two grid that holds every value of the float16 tensor ``x`` exactly; None where
    that takes 16 bits or more (float16 itself is then as small). An all-zero tensor is its
    zeros at 2 bits."""
    values = x.detach().double().flatten()
    if not len(values) or not torch.isfinite(values).all():
        return None
    nonzero = values[values != 0]
    if not len(nonzero):
        return torch.zeros(len(values), dtype=torch.int64), 0, 2
    mantissa, exp = torch.frexp(nonzero)  # |mantissa| in [0.5, 1): 11 significant bits
    ints = (mantissa * 2048).round().to(torch.int64)
    if not torch.equal(ints.double(), mantissa * 2048):
        return None  # not a float16 value
    trailing = (ints & -ints).double().log2().to(torch.int64)
    exponent = int((exp - 11 + trailing).min())
    if not POW2_EXPONENTS[0] <= exponent <= POW2_EXPONENTS[1]:
        return None
    q = torch.ldexp(values, torch.tensor(-exponent, dtype=torch.float64)).to(torch.int64)
    bits = int(q.abs().max()).bit_length() + 1
    return (q, exponent, bits) if bits < 16 else None
