"""toolkit.numerics.agreement on small cases whose answers are worked out by hand in each test.

Every expected value below is written down from the definition (docs/field_metrics.md), not
computed by the code under test: unique counts, modal index with a tie, divergence with the
prefix rule, TARr@N, flip counts, the margin split and a survival curve.
"""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.numerics import agreement as ag

# Five completions: 0, 2 and 4 are equal; 1 and 3 are equal; so 2 unique, modal = 0 (3 votes).
FIVE = [[5, 6, 7], [5, 6, 8], [5, 6, 7], [5, 6, 8], [5, 6, 7]]


def test_unique_completions_and_classes():
    assert ag.unique_completions(FIVE) == 2
    assert ag.completion_classes(FIVE).tolist() == [0, 1, 0, 1, 0]
    assert ag.unique_completions([[1, 2], [1, 2, 3], [1]]) == 3  # prefixes are other sequences
    assert ag.unique_completions([np.array([1, 2], np.int64), [1, 2]]) == 1  # arrays and lists alike
    assert ag.unique_completions([]) == 0


def test_modal_completion_breaks_ties_by_lowest_index():
    assert ag.modal_completion(FIVE) == 0
    assert ag.modal_completion([[9], [1], [1], [9]]) == 0  # 2 votes each: class of index 0 wins
    assert ag.modal_completion([[3], [9], [1], [1], [9]]) == 1  # 9 and 1 tie at 2; 9 occurs first
    assert ag.modal_completion([[4, 4], [2], [2]]) == 1
    with pytest.raises(ValueError, match="at least one completion"):
        ag.modal_completion([])


def test_first_divergence_prefix_and_length_rules():
    assert ag.first_divergence([1, 2, 3], [1, 2, 3]) == -1
    assert ag.first_divergence([1, 2, 3], [1, 9, 3]) == 1
    assert ag.first_divergence([7], [8]) == 0
    assert ag.first_divergence([1, 2], [1, 2, 3]) == 2  # the shorter one ended at 2
    assert ag.first_divergence([1, 2, 3, 4], [1, 2]) == 2
    assert ag.first_divergence([], []) == -1
    assert ag.first_divergence([], [4]) == 0
    assert ag.divergence_from([5, 6, 7], FIVE).tolist() == [-1, 2, -1, 2, -1]


def test_tarr_at_n():
    # input 0: 3 equal runs; input 1: one run differs; input 2: equal; input 3: a run is a prefix
    outputs = [
        [[1, 2], [1, 2], [1, 2]],
        [[1, 2], [1, 3], [1, 2]],
        [[4], [4], [4]],
        [[4, 5], [4], [4, 5]],
    ]
    assert ag.tarr_at_n(outputs) == 0.5  # inputs 0 and 2 of 4
    assert ag.tarr_at_n([[[1]]]) == 1.0  # N = 1 agrees with itself
    with pytest.raises(ValueError, match=r"run counts \[1, 2\]"):
        ag.tarr_at_n([[[1]], [[1], [1]]])
    with pytest.raises(ValueError):
        ag.tarr_at_n([])


def test_flip_mask_rate_and_free_running_flips():
    ref = [10, 11, 12, 13, 14, 15, 16, 17]
    got = [10, 11, 99, 13, 14, 15, 98, 17]
    assert ag.flip_mask(ref, got).tolist() == [False, False, True, False, False, False, True, False]
    assert ag.flip_rate(ag.flip_mask(ref, got)) == 0.25  # 2 of 8
    assert np.isnan(ag.flip_rate([]))
    with pytest.raises(ValueError, match="over the same steps, got 2 and 3"):
        ag.flip_mask([1, 2], [1, 2, 3])
    # free running: contexts equal at steps 0..d; one flip at d = 2, 3 steps counted
    assert ag.free_running_flips([1, 2, 3, 4, 5], [1, 2, 9, 4, 5]) == (1, 3)
    assert ag.free_running_flips([1, 2, 3], [1, 2, 3]) == (0, 3)
    assert ag.free_running_flips([1, 2], [1, 2, 3, 4]) == (0, 2)  # ended early: no flip
    assert ag.free_running_flips([7], [8, 1]) == (1, 1)


def test_margin_split():
    margins = [0.5, 0.01, 2.0, float("nan"), 0.002, 3.0]
    flips = [False, True, False, True, True, False]
    at_flips, every = ag.margin_split(margins, flips)
    assert at_flips.tolist() == [0.01, 0.002]  # the NaN margin (no value stored) is dropped
    assert every.tolist() == [0.5, 0.01, 2.0, 0.002, 3.0]
    with pytest.raises(ValueError, match="5 margins and 4 flags"):
        ag.margin_split([1.0] * 5, [True] * 4)


def test_survival_curve():
    # four pairs: never diverge, diverge at 0, at 2, at 3; length 4
    curve = ag.survival_curve([-1, 0, 2, 3], 4)
    # t=0: all 4; t=1: d=0 gone -> 3; t=2: 3 (d=2 still identical for its first 2); t=3: 2; t=4: 1
    assert curve.tolist() == [1.0, 0.75, 0.75, 0.5, 0.25]
    assert np.isnan(ag.survival_curve([], 2)).all() and ag.survival_curve([], 2).shape == (3,)
