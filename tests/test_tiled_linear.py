"""toolkit.numerics.tiled_linear: a linear layer as row chunks × column tiles, and the shared-prefix
decoder run tiled.  Known answers: plain torch.nn.functional.linear calls on the same tiles written
here, and plain transformers forwards of one point at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import grid_points, smollm2_embeds

from toolkit.numerics import grid
from toolkit.numerics.row_classes import RowProbe
from toolkit.numerics.shared_prefix import SharedPrefix
from toolkit.numerics.tiled_linear import Tiling

F = torch.nn.functional


def test_chunks_are_balanced_and_tiles_sized_by_bytes():
    assert Tiling(88, 15).chunks() == [15, 15, 15, 15, 14, 14]
    assert Tiling(30, 15).chunks() == [15, 15] and Tiling(16, 15).chunks() == [8, 8] and Tiling(5, 8).chunks() == [5]
    assert Tiling(88, 15).width(torch.zeros(1536, 576)) == 224  # 512 KiB / (576 · 4 B) = 227 → a multiple of 32
    assert Tiling(88, 15).width(torch.zeros(576, 1536)) == 64
    assert Tiling(88, 15).width(torch.zeros(576, 1536, dtype=torch.float64)) == 32  # never below 32
    assert Tiling(88, 15, split_columns=False).width(torch.zeros(576, 1536)) == 576


@pytest.mark.parametrize("bias", [False, True])
def test_a_tiled_linear_is_its_tiles(bias):
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(300, 2048, generator=generator)
    b = torch.randn(300, generator=generator) if bias else None
    x = torch.randn(4, 10, 2048, generator=generator)  # 40 rows
    tiling = Tiling(40, 7)
    width = tiling.width(weight)
    assert width == 64  # 512 KiB / (2048 · 4 B): five column tiles, the last of 44
    want = torch.empty(40, 300)
    flat = x.reshape(40, 2048)
    row = 0
    for size in [7, 7, 7, 7, 6, 6]:
        for start in range(0, 300, width):
            tile_bias = None if b is None else b[start : start + width]
            want[row : row + size, start : start + width] = F.linear(
                flat[row : row + size], weight[start : start + width], tile_bias
            )
        row += size
    assert tiling.chunks() == [7, 7, 7, 7, 6, 6]
    assert torch.equal(tiling.linear(x, weight, b), want.reshape(4, 10, 300))
    other = torch.randn(3, 2048, generator=generator)  # not 40 rows: the plain layer
    assert torch.equal(tiling.linear(other, weight, b), F.linear(other, weight, b))


@pytest.fixture(scope="module")
def smollm2_5(one_torch_thread):
    model, embeds = smollm2_embeds("The capital of France is")
    assert embeds.shape[1] == 5
    return model, embeds


def _plain(model, prefix, xs):
    with torch.no_grad():
        return [
            model(inputs_embeds=torch.cat([prefix, x[None, None]], dim=1), use_cache=False, logits_to_keep=1).logits[
                0, -1
            ]
            for x in xs
        ]


def test_a_tiled_shared_batch_equals_one_point_forwards(smollm2_5):
    """24 points of a 5-token prompt through the shared-prefix decoder with every linear layer tiled at
    a height of at most 12 that the probe fits (any machine: 12 < 16 and ≥ 2), against plain forwards."""
    model, embeds = smollm2_5
    prefix, x0 = embeds[:, :-1], embeds[0, -1]
    xs = grid_points(x0, 5)[:24]
    tiling = RowProbe(model, 5).tiling(24, most=12)
    assert tiling is not None and 2 <= tiling.height <= 12 and len(tiling.chunks()) >= 2
    with SharedPrefix(model, prefix, x0).patched(tiling):
        batched = grid.faithful_logits(model, prefix, xs)
    for i, row in enumerate(_plain(model, prefix, xs)):
        assert torch.equal(batched[i], row), i
    assert not [name for name, m in model.named_modules() if "forward" in vars(m)]  # every patch undone


def test_run_grid_at_batch_32_on_a_short_prompt_equals_the_point_loop(smollm2_5):
    """A 5-token prompt at batch 32: where 32 rows round unlike 5 (AVX-512), the map runs its batches
    tiled; either way it takes the shared-prefix path at the balanced batch, and every value is the
    one-point forward's."""
    model, embeds = smollm2_5
    prefix, x0 = embeds[:, :-1], embeds[0, -1]
    points = grid_points(x0, 6)
    result = grid.run_grid(model, prefix, points, (11, 13), "faithful", batch_size=32, dedup=False)
    assert result.path == grid.SHARED_HEAD_PATH and result.check is not None and result.check.equal
    assert result.batch_size == grid.balanced_batch(32, 36) == 18
    if RowProbe(model, 5).tiling(18) is not None:
        assert "batch 18: every linear layer on 18 rows as row chunks of at most" in result.check.note
    rows = _plain(model, prefix, points)
    assert np.array_equal(result.argmax, np.array([int(torch.argmax(row)) for row in rows]))
    assert np.array_equal(result.logits_ab, np.array([[float(row[11]), float(row[13])] for row in rows]))
