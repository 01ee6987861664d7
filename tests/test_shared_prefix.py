"""toolkit.numerics.shared_prefix: linear layers on the last row only, behind one prompt prefix.

Known answers from plain transformers: `model(inputs_embeds=[1, T, D], logits_to_keep=1)` per
point.  The packaged model's fp32 batched path with the patch must equal it in every bit for a
prompt of 21 tokens (M = B = 16 and M = T = 21 in one row class: >= 8 on AVX2, >= 16 on AVX-512), and
the patch must leave no trace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import grid_points, smollm2_embeds

from toolkit.numerics import grid
from toolkit.numerics.shared_prefix import shared_prefix_rows

PROMPT = "Near the old harbour, the fishermen mend their nets while the gulls wait for scraps of the morning catch"


@pytest.fixture(scope="module")
def smollm2(one_torch_thread):
    return smollm2_embeds(PROMPT)


def test_last_row_linears_give_the_one_point_logits_bitwise(smollm2):
    model, embeds = smollm2
    prefix, x0 = embeds[:, :-1], embeds[0, -1]
    assert embeds.shape[1] == 21
    xs = grid_points(x0, 4)[:16]
    with torch.no_grad():
        plain = [
            model(inputs_embeds=torch.cat([prefix, x[None, None]], dim=1), use_cache=False, logits_to_keep=1).logits[
                0, -1
            ]
            for x in xs
        ]
    with shared_prefix_rows(model, prefix, x0) as patched:
        assert patched == 30 * 5  # q, k, v, o and the mlp block in each of the 30 layers
        batched = grid.faithful_logits(model, prefix, xs)
    for i, row in enumerate(plain):
        assert torch.equal(batched[i], row), i


def test_the_patch_leaves_no_trace(smollm2):
    model, embeds = smollm2
    prefix, x0 = embeds[:, :-1], embeds[0, -1]
    with shared_prefix_rows(model, prefix, x0):
        pass
    assert not [name for name, m in model.named_modules() if "forward" in vars(m)]
    with pytest.raises(RuntimeError, match="boom"), shared_prefix_rows(model, prefix, x0):
        raise RuntimeError("boom")
    assert not [name for name, m in model.named_modules() if "forward" in vars(m)]


def test_run_grid_takes_the_shared_path_and_equals_the_point_loop(smollm2):
    model, embeds = smollm2
    prefix, x0 = embeds[:, :-1], embeds[0, -1]
    points = grid_points(x0, 5)
    # batch 16: 25 points of a 21-token prompt; a batch of 8 last rows rounds unlike the one-point forward's
    # 21 rows on an AVX-512 machine (row classes 1, 2..15, >= 16), and the probe then skips the shared path
    result = grid.run_grid(model, prefix, points, (11, 13), "faithful", batch_size=16, dedup=False)
    assert result.path == grid.SHARED_HEAD_PATH and result.check is not None and result.check.equal
    with torch.no_grad():
        rows = [
            model(inputs_embeds=torch.cat([prefix, x[None, None]], dim=1), logits_to_keep=1).logits[0, -1]
            for x in points
        ]
    expected = np.array([float(row[11].double() - row[13].double()) for row in rows])
    assert np.array_equal(result.argmax, np.array([int(torch.argmax(row)) for row in rows]))
    assert np.array_equal(result.logits_ab, np.array([[float(row[11]), float(row[13])] for row in rows]))
    assert np.array_equal(result.gap, expected)
