"""Channel importance scores: pure tensor math over the slices of one weight tensor.

Every function returns one score per index along ``dim`` (higher: more important).
"""

from __future__ import annotations

import torch


def _rows(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """``weight`` as (size along dim, everything else)."""
    return weight.detach().movedim(dim, 0).reshape(weight.shape[dim], -1)


def lp_norm(weight: torch.Tensor, dim: int, p: float) -> torch.Tensor:
    """The Lp norm of every slice along ``dim`` (L1, L2 filter norm)."""
    return _rows(weight, dim).norm(p=p, dim=1)


def geometric_median_distance(weight: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """FPGM (He et al. 2019): each filter's summed L2 distance to all others of the layer; the
    filters nearest the geometric median are the most replaceable and score lowest."""
    rows = _rows(weight, dim)
    return torch.cdist(rows[None], rows[None])[0].sum(1)


def taylor(weight: torch.Tensor, grad: torch.Tensor, dim: int) -> torch.Tensor:
    """First-order Taylor (Molchanov et al. 2019): |Σ w·∂L/∂w| over each slice, the loss
    change the slice's removal causes to first order."""
    return (_rows(weight, dim) * _rows(grad, dim)).sum(1).abs()


def active_fraction(output: torch.Tensor) -> torch.Tensor:
    """1 − APoZ (Hu et al. 2016): per channel (dim 1), the fraction of positive outputs, i.e.
    of activations a following ReLU would pass."""
    dims = [d for d in range(output.dim()) if d != 1]
    return (output.detach() > 0).float().mean(dim=dims)


def normalized(scores: torch.Tensor) -> torch.Tensor:
    """Scores divided by their mean, so layers of different scale can be ranked together."""
    return scores / scores.mean().clamp_min(1e-12)
