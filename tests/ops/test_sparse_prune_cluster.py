import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnzip.ops.cluster import Init, kmeans, to_blocks
from cnnzip.ops.prune import agp_sparsity, magnitude_mask, threshold_mask
from cnnzip.ops.sparse import choose_max_gap, gaps_to_positions, positions_to_gaps


@given(st.sets(st.integers(0, 5000), max_size=300), st.sampled_from([1, 3, 7, 31, 255]))
@settings(max_examples=80, deadline=None)
def test_gap_coding_round_trip(positions, max_gap):
    positions = np.array(sorted(positions), dtype=np.int64)
    gaps = positions_to_gaps(positions, max_gap)
    assert gaps.max(initial=0) <= max_gap
    assert np.array_equal(gaps_to_positions(gaps, max_gap), positions)


def test_filler_symbols():
    # a run of 10 zeros with max_gap 4: two fillers (8 zeros), then "skip 2, non-zero"
    assert positions_to_gaps(np.array([10]), 4).tolist() == [4, 4, 2]


def test_choose_max_gap_is_a_candidate():
    rng = np.random.default_rng(0)
    positions = np.sort(rng.choice(10_000, 500, replace=False))
    assert choose_max_gap(positions) in (7, 15, 31, 63, 127, 255)


def test_magnitude_mask_exact_count():
    w = torch.randn(40, 50)
    mask = magnitude_mask(w, 0.9)
    assert int((~mask).sum()) == 1800
    assert w[mask].abs().min() >= w[~mask].abs().max()


def test_threshold_mask_and_agp():
    w = torch.tensor([0.1, -2.0, 0.5, 3.0])
    assert threshold_mask(w, 0.5).tolist() == (w.abs() > 0.5 * w.std()).tolist()
    assert agp_sparsity(0.9, 0, 100) == 0.0 and agp_sparsity(0.9, 100, 100) == pytest.approx(0.9)
    assert agp_sparsity(0.9, 50, 100) == pytest.approx(0.9 * (1 - 0.125))


@pytest.mark.parametrize("init", [Init.LINEAR, Init.KMEANS_PP])
def test_kmeans_finds_separated_clusters(init):
    rng = np.random.default_rng(0)
    centers = np.array([-3.0, 0.0, 4.0])
    x = (centers[rng.integers(0, 3, 3000)] + 0.05 * rng.normal(size=3000))[:, None]
    cents, codes = kmeans(x, 3, init=init, seed=0)
    assert np.allclose(np.sort(cents[:, 0]), centers, atol=0.05)
    assert np.allclose(cents[codes, 0], x[:, 0], atol=0.3)


def test_kmeans_is_deterministic_and_handles_few_points():
    x = np.random.default_rng(1).normal(size=(500, 4)).astype(np.float32)
    a, b = kmeans(x, 16, seed=3), kmeans(x, 16, seed=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    cents, codes = kmeans(x[:5], 16)
    assert cents.shape == (5, 4) and np.array_equal(cents[codes], x[:5])


def test_to_blocks_pads():
    assert to_blocks(np.arange(5, dtype=np.float32), 2).tolist() == [[0, 1], [2, 3], [4, 0]]


def test_threshold_assignment_finds_the_nearest_scalar_centroid():
    from cnnzip.ops.cluster import assign, assign_scalar

    rng = np.random.default_rng(0)
    values = rng.standard_normal(10_000).astype(np.float32)
    centroids = rng.standard_normal((16, 1)).astype(np.float32)
    by_threshold = assign_scalar(values, centroids)
    exact = np.abs(values[:, None] - centroids[None, :, 0]).argmin(1)
    assert np.array_equal(by_threshold, exact)
    assert (assign(values[:, None], centroids) == exact).mean() > 0.999  # faiss: float distances


def test_threshold_assignment_with_rates_minimises_error_plus_rate():
    from cnnzip.ops.cluster import assign_scalar

    rng = np.random.default_rng(1)
    values = rng.standard_normal(20_000)
    centroids = np.vstack([rng.standard_normal((15, 1)), [[0.3]]])  # and a repeated centroid:
    centroids[3] = 0.3
    rate = rng.uniform(0, 0.5, 16)
    rate[[3, 7]] = [0.05, 64.0]  # the cheaper of two equal centroids; one that never wins
    codes = assign_scalar(values, centroids, rate)
    cost = (values[:, None] - centroids[None, :, 0]) ** 2 + rate[None, :]
    assert np.allclose(cost[np.arange(len(values)), codes], cost.min(1))
    assert 7 not in codes and len(np.unique(codes)) < 16  # expensive codes lose their weights


def _entropy(codes):
    p = np.bincount(codes) / len(codes)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


@pytest.mark.parametrize("d", [1, 2])
def test_entropy_constrained_clustering_trades_error_for_a_lower_entropy(d):
    from cnnzip.ops.cluster import entropy_constrained

    rng = np.random.default_rng(0)
    x = (rng.laplace(size=(20000, d)) * 0.05).astype(np.float32)
    start, _ = kmeans(x, 32)
    points = []
    for weight in (0.0, 0.01, 0.03, 0.1):
        c, codes = entropy_constrained(x, start, weight)
        points.append((_entropy(codes), float(((x - c[codes]) ** 2).mean())))
    rates, errors = zip(*points)
    assert list(rates) == sorted(rates, reverse=True) and list(errors) == sorted(errors)


def test_entropy_constrained_clustering_beats_fewer_centroids_at_the_same_rate():
    from cnnzip.ops.cluster import entropy_constrained

    rng = np.random.default_rng(0)
    x = (rng.laplace(size=(20000, 1)) * 0.05).astype(np.float32)
    few, few_codes = entropy_constrained(x, kmeans(x, 8)[0], 0.0)  # plain k-means, k = 8
    rate, error = _entropy(few_codes), float(((x - few[few_codes]) ** 2).mean())
    start, (lo, hi) = kmeans(x, 32)[0], (0.0, 1.0)
    for _ in range(12):  # the smallest weight that brings 32 centroids down to that rate
        c, codes = entropy_constrained(x, start, (lo + hi) / 2)
        lo, hi = ((lo + hi) / 2, hi) if _entropy(codes) > rate else (lo, (lo + hi) / 2)
    c, codes = entropy_constrained(x, start, hi)
    assert _entropy(codes) <= rate
    assert float(((x - c[codes]) ** 2).mean()) < 0.9 * error


def test_weighted_kmeans_moves_a_centroid_to_its_rows_weighted_mean():
    x = np.array([[0.0], [1.0], [10.0], [10.5]], np.float32)
    plain, _ = kmeans(x, 2, seed=0)
    heavy, codes = kmeans(x, 2, seed=0, weights=np.array([1.0, 99.0, 1.0, 1.0]))
    assert sorted(plain[:, 0].tolist()) == pytest.approx([0.5, 10.25], abs=1e-5)
    assert sorted(heavy[:, 0].tolist()) == pytest.approx([0.99, 10.25], abs=1e-5)
    assert codes[0] == codes[1] != codes[2] == codes[3]


def test_entropy_constrained_clustering_with_unit_weights_is_the_unweighted_one():
    from cnnzip.ops.cluster import entropy_constrained

    rng = np.random.default_rng(1)
    x = (rng.laplace(size=(3000, 1)) * 0.05).astype(np.float32)
    start, _ = kmeans(x, 16)
    c, codes = entropy_constrained(x, start, 0.05)
    cw, codes_w = entropy_constrained(x, start, 0.05, weights=np.ones(len(x)))
    assert np.array_equal(codes, codes_w)
    assert np.allclose(c, cw, atol=1e-6)


def test_entropy_constrained_clustering_keeps_heavy_rows_on_their_own_centroid():
    from cnnzip.ops.cluster import entropy_constrained

    # 1,000 rows near 0 and 5 rows at 1: the rate term pulls the rare rows onto the common
    # centroid unless their errors weigh enough
    x = np.concatenate([np.random.default_rng(2).normal(0, 0.01, 1000), np.ones(5)])
    x = x.astype(np.float32)[:, None]
    start = np.array([[0.0], [1.0]], np.float32)
    _, codes = entropy_constrained(x, start, 100.0)
    assert len(set(codes[-5:].tolist())) == 1 and codes[-1] == codes[0]
    weights = np.concatenate([np.ones(1000), np.full(5, 1e4)])
    c, codes = entropy_constrained(x, start, 100.0, weights=weights)
    assert codes[-1] != codes[0] and c[codes[-1], 0] == pytest.approx(1.0)
