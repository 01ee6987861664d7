"""Spatial structure of a binary class map on a 2-D grid, all in O(n) (n = R·C cells).

B is a [R, C] array of 0/1 classes (axis 0 = e1, axis 1 = e2); G the real-valued field it came
from.  Neighbours are rook (4-neighbour) pairs: (i, j)–(i+1, j) and (i, j)–(i, j+1).  The
definitions (also in docs/science_ii_exp7.md):

* flips: H = Σ|B[i+1,j] − B[i,j]|, V = Σ|B[i,j+1] − B[i,j]|; flip ratio = (H + V) / P with
  P = (R−1)·C + R·(C−1) neighbour pairs.  An i.i.d. field with P(B=1) = p gives 2p(1−p) in
  expectation (0.5 for a fair one); a checkerboard gives 1.
* crossing density: (H + V) / (R + C), class changes per grid line (upstream's definition, but on
  the same classes as everything else).
* regions: number of 4-connected components of {B = 1} plus those of {B = 0}.
* Moran's I with binary rook weights w_kl = 1 for each ordered neighbour pair:
  z = B − mean(B), S0 = 2P, I = (n / S0) · (2·Σ_pairs z_k z_l) / Σ z².  NaN for a constant map.
  Checkerboard: −1; smooth halves: close to +1; no spatial structure: ≈ −1/(n−1).
* local entropy over k×k windows (valid positions only): p = mean of B in the window,
  H = −p log2 p − (1−p) log2 (1−p) (0 log 0 = 0); window sums from 2-D cumulative sums.
* gradient magnitude of G: sqrt(g1² + g2²) with `numpy.gradient` on the real grid spacing
  (logits per unit of e), central differences inside, one-sided at the edges.
* permutation test of Moran's I: the observed I against I of `n_perm` seeded random shuffles of
  the same cells (same class counts, spatial arrangement destroyed); two-sided p-value
  (1 + #{|I_perm − m| ≥ |I_obs − m|}) / (n_perm + 1) with m the mean of the permutation I's.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np


def _pairs(values: Any) -> tuple[Any, Any]:
    """(sum over vertical-axis pairs, sum over horizontal-axis pairs) of products, last two axes."""
    return (
        (values[..., 1:, :] * values[..., :-1, :]).sum(axis=(-2, -1)),
        (values[..., :, 1:] * values[..., :, :-1]).sum(axis=(-2, -1)),
    )


def n_pairs(shape: tuple[int, int]) -> int:
    """P = (R−1)·C + R·(C−1), the number of unordered rook-neighbour pairs."""
    rows, cols = shape
    return (rows - 1) * cols + rows * (cols - 1)


def flips(classes: Any) -> dict[str, float]:
    """Flip counts along each axis, flip ratio, crossing density, class balance and the i.i.d. reference."""
    b = np.asarray(classes, dtype=np.int64)
    along_e1 = int(np.abs(np.diff(b, axis=0)).sum())
    along_e2 = int(np.abs(np.diff(b, axis=1)).sum())
    pairs = n_pairs(b.shape)
    p = float(b.mean())
    return {
        "flips_along_e1": along_e1,
        "flips_along_e2": along_e2,
        "flip_ratio": (along_e1 + along_e2) / pairs if pairs else float("nan"),
        "crossing_density": (along_e1 + along_e2) / (b.shape[0] + b.shape[1]),
        "fraction_class1": p,
        "minority_fraction": min(p, 1 - p),
        "iid_flip_ratio": 2 * p * (1 - p),
    }


def morans_i(classes: Any) -> float:
    """Moran's I with binary rook weights (see the module docstring); NaN for a constant map."""
    z = np.asarray(classes, dtype=np.float64)
    z = z - z.mean()
    denominator = float((z * z).sum())
    pairs = n_pairs(z.shape)
    if denominator == 0 or pairs == 0:
        return float("nan")
    vertical, horizontal = _pairs(z)
    return float(z.size / (2 * pairs) * 2 * (vertical + horizontal) / denominator)


def label_regions(mask: Any) -> tuple[Any, int]:
    """4-connected components of a boolean [R, C] mask by breadth-first search: (labels, count).

    labels is int64 with −1 outside the mask and 0..count−1 inside; O(n) time.
    """
    mask = np.asarray(mask, dtype=bool)
    rows, cols = mask.shape
    labels = np.full(mask.shape, -1, dtype=np.int64)
    flat_mask, flat = mask.ravel(), labels.ravel()
    count = 0
    for start in np.flatnonzero(flat_mask):
        if flat[start] >= 0:
            continue
        flat[start] = count
        queue = deque([int(start)])
        while queue:
            cell = queue.popleft()
            i, j = divmod(cell, cols)
            for ni, nj in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
                if 0 <= ni < rows and 0 <= nj < cols:
                    other = ni * cols + nj
                    if flat_mask[other] and flat[other] < 0:
                        flat[other] = count
                        queue.append(other)
        count += 1
    return labels, count


def fragmentation(classes: Any) -> dict[str, int]:
    """Connected regions (4-connectivity) of each class and in total."""
    b = np.asarray(classes).astype(bool)
    ones = label_regions(b)[1]
    zeros = label_regions(~b)[1]
    return {"regions_class1": ones, "regions_class0": zeros, "regions": ones + zeros}


def window_sums(values: Any, k: int) -> Any:
    """Sums over every valid k×k window ([R−k+1, C−k+1]) from 2-D cumulative sums, exact for integers."""
    a = np.asarray(values, dtype=np.int64)
    c = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.int64)
    c[1:, 1:] = a.cumsum(0).cumsum(1)
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]


def binary_entropy(p: Any) -> Any:
    """−p log2 p − (1−p) log2 (1−p) elementwise, with 0 log 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    out = np.zeros_like(p)
    inside = (p > 0) & (p < 1)
    q = p[inside]
    out[inside] = -q * np.log2(q) - (1 - q) * np.log2(1 - q)
    return out


def local_entropy(classes: Any, k: int = 5) -> Any:
    """Binary entropy of the class mix in every valid k×k window: [R−k+1, C−k+1] (empty if k too big)."""
    b = np.asarray(classes)
    if k < 1:
        raise ValueError(f"window must be >= 1, got {k}")
    if k > min(b.shape):
        return np.zeros((0, 0))
    return binary_entropy(window_sums(b, k) / (k * k))


def gradient_magnitude(field: Any, e1: Any, e2: Any) -> Any:
    """|∇G| in units of G per unit of e (numpy.gradient on the real spacing); zeros on a 1-wide axis."""
    g = np.asarray(field, dtype=np.float64)
    parts = []
    for axis_index, coords in ((0, e1), (1, e2)):
        if g.shape[axis_index] < 2:
            parts.append(np.zeros_like(g))
        else:
            parts.append(np.gradient(g, np.asarray(coords, dtype=np.float64), axis=axis_index))
    return np.sqrt(parts[0] ** 2 + parts[1] ** 2)


def permutation_test(classes: Any, n_perm: int = 999, seed: int = 0, chunk: int = 64) -> dict[str, Any]:
    """Moran's I of the map against `n_perm` seeded shuffles of its cells (see the module docstring)."""
    b = np.asarray(classes, dtype=np.float64)
    observed = morans_i(b)
    if np.isnan(observed) or n_perm < 1:
        return {
            "observed": observed,
            "null": np.zeros(0),
            "p_two_sided": float("nan"),
            "p_greater": float("nan"),
            "z_score": float("nan"),
        }
    rng = np.random.default_rng(seed)
    z = (b - b.mean()).ravel()
    scale = z.size / (2 * n_pairs(b.shape)) * 2 / float((z * z).sum())
    null = np.empty(n_perm)
    for start in range(0, n_perm, chunk):
        count = min(chunk, n_perm - start)
        shuffled = rng.permuted(np.broadcast_to(z, (count, z.size)), axis=1).reshape(count, *b.shape)
        vertical, horizontal = _pairs(shuffled)
        null[start : start + count] = scale * (vertical + horizontal)
    centre = float(null.mean())
    extreme = int((np.abs(null - centre) >= abs(observed - centre)).sum())
    spread = float(null.std())
    return {
        "observed": observed,
        "null": null,
        "p_two_sided": (1 + extreme) / (n_perm + 1),
        "p_greater": (1 + int((null >= observed).sum())) / (n_perm + 1),
        "z_score": (observed - centre) / spread if spread > 0 else float("nan"),
    }
