"""toolkit.numerics.greedy.ranked_top against an independent numpy ordering (value descending, id ascending).

Rows are drawn so that ties are common (values from a small set), including ties that straddle
the k-th place, and -inf entries; a NaN row must give what the full stable sort gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolkit.numerics.greedy import ranked, ranked_top


def numpy_top(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((np.arange(row.size), -row))  # last key first: by -value, then by id
    return row[order[:k]], order[:k]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [1, 2, 5, 20])
def test_ranked_top_equals_the_stable_full_order(dtype: torch.dtype, k: int):
    generator = torch.Generator().manual_seed(k)
    levels = torch.tensor([-float("inf"), -3.0, 0.5, 1.25, 2.0, 7.0])
    logits = levels[torch.randint(0, 6, (6, 300), generator=generator)].to(dtype)
    logits[0, :] = 2.0  # one row all equal: the k lowest ids
    values, ids = ranked_top(logits, k)
    assert values.shape == ids.shape == (6, k) and values.dtype == torch.float32
    for row in range(6):
        expected_values, expected_ids = numpy_top(logits[row].float().numpy(), k)
        assert ids[row].tolist() == expected_ids.tolist()
        assert np.array_equal(values[row].numpy(), expected_values)
    full_values, full_ids = ranked(logits)
    assert torch.equal(ids, full_ids[:, :k]) and torch.equal(values, full_values[:, :k])
    assert ids[0].tolist() == list(range(k))


def test_a_row_with_nan_takes_the_full_sort():
    logits = torch.tensor([[1.0, float("nan"), 3.0, 3.0]])
    values, ids = ranked_top(logits, 2)
    full_values, full_ids = ranked(logits)
    assert torch.equal(ids, full_ids[:, :2])
    assert torch.equal(values.isnan(), full_values[:, :2].isnan())


@pytest.mark.parametrize("k", [2, 10])
def test_rows_without_ties_at_the_kth_place_take_the_vectorised_path(k: int):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 1000, generator=generator)
    logits[1, 10:20] = 9.0  # ten-way tie at the top: straddles k = 2, fills k = 10 exactly
    counts = (logits >= torch.topk(logits, k).values[:, -1:]).sum(1)
    assert (counts == k).sum() >= 7  # the vectorised path is the one under test for most rows
    values, ids = ranked_top(logits, k)
    for row in range(8):
        expected_values, expected_ids = numpy_top(logits[row].numpy(), k)
        assert ids[row].tolist() == expected_ids.tolist()
        assert np.array_equal(values[row].numpy(), expected_values)
