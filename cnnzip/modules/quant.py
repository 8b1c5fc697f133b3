"""A convolution or linear layer with fake-quantized weights and input feature map.

The float ("latent") weight is kept for quantization-aware training; the layer computes with
its weight rounded to a symmetric signed grid (per output channel or per tensor) and, when
feature maps are quantized, with its input rounded to an unsigned grid with a zero point. The
rounding passes gradients straight through and the scales are learned (LSQ). What the layer
computes is exactly what an integer kernel computes from the stored integers and scales, which
is what the container stores (packed at the bit width) and the ONNX export hands to
onnxruntime as QuantizeLinear / DequantizeLinear pairs.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnzip.modules.codebook import WEIGHT_LAYERS, run_layer
from cnnzip.ops.quant import MIN_SCALE, Grid, calibrate, dequantize, fake_quantize, quantize


class QuantLayer(nn.Module):
    """Wraps a Conv2d or Linear (its ``weight`` moves to ``latent``; bias and hyperparameters
    stay with the layer).

    Args:
        layer: the layer to wrap.
        weight_bits: 1 to 8 (2 is ternary, 1 binary).
        act_bits: bits of the input feature map, or 0 to leave it in float.
        per_channel: one weight scale per output channel (else one per tensor).
        out_bits: bits of the output feature map, or 0 to leave it in float (a layer whose
            output meets a residual add is quantized there, so the add reads integers).
    """

    wraps_layer = True  # metrics count this module with ``self.layer``'s geometry

    def __init__(self, layer: nn.Module, weight_bits: int, act_bits: int = 0, *,
                 per_channel: bool = True, out_bits: int = 0):
        super().__init__()
        if not isinstance(layer, WEIGHT_LAYERS):
            raise TypeError(f"cannot quantize {type(layer).__name__}")
        self.w_grid = Grid.weights(weight_bits)
        self.a_grid = Grid.activations(act_bits) if act_bits else None
        self.weight_bits, self.act_bits, self.per_channel = weight_bits, act_bits, per_channel
        latent = layer.weight.detach().clone()
        del layer.weight
        self.layer = layer
        self.latent = nn.Parameter(latent)
        self.w_scale = nn.Parameter(torch.ones(latent.shape[0] if per_channel else 1))
        self.register_buffer("w_zero", torch.zeros_like(self.w_scale), persistent=False)
        if self.a_grid is not None:
            self.a_scale = nn.Parameter(torch.ones(1))
            self.register_buffer("a_zero", torch.zeros(1))
        self.out_bits = out_bits
        self.o_grid = Grid.activations(out_bits) if out_bits else None
        if self.o_grid is not None:
            self.o_scale = nn.Parameter(torch.ones(1))
            self.register_buffer("o_zero", torch.zeros(1))
        self.calibrate_weight("minmax")

    def calibrate_weight(self, observer: str) -> None:
        """Set the weight scale from the latent weight with ``observer``."""
        scale, _ = calibrate(self.latent, self.w_grid, per_channel=self.per_channel,
                             observer=observer)
        with torch.no_grad():
            self.w_scale.copy_(scale)

    def set_weight_bits(self, bits: int, observer: str,
                        scales: dict[int, torch.Tensor] | None = None) -> None:
        """Move the weights to a ``bits``-bit grid, its scale from ``observer`` (or from
        ``scales[bits]``, which keeps the scales found, for searches that revisit widths)."""
        self.w_grid, self.weight_bits = Grid.weights(bits), bits
        if scales is not None and bits in scales:
            with torch.no_grad():
                self.w_scale.copy_(scales[bits])
            return
        self.calibrate_weight(observer)
        if scales is not None:
            scales[bits] = self.w_scale.detach().clone()

    def keep_scales_positive(self) -> None:
        """Clamp the learned scales to at least ``MIN_SCALE`` (LSQ steps are unconstrained; a
        scale at or below zero has no integer kernel and the container refuses it)."""
        with torch.no_grad():
            for name in ("w_scale", "a_scale", "o_scale"):
                scale = getattr(self, name, None)
                if isinstance(scale, torch.Tensor):
                    scale.clamp_(min=MIN_SCALE)

    def set_input_range(self, scale: torch.Tensor, zero: torch.Tensor) -> None:
        with torch.no_grad():
            self.a_scale.copy_(scale.reshape(1))
            self.a_zero.copy_(zero.reshape(1))

    def set_output_range(self, scale: torch.Tensor, zero: torch.Tensor) -> None:
        with torch.no_grad():
            self.o_scale.copy_(scale.reshape(1))
            self.o_zero.copy_(zero.reshape(1))

    def codes(self) -> torch.Tensor:
        """The weight's integers (int64), as the container stores them."""
        with torch.no_grad():
            return quantize(self.latent, self.w_scale, self.w_zero, self.w_grid).long()

    def load_codes(self, codes: torch.Tensor) -> None:
        """Set the latent weight to the dequantized ``codes`` (decoding a container)."""
        with torch.no_grad():
            self.latent.copy_(dequantize(codes.float().view_as(self.latent), self.w_scale,
                                         self.w_zero))

    @property
    def weight(self) -> torch.Tensor:
        """The quantized weight the layer computes with."""
        return fake_quantize(self.latent, self.w_scale, self.w_zero, self.w_grid,
                             learn_scale=self.training)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_grid is None:
            return x
        return fake_quantize(x, self.a_scale, self.a_zero, self.a_grid, learn_scale=self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = run_layer(self.layer, self.quantize_input(x), self.weight)
        if self.o_grid is None:
            return y
        return fake_quantize(y, self.o_scale, self.o_zero, self.o_grid, learn_scale=self.training)

    @property
    def bits(self) -> float:
        return float(self.weight_bits)

    def extra_repr(self) -> str:
        grain = "channel" if self.per_channel else "tensor"
        acts = f"{self.act_bits}-bit" if self.act_bits else "float"
        outs = f", outputs={self.out_bits}-bit" if self.out_bits else ""
        return f"weights={self.weight_bits}-bit per {grain}, inputs={acts}{outs}"
