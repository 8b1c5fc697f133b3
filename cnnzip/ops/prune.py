"""Magnitude masks for unstructured pruning."""

from __future__ import annotations

import torch


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``(1 - sparsity)`` fraction of entries with the largest magnitude.

    Returns:
        A bool tensor shaped like ``weight``; exactly ``round(sparsity · n)`` entries are False.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    n = weight.numel()
    drop = int(round(sparsity * n))
    mask = torch.ones(n, dtype=torch.bool)
    if drop:
        order = torch.argsort(weight.detach().abs().flatten(), stable=True)
        mask[order[:drop]] = False
    return mask.view_as(weight)


def threshold_mask(weight: torch.Tensor, quality: float) -> torch.Tensor:
    """Deep Compression's rule: keep ``|w| > quality · std(w)``."""
    return weight.detach().abs() > quality * weight.detach().std()


def agp_sparsity(final: float, step: int, total: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's gradual (cubic) schedule: ``s_f + (s_i - s_f)(1 - t/T)³``, clamped at T."""
    t = min(max(step, 0), total) / max(total, 1)
    return final + (initial - final) * (1.0 - t) ** 3
