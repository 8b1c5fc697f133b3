"""Time scalar k-means against product quantization at equal bits per weight on the weights of
a VGG-16-sized model (138M random weights), both on faiss, in the same process.

    python benchmarks/kmeans_vs_pq.py [--params 138000000] [--bits 2 1]

At b bits per weight, k-means uses 2^b centroids over single weights; PQ uses 256 centroids
(8-bit codes) over sub-vectors of d = 8 / b weights. Both train on faiss's default sample
(256 points per centroid) and then assign every weight; the time of both phases is reported.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from cnnzip.ops.cluster import Init, kmeans, to_blocks


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def mse(x: np.ndarray, centroids: np.ndarray, codes: np.ndarray) -> float:
    sample = slice(0, min(len(codes), 2_000_000))
    return float(((x[sample] - centroids[codes[sample]]) ** 2).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=138_000_000)
    parser.add_argument("--bits", type=float, nargs="+", default=[2.0, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    weights = (rng.standard_normal(args.params, dtype=np.float32) * 0.02)
    print(f"{args.params:,} weights, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} "
          "threads", flush=True)
    for bits in args.bits:
        k = int(round(2 ** bits))
        d = int(round(8 / bits))
        t_km, (c_km, codes_km) = timed(lambda: kmeans(weights[:, None], k, init=Init.RANDOM,
                                                      seed=args.seed, max_points_per_centroid=256))
        blocks = to_blocks(weights, d)
        t_pq, (c_pq, codes_pq) = timed(lambda: kmeans(blocks, 256, init=Init.RANDOM,
                                                      seed=args.seed, max_points_per_centroid=256))
        print(f"{bits:g} bits/weight: k-means k={k} {t_km:6.1f} s (MSE {mse(weights[:, None], c_km, codes_km):.3e})"
              f" | PQ d={d} k=256 {t_pq:6.1f} s (MSE {mse(blocks, c_pq, codes_pq) :.3e})"
              f" | PQ speed-up {t_km / t_pq:.2f}×", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
