"""A convolution or linear layer whose non-zero weights share a small codebook.

The codebook (k, d) is a parameter, so fine-tuning moves the centroids: the gradients of all
weights that use a centroid are summed into it (the backward of the gather). The flat positions
of the surviving weights and their codes are buffers. d = 1 is scalar k-means weight sharing;
d > 1 is product quantization over consecutive surviving weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnnzip.modules.merged import FlatLinear
from cnnzip.ops.quant import round_pow2

WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)  # the layers with a weight to prune, quantize, share


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``scale`` (broadcast) backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def expand(codebook: torch.Tensor, codes: torch.Tensor, positions: torch.Tensor,
           shape: tuple[int, ...]) -> torch.Tensor:
    """The dense weight of ``shape`` whose entries at ``positions`` are the coded values."""
    values = codebook[codes].reshape(-1)[: positions.numel()]  # (nnz,)
    flat = values.new_zeros(math.prod(shape))
    return flat.scatter(0, positions, values).view(shape)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Convolution and linear layers (dense, codebook-shared or quantized) by qualified name, in
    definition order; each has a ``weight`` tensor."""
    return {name: m for name, m in model.named_modules()
            if getattr(m, "wraps_layer", False)
            or (isinstance(m, WEIGHT_LAYERS) and isinstance(getattr(m, "weight", None), nn.Parameter))}


def run_layer(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """What the conv or linear ``layer`` computes on ``x``, with ``weight`` in place of its own
    (for wrappers that rebuild or quantize the weight)."""
    if isinstance(layer, nn.Linear):
        if isinstance(layer, FlatLinear):
            x = x.flatten(1)
        return F.linear(x, weight, layer.bias)
    return layer._conv_forward(x, weight, layer.bias)


class CodebookLayer(nn.Module):
    """Wraps a Conv2d or Linear; its dense weight is replaced by codebook, codes and positions.

    Args:
        layer: the layer to wrap (its ``weight`` parameter is removed; bias and hyperparameters
            are kept).
        positions: flat indices of the surviving weights, increasing, (nnz,).
        codebook: centroids (k, d).
        codes: the centroid of each block of d surviving weights, (ceil(nnz / d),).
    """

    wraps_layer = True  # metrics count this module with ``self.layer``'s geometry
    # > 0 while training for a codebook on a power-of-two grid of this many bits: the layer
    # computes with its centroids rounded there, and their gradients pass the rounding
    # unchanged (straight through), so fine-tuning adapts to the values that will be stored
    grid_bits = 0

    def __init__(self, layer: nn.Module, positions: torch.Tensor, codebook: torch.Tensor,
                 codes: torch.Tensor):
        super().__init__()
        if not isinstance(layer, WEIGHT_LAYERS):
            raise TypeError(f"cannot share weights of {type(layer).__name__}")
        self.weight_shape = tuple(layer.weight.shape)
        del layer.weight
        self.layer = layer
        self.assign(positions, codebook, codes)

    def assign(self, positions: torch.Tensor, codebook: torch.Tensor,
               codes: torch.Tensor) -> None:
        """Take new surviving positions, centroids and codes (sizes may change)."""
        self.codebook = nn.Parameter(codebook.detach().float().clone())
        self.register_buffer("positions", positions.long().clone())
        self.register_buffer("codes", codes.long().clone())
        sizes = torch.bincount(self.codes, minlength=self.codebook.shape[0]).clamp(min=1)
        self.register_buffer("inv_cluster_size", (1.0 / sizes.float())[:, None], persistent=False)

    @property
    def nnz(self) -> int:
        return int(self.positions.numel())

    def dense_weight(self) -> torch.Tensor:
        # A centroid's gradient is the sum over the weights that share it (the gather's
        # backward); dividing by the cluster size makes its step that of one weight, so a single
        # learning rate suits clusters of 10 and of 10,000 weights alike.
        codebook = _ScaleGrad.apply(self.codebook, self.inv_cluster_size)  # (k, d)
        if self.grid_bits and codebook.detach().abs().max() > 0:
            codebook = codebook + (round_pow2(codebook, self.grid_bits) - codebook).detach()
        return expand(codebook, self.codes, self.positions, self.weight_shape)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight the layer computes with (rebuilt on every access)."""
        return self.dense_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_layer(self.layer, x, self.dense_weight())

    @property
    def bits(self) -> float:
        """Bits of a code, per weight it stands for."""
        k, d = self.codebook.shape
        return math.log2(max(k, 2)) / d

    def extra_repr(self) -> str:
        k, d = self.codebook.shape
        sparsity = 1 - self.nnz / math.prod(self.weight_shape)
        return (f"shape={self.weight_shape}, k={k}, d={d}, bits/weight={self.bits:.2f}, "
                f"sparsity={sparsity:.3f}")
