"""Low-rank factors of weight tensors: truncated SVD of a matrix, Tucker-2 (Kim et al. 2016) and
CP (Lebedev et al. 2015) of a convolution's 4-way kernel, on tensorly; and the spectra that
choose ranks by energy.

Every function takes and returns float32 torch tensors; the decompositions run in float64 on
numpy (tensorly's numpy backend, so no global backend is switched).
"""

from __future__ import annotations

import warnings

import numpy as np
import tensorly as tl
import torch
from tensorly.cp_tensor import CPTensor
from tensorly.decomposition import parafac, partial_tucker


def _np(w: torch.Tensor) -> np.ndarray:
    return w.detach().double().cpu().numpy()


def _torch(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).float()


def spectrum(w: torch.Tensor, mode: int) -> np.ndarray:
    """Singular values of ``w`` unfolded along ``mode`` (rows = that mode's indices), largest
    first."""
    return np.linalg.svd(tl.unfold(_np(w), mode), compute_uv=False)


def energy_rank(singular: np.ndarray, energy: float) -> int:
    """The fewest leading singular values whose squares hold at least ``energy`` of the sum of
    all squares (at least 1)."""
    power = np.cumsum(singular.astype(np.float64) ** 2)
    if power[-1] <= 0:
        return 1
    return int(min(len(singular), np.searchsorted(power / power[-1], energy - 1e-12) + 1))


def svd_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (out, in) ≈ ``last @ first`` with ``first`` (rank, in) and ``last`` (out, rank),
    the singular values split evenly between them (the truncated SVD: the best rank-``rank``
    approximation in Frobenius norm)."""
    u, s, vt = np.linalg.svd(_np(w), full_matrices=False)
    root = np.sqrt(s[:rank])
    return _torch(root[:, None] * vt[:rank]), _torch(u[:, :rank] * root[None, :])


def tucker2(w: torch.Tensor, rank_out: int, rank_in: int | None, *, iterations: int = 20,
            seed: int = 0) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Tucker-2 of a kernel ``w`` (out, in, kh, kw) by HOOI from the HOSVD.

    Returns ``(first, core, last)``: ``first`` (rank_in, in) projects the input channels (None
    when ``rank_in`` is None: the input mode is kept whole, Tucker-1), ``core`` (rank_out,
    rank_in or in, kh, kw) is the spatial convolution, ``last`` (out, rank_out) expands to the
    output channels. ``w ≈ core ×₀ last ×₁ firstᵀ``.
    """
    modes, ranks = ([0, 1], [rank_out, rank_in]) if rank_in is not None else ([0], [rank_out])
    (core, factors), _ = partial_tucker(_np(w), rank=ranks, modes=modes, n_iter_max=iterations,
                                        init="svd", tol=1e-6, random_state=seed)
    first = _torch(factors[1].T) if rank_in is not None else None
    return first, _torch(core), _torch(factors[0])


def cp(w: torch.Tensor, rank: int, *, iterations: int = 100,
       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-``rank`` CP of a kernel ``w`` (out, in, kh, kw) by alternating least squares.

    Returns ``(first, vertical, horizontal, last)``: (rank, in), (rank, kh), (rank, kw) and
    (out, rank), with the component weights folded into ``last``, so that ``w[o, i, y, x] ≈
    Σ_r last[o, r] · first[r, i] · vertical[r, y] · horizontal[r, x]``: a 1×1 convolution to
    ``rank`` channels, a kh×1 and a 1×kw depthwise convolution, a 1×1 convolution back.
    """
    t = _np(w)
    with warnings.catch_warnings():  # tensorly advises against a given start with normalizing
        warnings.simplefilter("ignore", UserWarning)
        weights, (a, b, c, d) = parafac(t, rank=rank, n_iter_max=iterations,
                                        init=_svd_start(t, rank, seed), tol=1e-8,
                                        random_state=seed, normalize_factors=True)
    return _torch(b.T), _torch(c.T), _torch(d.T), _torch(a * weights[None, :])


def _svd_start(t: np.ndarray, rank: int, seed: int) -> CPTensor:
    """CP's usual start, as tensorly's ``init="svd"`` makes it: each mode's factor the leading
    left singular vectors of the tensor unfolded along it (the first scaled by the singular
    values), padded with uniform random columns where the rank exceeds the mode's size. Made
    here with thin SVDs: tensorly's asks for ``rank`` vectors of a 3 × 147,456 unfolding of a
    128 × 128 × 3 × 3 kernel and computes the full one (22 GB)."""
    rng = np.random.default_rng(seed)
    factors = []
    for mode in range(t.ndim):
        u, sv, _ = np.linalg.svd(tl.unfold(t, mode), full_matrices=False)
        u = u[:, :rank]
        if mode == 0:
            u = u * sv[:u.shape[1]]
        if u.shape[1] < rank:
            u = np.concatenate([u, rng.random((u.shape[0], rank - u.shape[1]))], axis=1)
        factors.append(u)
    return CPTensor((np.ones(rank), factors))


def relative_error(w: torch.Tensor, approx: torch.Tensor) -> float:
    """‖w − approx‖ / ‖w‖ (0 for a zero ``w`` approximated exactly)."""
    w, approx = w.detach(), approx.detach()
    norm = float(torch.linalg.vector_norm(w))
    diff = float(torch.linalg.vector_norm(w - approx))
    return diff / norm if norm > 0 else diff
