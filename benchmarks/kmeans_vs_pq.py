"""Time scalar k-means against product quantization at equal bits per weight, as cnnzip's `share`
step runs them, training and assignment timed apart, beside a scalar threshold assignment.

    python benchmarks/kmeans_vs_pq.py [--params 2000000 20000000 138000000] [--bits 2 1]
        [--init linear] [--sample 0]

At b bits per weight, k-means has 2^b centroids over single weights (share's `kmeans`); PQ has
256 centroids (8-bit codes) over sub-vectors of d = 8 / b weights (share's `pq` with
`block: d`). Both go through the same functions `share` calls (`cnnzip.ops.cluster.train` and
`assign`, faiss), with the same initialisation, 25 iterations, faiss's threads, and the same
training sample: all points, as `share` trains (`--sample N`: N points per centroid, faiss's
own default being 256). The scalar codebook is also assigned by thresholds (a binary search
among the midpoints of the sorted centroids, `assign_scalar`). Weights: normal, σ = 0.02, seeded.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from cnnzip.ops.cluster import Init, assign, assign_scalar, to_blocks, train


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def mse_per_weight(x: np.ndarray, centroids: np.ndarray, codes: np.ndarray) -> float:
    return float(((x - centroids[codes]) ** 2).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, nargs="+",
                        default=[2_000_000, 20_000_000, 138_000_000])
    parser.add_argument("--bits", type=float, nargs="+", default=[2.0, 1.0])
    parser.add_argument("--init", choices=[i.value for i in Init], default=Init.LINEAR.value)
    parser.add_argument("--sample", type=int, default=0,
                        help="training points per centroid (0: all, as share trains)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    init = Init(args.init)
    sample = args.sample or 1 << 30
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, init {init.value}, "
          f"training sample {'all points' if not args.sample else f'{args.sample}/centroid'}")
    print("| weights | bits/weight | k-means train | k-means assign (faiss) | threshold assign "
          "| PQ train | PQ assign | k-means total / PQ total | MSE k-means | MSE PQ |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.params:
        weights = np.random.default_rng(args.seed).standard_normal(n, dtype=np.float32) * 0.02
        scalars = weights[:, None]
        for bits in args.bits:
            k, d = int(round(2 ** bits)), int(round(8 / bits))
            t_kt, c_km = timed(lambda: train(scalars, k, init=init, seed=args.seed,
                                             max_points_per_centroid=sample))
            t_ka, codes_km = timed(lambda: assign(scalars, c_km))
            t_ts, codes_ts = timed(lambda: assign_scalar(weights, c_km))
            blocks = to_blocks(weights, d)
            t_pt, c_pq = timed(lambda: train(blocks, 256, init=init, seed=args.seed,
                                             max_points_per_centroid=sample))
            t_pa, codes_pq = timed(lambda: assign(blocks, c_pq))
            agree = float((codes_ts == codes_km).mean())
            print(f"| {n:,} | {bits:g} | {t_kt:.2f} s | {t_ka:.2f} s | {t_ts:.2f} s "
                  f"({100 * agree:.3f}% same codes) | {t_pt:.2f} s | {t_pa:.2f} s "
                  f"| {(t_kt + t_ka) / (t_pt + t_pa):.2f}× "
                  f"| {mse_per_weight(scalars, c_km, codes_ts):.3e} "
                  f"| {mse_per_weight(blocks, c_pq, codes_pq):.3e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
