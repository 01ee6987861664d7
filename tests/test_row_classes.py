"""The row-class probe (toolkit.numerics.row_classes) against plain matmuls of the model's own weights.

The known answer comes from torch.nn.functional.linear on fresh random rows (a different seed from
the probe's), every row of every height compared with the same row as the last of a T-row matmul."""

from __future__ import annotations

import pytest
import torch

from toolkit.numerics.row_classes import RowProbe, decoder_weights


@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models.loading import load

    model, _, _ = load(
        ModelSpec("tiny-random-llama", device="cpu"), Numerics(dtype="float32", attn_implementation="eager")
    )
    return model


def _rounds_alike(weight: torch.Tensor, rows: int, reference: int) -> bool:
    inputs = torch.randn(rows + reference, weight.shape[1], generator=torch.Generator().manual_seed(11))
    batched = torch.nn.functional.linear(inputs[:rows], weight)
    filler = inputs[rows:]
    for p in range(rows):
        alone = torch.nn.functional.linear(torch.cat([filler[: reference - 1], inputs[p : p + 1]]), weight)[-1]
        if not torch.equal(alone, batched[p]):
            return False
    return True


def test_the_probe_agrees_with_plain_matmuls_on_every_height(tiny):
    weights = decoder_weights(tiny)
    assert sorted(tuple(w.shape) for w in weights) == [(32, 64), (64, 64), (64, 128), (128, 64)]
    probe = RowProbe(tiny, 5)
    for rows in range(1, 41):
        want = all(_rounds_alike(w, rows, 5) for w in weights)
        assert probe.fits(rows) == want, rows
    assert probe.fits(5)  # the reference's own height: the same kernel
    assert not probe.fits(1)  # a GEMV is its own kernel on every CPU measured (FACTS.md)


def test_batch_like_is_the_largest_fitting_batch(tiny):
    probe = RowProbe(tiny, 5)
    for rows_per_point in (1, 5):
        got = probe.batch_like(rows_per_point, 16)
        fitting = [
            b for b in range(2, 17) if all(_rounds_alike(w, b * rows_per_point, 5) for w in decoder_weights(tiny))
        ]
        assert got == (max(fitting) if fitting else 1), rows_per_point
    assert probe.batch_like(1, 1) == 1
