"""A convolution or linear layer whose non-zero weights share a small codebook.

The codebook (k, d) is a parameter, so fine-tuning moves the centroids: the gradients of all
weights that use a centroid are summed into it (the backward of the gather). The flat positions
of the surviving weights and their codes are buffers. d = 1 is scalar k-means weight sharing;
d > 1 is product quantization over consecutive surviving weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnzip.modules.merged import FlatLinear
from cnnzip.ops.cluster import assign_scalar, code_lengths
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
            or (isinstance(m, WEIGHT_LAYERS)
                and isinstance(getattr(m, "weight", None), nn.Parameter))}


def run_layer(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """What the conv or linear ``layer`` computes on ``x``, with ``weight`` in place of its own
    (for wrappers that rebuild or quantize the weight)."""
    if isinstance(layer, nn.Linear):
        if isinstance(layer, FlatLinear):
            x = x.flatten(1)
        return F.linear(x, weight, layer.bias)
    return layer._conv_forward(x, weight, layer.bias)


def _on_grid(codebook: torch.Tensor, bits: int) -> torch.Tensor:
    """``codebook`` rounded onto the power-of-two grid of ``bits`` (0: as it is), with the
    rounding's gradient passed straight through."""
    if bits and codebook.detach().abs().max() > 0:
        return codebook + (round_pow2(codebook, bits) - codebook).detach()
    return codebook


class ClusteredWeight(nn.Module):
    """A parametrization (``torch.nn.utils.parametrize``) of a conv or linear weight for
    weight sharing that trains the weights too: each forward replaces every surviving weight
    by the scalar centroid that minimises ``(w − c)² + rate(c)``, the rate being ``lam`` times
    the code's length in bits (``−log2`` of its share of the weights, from
    :meth:`update_rates`), so weights move between clusters as they train. The output's
    gradient reaches both the centroid (summed over its weights and divided by their number,
    as in :class:`CodebookLayer`) and each float weight (straight through the rounding).

    Args:
        positions: flat indices of the surviving weights (nnz,); the others compute as zero.
        codebook: starting centroids (k, 1).
        codes: the starting assignment (nnz,), which sets the first rates.
        lam: the rate's weight (0: the nearest centroid).
        grid_bits: > 0: the centroids compute rounded onto that power-of-two grid.
    """

    def __init__(self, positions: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor,
                 lam: float = 0.0, grid_bits: int = 0):
        super().__init__()
        if codebook.ndim != 2 or codebook.shape[1] != 1:
            raise ValueError(f"a scalar codebook (k, 1) is needed, got {tuple(codebook.shape)}")
        self.register_buffer("positions", positions.long().clone())
        self.codebook = nn.Parameter(codebook.detach().float().clone())
        self.register_buffer("codes", codes.long().clone())
        self.register_buffer("rate", torch.zeros(len(codebook), dtype=torch.float64))
        self.lam, self.grid_bits = lam, grid_bits
        self.update_rates()

    def update_rates(self) -> None:
        """Each code's rate from how many weights the last forward gave it (an unused code
        costs 64 bits, so with ``lam`` > 0 it does not come back)."""
        counts = np.bincount(self.codes.numpy(), minlength=len(self.codebook))
        self.rate = torch.from_numpy(self.lam * code_lengths(counts))

    def assign(self, values: torch.Tensor, codebook: torch.Tensor) -> None:
        self.codes = torch.from_numpy(assign_scalar(
            values.detach().double().numpy(), codebook.detach().double().numpy(),
            self.rate.numpy()))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.reshape(-1)
        values = flat[self.positions]
        codebook = _on_grid(self.codebook, self.grid_bits)
        self.assign(values, codebook)
        sizes = torch.bincount(self.codes, minlength=len(codebook)).clamp(min=1)
        coded = _ScaleGrad.apply(codebook, (1.0 / sizes.float())[:, None])[self.codes, 0]
        shared = coded + (values - values.detach())  # the centroid's value, both gradients
        return flat.new_zeros(flat.shape).scatter(0, self.positions, shared).view_as(weight)


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
        return expand(_on_grid(codebook, self.grid_bits), self.codes, self.positions,
                      self.weight_shape)

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
