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


def test_replicate_classes_and_axis_pairs():
    settings = [
        {"target": "a100", "dtype": "float32"},
        {"target": "a100", "dtype": "float32"},
        {"target": "h100", "dtype": "float32"},
        {"target": "a100", "dtype": "bfloat16"},
        {"target": "h100", "dtype": "bfloat16"},
    ]
    assert ag.replicate_classes(settings).tolist() == [0, 0, 1, 2, 3]
    assert ag.axis_pairs(settings) == {
        "target": [(0, 2), (1, 2), (3, 4)],
        "dtype": [(0, 3), (1, 3), (2, 4)],
        "replicates": [(0, 1)],
    }  # (0, 4), (1, 4), (2, 3) differ in both: no axis


# exp4.compare on the hand-made runs of tests/test_compare_known.py: A and B are replicates on a100
# (bit-identical), C runs on h100 and flips at step 3 of prompt 0, never on prompt 1.
from test_compare_known import base_rows, c_rows, compared, trace  # noqa: E402,F401 (fixture reused)


def test_compare_stores_the_field_metrics_of_the_known_runs(compared):
    _, table, info = compared
    order = info["order"]
    rows = {"aaaa000000000001": base_rows(), "aaaa000000000002": base_rows(), "cccc000000000003": c_rows()}
    runs = [[trace(steps, [0])["generated_ids"] for steps in rows[t]] for t in order]
    margins = [[trace(steps, [0])["margin"] for steps in rows[t]] for t in order]
    c = order.index("cccc000000000003")
    a, b = (order.index(t) for t in ("aaaa000000000001", "aaaa000000000002"))
    # prompt 0: A = B, C differs at step 3 -> 2 unique; prompt 1: C keeps A's tokens -> 1 unique
    assert table["unique_completions"][()].tolist() == [2, 1]
    klass = table["replicate_class"][()]
    assert klass[a] == klass[b] != klass[c]
    sizes, tarr = table["class_size"][()], table["tarr"][()]
    assert sorted(zip(sizes.tolist(), tarr.tolist())) == [(1, 1.0), (2, 1.0)]
    # free running: A vs C has identical contexts at steps 0..3 of prompt 0 (flip at 3) and at all 4
    # steps of prompt 1 (no flip); replicates: 5 + 4 steps, no flip
    flips, steps = table["flip_count"][()], table["flip_steps"][()]
    for x in (a, b):
        assert (flips[x, c], steps[x, c], flips[c, x], steps[c, x]) == (1, 8, 1, 8)
    assert (flips[a, b], steps[a, b], flips[a, a], steps[a, a]) == (0, 9, 0, 9)
    want_at = [(margins[min(x, c)][0][3], margins[max(x, c)][0][3]) for x in sorted((a, b))]
    assert sorted(map(tuple, table["margin_at_flips"][()].tolist())) == sorted(want_at)
    every = np.concatenate([m for run in margins for m in run])
    assert np.array_equal(table["margin_all_steps"][()], every)
    # axes: target pairs (A, C), (B, C) over 2 prompts diverge at 3 and never; horizon 5 steps
    assert sorted(map(tuple, table["pairs/target"][()].tolist())) == sorted(tuple(sorted((x, c))) for x in (a, b))
    assert table["survival/target"][()].tolist() == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5]
    assert table["survival/replicates"][()].tolist() == [1.0] * 6
    assert runs[a][0].tolist() != runs[c][0].tolist() and runs[a][1].tolist() == runs[c][1].tolist()
    assert "axis target: 2 pair(s) x 2 prompt(s); identical to the end 50%" in table.attrs["field_summary"]
