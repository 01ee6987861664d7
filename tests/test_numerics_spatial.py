"""toolkit.numerics.spatial: every O(n) metric against a brute-force definition, and known patterns."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from toolkit.numerics import spatial

SHAPES = [(1, 1), (1, 7), (5, 1), (2, 2), (7, 9), (12, 10)]


def random_grid(shape: tuple[int, int], seed: int, p: float = 0.5) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < p).astype(np.int64)


def brute_neighbours(shape: tuple[int, int]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Every ORDERED rook-neighbour pair, found by looping over all pairs of cells (O(n²))."""
    cells = list(itertools.product(range(shape[0]), range(shape[1])))
    return [(a, b) for a in cells for b in cells if abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1]


def brute_moran(b: np.ndarray) -> float:
    """Moran's I from its textbook definition with a dense n×n weight matrix."""
    n = b.size
    z = (b - b.mean()).ravel().astype(float)
    w = np.zeros((n, n))
    for (i1, j1), (i2, j2) in brute_neighbours(b.shape):
        w[i1 * b.shape[1] + j1, i2 * b.shape[1] + j2] = 1
    if (z * z).sum() == 0:
        return float("nan")
    return n / w.sum() * float(z @ w @ z) / float((z * z).sum())


def brute_regions(mask: np.ndarray) -> int:
    """Connected components by repeated neighbour merging until nothing changes (no queue, no recursion)."""
    label = {c: k for k, c in enumerate(zip(*np.nonzero(mask)))}
    changed = True
    while changed:
        changed = False
        for a, b in brute_neighbours(mask.shape):
            if a in label and b in label and label[a] != label[b]:
                low = min(label[a], label[b])
                label[a] = label[b] = low
                changed = True
    return len(set(label.values()))


def brute_entropy(b: np.ndarray, k: int) -> np.ndarray:
    rows, cols = b.shape[0] - k + 1, b.shape[1] - k + 1
    out = np.zeros((max(rows, 0), max(cols, 0)))
    for i in range(rows):
        for j in range(cols):
            p = b[i : i + k, j : j + k].mean()
            out[i, j] = 0.0 if p in (0.0, 1.0) else -p * math.log2(p) - (1 - p) * math.log2(1 - p)
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_metrics_equal_brute_force_definitions(shape):
    for seed in range(3):
        b = random_grid(shape, seed)
        pairs = brute_neighbours(shape)
        flips = sum(abs(b[a] - b[c]) for a, c in pairs) // 2  # each unordered pair counted twice
        got = spatial.flips(b)
        assert got["flips_along_e1"] + got["flips_along_e2"] == flips
        assert spatial.n_pairs(shape) == len(pairs) // 2
        if pairs:
            assert got["flip_ratio"] == pytest.approx(flips / (len(pairs) // 2), abs=0)
        assert got["crossing_density"] == flips / (shape[0] + shape[1])
        moran, brute = spatial.morans_i(b), brute_moran(b)
        if np.isnan(brute):
            assert np.isnan(moran)
        else:
            assert moran == pytest.approx(brute, rel=1e-12, abs=1e-12)  # same sums, other order: round-off only
        frag = spatial.fragmentation(b)
        assert frag["regions_class1"] == brute_regions(b.astype(bool))
        assert frag["regions_class0"] == brute_regions(~b.astype(bool))
        for k in (1, 2, 3):
            if k <= min(shape):
                assert np.allclose(spatial.local_entropy(b, k), brute_entropy(b, k), rtol=0, atol=1e-15)


def test_labels_are_consistent_components():
    b = random_grid((15, 17), seed=4, p=0.55).astype(bool)
    labels, count = spatial.label_regions(b)
    assert set(np.unique(labels[b])) == set(range(count)) and np.all(labels[~b] == -1)
    for a, c in brute_neighbours(b.shape):  # neighbours inside the mask always share a label
        if b[a] and b[c]:
            assert labels[a] == labels[c]


def test_gradient_uses_the_real_spacing():
    e1, e2 = np.linspace(-1e-8, 1e-8, 7), np.linspace(0, 3e-9, 5)
    field = 3.0 * e1[:, None] - 4.0 * e2[None, :]  # linear: numpy.gradient is exact up to round-off
    grad = spatial.gradient_magnitude(field, e1, e2)
    assert np.allclose(grad, 5.0, rtol=1e-6)


def test_checkerboard():
    b = np.indices((16, 16)).sum(axis=0) % 2
    assert spatial.morans_i(b) == -1.0  # every neighbour product is -1/4 and z² = 1/4: exactly -1
    assert spatial.fragmentation(b)["regions"] == b.size  # maximal: every cell its own region
    assert spatial.flips(b)["flip_ratio"] == 1.0
    assert np.all(spatial.local_entropy(b, 2) == 1.0)


def test_halves():
    b = np.zeros((20, 20), dtype=int)
    b[10:] = 1
    shape_pairs = spatial.n_pairs(b.shape)
    # z = ±1/2: P − 20 pairs agree (+1/4), 20 cross the boundary (−1/4), so I = (P − 40)/P
    assert spatial.morans_i(b) == pytest.approx(1 - 40 / shape_pairs, abs=1e-12)
    assert spatial.morans_i(b) > 0.9
    assert spatial.fragmentation(b) == {"regions_class1": 1, "regions_class0": 1, "regions": 2}
    test = spatial.permutation_test(b, n_perm=199, seed=1)
    assert test["p_two_sided"] == 1 / 200  # no shuffle comes near: the smallest possible p-value
    assert test["z_score"] > 10


def test_seeded_noise_is_spatially_random():
    b = random_grid((60, 60), seed=11)
    moran = spatial.morans_i(b)
    # under randomness E[I] = -1/(n-1) and sd(I) ≈ 1/sqrt(2·P) ≈ 0.012 for P = 7080 pairs: 4 sd
    assert abs(moran + 1 / (b.size - 1)) < 4 / math.sqrt(2 * spatial.n_pairs(b.shape))
    test = spatial.permutation_test(b, n_perm=199, seed=2)
    assert test["p_two_sided"] > 0.05  # a fixed seed: this map is not flagged as structured
    again = spatial.permutation_test(b, n_perm=199, seed=2)
    assert np.array_equal(test["null"], again["null"])  # seeded: reproducible
    assert abs(spatial.flips(b)["flip_ratio"] - spatial.flips(b)["iid_flip_ratio"]) < 0.03  # ~4 sd of 0.0059


def test_constant_map_has_no_moran():
    b = np.ones((5, 6))
    assert np.isnan(spatial.morans_i(b))
    assert np.isnan(spatial.permutation_test(b, 10)["p_two_sided"])
    assert spatial.fragmentation(b)["regions"] == 1
    assert spatial.local_entropy(b, 7).shape == (0, 0)
