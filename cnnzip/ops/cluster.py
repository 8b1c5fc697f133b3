"""Weight sharing by clustering on faiss: scalar k-means (d = 1) and product quantization
(sub-vectors of d weights, one codebook of k centroids per layer)."""

from __future__ import annotations

import enum

import faiss
import numpy as np


class Init(enum.Enum):
    """How k-means chooses its first centroids."""

    LINEAR = "linear"  # evenly spaced over [min, max] per dimension (Deep Compression's choice)
    KMEANS_PP = "kmeans++"  # D² sampling (Arthur & Vassilvitskii)
    RANDOM = "random"  # faiss's default: a random sample of the points


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator, sample: int = 20000) -> np.ndarray:
    if len(x) > sample:
        x = x[rng.choice(len(x), sample, replace=False)]
    centers = [x[rng.integers(len(x))]]
    dist = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = dist.sum()
        idx = rng.choice(len(x), p=dist / total) if total > 0 else rng.integers(len(x))
        centers.append(x[idx])
        dist = np.minimum(dist, ((x - x[idx]) ** 2).sum(1))
    return np.stack(centers).astype(np.float32)


def initial_centroids(x: np.ndarray, k: int, init: Init, seed: int) -> np.ndarray | None:
    """Starting centroids (k, d), or None to let faiss sample them."""
    if init is Init.LINEAR:
        lo, hi = x.min(0), x.max(0)
        return np.linspace(lo, hi, k, dtype=np.float32).reshape(k, x.shape[1])
    if init is Init.KMEANS_PP:
        return _kmeans_pp(x, k, np.random.default_rng(seed))
    return None


def train(x: np.ndarray, k: int, *, init: Init = Init.LINEAR, seed: int = 0, niter: int = 25,
          max_points_per_centroid: int = 1 << 30,
          weights: np.ndarray | None = None) -> np.ndarray:
    """k-means centroids (k, d) of the rows of ``x`` (n, d), 1 ≤ k < n, on faiss (which trains
    on at most ``max_points_per_centroid`` · k sampled rows); ``weights`` (n,) weigh each row's
    squared error (a centroid moves to its rows' weighted mean)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed,
                      max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1)
    if weights is not None:
        weights = np.ascontiguousarray(weights, dtype=np.float32)
    km.train(x, weights=weights, init_centroids=initial_centroids(x, k, init, seed))
    return km.centroids.copy()


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each row's nearest centroid (n,) int64, by faiss's exhaustive search."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, codes = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return codes[:, 0].astype(np.int64)


def scalar_bounds(centroids: np.ndarray, rate: np.ndarray | None = None,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The centroids (k, 1) that win somewhere and the bounds between them, for assigning a
    scalar v to the centroid minimising ``(v − c)² + rate(c)`` (``rate`` (k,): 0 when None):
    v's centroid is ``winners[searchsorted(bounds, v)]``.

    Less v², each cost is a line in v, ``−2c·v + c² + rate(c)``, so the winners are the lower
    envelope of k lines, found in one pass over the centroids in increasing order; with no
    rate the bounds are the midpoints between neighbouring centroids.
    """
    c = centroids[:, 0].astype(np.float64)
    r = np.zeros_like(c) if rate is None else np.asarray(rate, dtype=np.float64)
    offset = c * c + r

    def cross(a: int, b: int) -> float:  # where line b (the larger centroid) starts to win
        return (offset[b] - offset[a]) / (2 * (c[b] - c[a]))

    hull: list[int] = []
    for j in np.lexsort((r, c)):  # by centroid, a tie by rate (the cheaper one first)
        if hull and c[hull[-1]] == c[j]:
            continue  # the same centroid at a higher rate never wins
        while len(hull) >= 2 and cross(hull[-2], j) <= cross(hull[-2], hull[-1]):
            hull.pop()
        hull.append(int(j))
    bounds = np.array([cross(a, b) for a, b in zip(hull, hull[1:])], dtype=np.float64)
    return np.array(hull, dtype=np.int64), bounds


def assign_scalar(values: np.ndarray, centroids: np.ndarray,
                  rate: np.ndarray | None = None) -> np.ndarray:
    """Each scalar's centroid among ``centroids`` (k, 1), the nearest or, with ``rate`` (k,),
    the one minimising ``(v − c)² + rate(c)``, by a binary search among the bounds of
    :func:`scalar_bounds` (what a scalar codebook needs; no distances computed)."""
    winners, bounds = scalar_bounds(centroids, rate)
    return winners[np.searchsorted(bounds, values)]


def kmeans(x: np.ndarray, k: int, *, init: Init = Init.LINEAR, seed: int = 0, niter: int = 25,
           max_points_per_centroid: int = 1 << 30,
           weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the rows of ``x`` (n, d) into at most ``k`` centroids: :func:`train` (weighted
    by ``weights`` (n,) when given), then :func:`assign` (the nearest centroid: a row's weight
    does not change which that is).

    Returns:
        centroids (k', d) float32 with k' = min(k, n) and codes (n,) int64.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, _ = x.shape
    k = max(1, min(k, n))
    if k == n:  # as many centroids as points: every point is its own centroid
        return x.copy(), np.arange(n, dtype=np.int64)
    centroids = train(x, k, init=init, seed=seed, niter=niter,
                      max_points_per_centroid=max_points_per_centroid, weights=weights)
    return centroids, assign(x, centroids)


def _assign_weighted(x: np.ndarray, centroids: np.ndarray, weights: np.ndarray,
                     rate: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Each row's centroid minimising ``weight · ‖x − c‖² + rate(c)`` (n,) int64, in chunks
    of rows (a per-row weight on the error is no extra dimension, so no faiss search)."""
    codes = np.empty(len(x), np.int64)
    for start in range(0, len(x), chunk):
        rows = x[start:start + chunk]
        error = ((rows[:, None, :] - centroids[None, :, :]) ** 2).sum(2)
        cost = weights[start:start + chunk, None] * error + rate[None, :]
        codes[start:start + chunk] = cost.argmin(1)
    return codes


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Each code's length in bits under an entropy coder, ``−log2`` of its share of
    ``counts`` (k,); an unused code's would be infinite, and 64 bits keeps it out."""
    counts = np.asarray(counts, dtype=np.float64)
    share = np.maximum(counts, 1) / max(counts.sum(), 1)
    return np.where(counts > 0, -np.log2(share), 64.0)


def entropy_constrained(x: np.ndarray, centroids: np.ndarray, weight: float, *,
                        niter: int = 25, weights: np.ndarray | None = None,
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Entropy-constrained clustering (Chou, Lookabaugh and Gray 1989; for weight sharing,
    Choi et al. 2017): from ``centroids`` (k, d), alternately assign every row of ``x`` to the
    centroid minimising ``‖x − c‖² + λ · len(c)``, with ``len(c) = −log2 p(c)`` the bits its
    code costs under an entropy coder and ``λ = weight · total variance of x``, and move each
    centroid to its rows' mean. Rare codes grow expensive, so rows drift to common ones and
    the codes' entropy falls, at some cost in squared error. ``weight`` 0 is plain k-means.

    The rate term is a distance in one more dimension (rows get 0 there, centroid c gets
    √(λ · len(c))), so faiss's exact search does the assignment.

    With ``weights`` (n,) (a row's importance, e.g. its loss's curvature: Choi et al.'s
    Hessian-weighted quantization) the error term is ``weights · ‖x − c‖²`` and centroids
    move to their rows' weighted means; ``λ`` is then scaled by the mean weight, so that
    ``weight`` means what it does unweighted.

    Returns:
        centroids (k, d) float32 (unused ones kept where they were) and codes (n,) int64.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    k = len(centroids)
    c = np.array(centroids, dtype=np.float32)
    lam = weight * float(x.var(0).sum())
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        lam *= float(weights.mean())
    lengths = np.full(k, np.log2(k))
    padded = np.hstack([x, np.zeros((n, 1), np.float32)]) if weights is None else None
    codes = None
    for _ in range(niter):
        if padded is not None:
            extra = np.sqrt(lam * lengths).astype(np.float32)[:, None]
            new = assign(padded, np.hstack([c, extra]))
        else:
            new = _assign_weighted(x, c, weights, lam * lengths)
        if codes is not None and np.array_equal(new, codes):
            break
        codes = new
        counts = np.bincount(codes, minlength=k)
        mass = counts if weights is None else np.bincount(codes, weights=weights, minlength=k)
        used = mass > 0
        for j in range(d):
            rows = x[:, j] if weights is None else x[:, j] * weights
            c[used, j] = np.bincount(codes, weights=rows, minlength=k)[used] / mass[used]
        lengths = code_lengths(counts)
    return c, codes


def to_blocks(values: np.ndarray, d: int) -> np.ndarray:
    """A flat vector → (ceil(n / d), d) sub-vectors, the last one zero-padded."""
    pad = (-len(values)) % d
    return np.concatenate([values, np.zeros(pad, values.dtype)]).reshape(-1, d)
