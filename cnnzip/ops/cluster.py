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


def kmeans(x: np.ndarray, k: int, *, init: Init = Init.LINEAR, seed: int = 0, niter: int = 25,
           max_points_per_centroid: int = 1 << 30) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the rows of ``x`` (n, d) into at most ``k`` centroids.

    Returns:
        centroids (k', d) float32 with k' = min(k, n) and codes (n,) int64.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    k = max(1, min(k, n))
    if k == n:  # as many centroids as points: every point is its own centroid
        return x.copy(), np.arange(n, dtype=np.int64)
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, max_points_per_centroid=max_points_per_centroid,
                      min_points_per_centroid=1)
    start = initial_centroids(x, k, init, seed)
    if start is None:
        km.train(x)
    else:
        km.train(x, init_centroids=start)
    _, codes = km.index.search(x, 1)
    return km.centroids.copy(), codes[:, 0].astype(np.int64)


def to_blocks(values: np.ndarray, d: int) -> np.ndarray:
    """A flat vector → (ceil(n / d), d) sub-vectors, the last one zero-padded."""
    pad = (-len(values)) % d
    return np.concatenate([values, np.zeros(pad, values.dtype)]).reshape(-1, d)
