"""toolkit.numerics.exact_head: the pair's logits and the argmax of the per-point GEMV, from a
batched head plus the GEMV's own bits for the rows that can win.

Known answers: `torch.nn.functional.linear` of one [1, 1, D] row on the WHOLE head (the GEMV the
reference forward runs), then `torch.argmax`.  The head sits at an address that is not 64-byte
aligned (as a head loaded from a safetensors file does), and has exact ties, near-ties and a
degenerate all-equal case.  The packaged model's test runs a plane wide enough for the argmax to
change and compares with plain `model(inputs_embeds=..., logits_to_keep=1)` per point."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from toolkit.numerics import exact_head, grid
from toolkit.numerics.exact_head import BoundedHead, unusable_reason


def head_model(weight: torch.Tensor, bias: bool = False, **config: object) -> SimpleNamespace:
    """A stand-in exposing what BoundedHead reads: the output embeddings and the config."""
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias, dtype=weight.dtype)
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    return SimpleNamespace(get_output_embeddings=lambda: linear, config=SimpleNamespace(**config))


def misaligned(values: torch.Tensor, shift: int = 10) -> torch.Tensor:
    """`values` copied into a buffer `shift` elements past its start (not 64-byte aligned)."""
    flat = torch.zeros(values.numel() + shift, dtype=values.dtype)
    view = flat[shift:].view(values.shape)
    view.copy_(values)
    return view


def gemv(weight: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """The reference: the whole head on one [1, 1, D] row."""
    with torch.no_grad():
        return torch.nn.functional.linear(row, weight)[0, 0]


@pytest.fixture
def head_and_rows(one_torch_thread):
    g = torch.Generator().manual_seed(3)
    vocab, width = 700, 96
    w = torch.randn(vocab, width, generator=g) * 0.2
    rows = torch.randn(12, 1, width, generator=g)
    w[41] = w[600] = rows[0, 0] * 0.5  # an exact tie at the top for point 0: the lower index wins
    w[7] = w[41] * (1 - 2**-20)  # and near-ties just below it
    w[650] = w[41] * (1 - 2**-22)
    w[100] = w[200] = rows[1, 0] * 0.3  # point 1: a tie between two rows and the pair (100, 200)
    return misaligned(w), rows


def test_values_equal_the_whole_head_gemv_bitwise(head_and_rows):
    weight, rows = head_and_rows
    assert weight.data_ptr() % 64 != 0
    head = BoundedHead(head_model(weight))
    for pair in ((41, 600), (100, 200), (0, 699)):
        values = head.values(rows, pair)
        for b in range(rows.shape[0]):
            logits = gemv(weight, rows[b : b + 1])
            assert values.argmax[b] == int(torch.argmax(logits)), (pair, b)
            assert values.pair[b].tolist() == [float(logits[pair[0]]), float(logits[pair[1]])]
            assert values.gap[b] == float(logits[pair[0]].double() - logits[pair[1]].double())
    assert values.argmax[0] in (7, 41, 650) and values.argmax[1] == 100  # ties went to the lower index
    assert head.points == 36 and head.full_gemv == 0
    assert head.batches == {"anchored": 0, "batched": 3}  # rows far apart: the anchored bound leaves too many


@pytest.fixture
def near_rows(one_torch_thread):
    """A head with an exact tie and near-ties at the top for h₀, and 24 rows within 1e-5 of h₀ (a grid's
    points are that close), so the argmax moves among the tied rows."""
    g = torch.Generator().manual_seed(5)
    vocab, width = 900, 96
    h0 = torch.randn(width, generator=g)
    w = torch.randn(vocab, width, generator=g) * 0.2
    w[41] = w[600] = h0 * 0.5
    w[7] = w[41] * (1 - 2**-22)
    w[650] = w[41] + 1e-7 * torch.randn(width, generator=g)
    rows = (h0 + 1e-5 * torch.randn(24, width, generator=g))[:, None]
    rows[0, 0] = h0
    return misaligned(w), rows


def test_near_rows_take_the_anchored_bound_and_equal_the_gemv_bitwise(near_rows):
    weight, rows = near_rows
    head = BoundedHead(head_model(weight))
    first = head.values(rows[:12], (41, 600))
    anchor = head.anchor
    second = head.values(rows[12:], (7, 650))
    assert head.batches == {"anchored": 2, "batched": 0} and head.full_gemv == 0
    assert head.anchor is anchor  # formed once, from the first finite row
    tops = set()
    for values, part, pair in ((first, rows[:12], (41, 600)), (second, rows[12:], (7, 650))):
        for b in range(part.shape[0]):
            logits = gemv(weight, part[b : b + 1])
            assert values.argmax[b] == int(torch.argmax(logits)), b
            assert values.pair[b].tolist() == [float(logits[pair[0]]), float(logits[pair[1]])]
            tops.add(int(values.argmax[b]))
    assert tops <= {7, 41, 650} and len(tops) >= 2, tops  # the argmax moved among the near-tied rows


def test_the_anchored_bound_covers_every_gemv_value(near_rows):
    weight, rows = near_rows
    head = BoundedHead(head_model(weight))
    head.values(rows, (41, 600))
    h0 = rows[0, 0].double()
    exact0 = weight.double() @ h0  # independent float64 logits of the anchor
    width = weight.shape[1]
    gamma = width * 2.0**-24 / (1 - width * 2.0**-24)
    norms = torch.linalg.vector_norm(weight.double(), dim=1)
    assert torch.equal(head.anchor[0], h0) and float((head.anchor[1] - exact0).abs().max()) < 1e-12
    for b in range(rows.shape[0]):
        values = gemv(weight, rows[b : b + 1]).double()
        h = rows[b, 0].double()
        half = norms * (torch.linalg.vector_norm(h - h0) + gamma * torch.linalg.vector_norm(h)) + 1e-12
        assert bool(((values - exact0).abs() <= half).all()), b


def test_a_non_finite_row_among_near_rows_takes_the_full_gemv(near_rows):
    weight, rows = near_rows
    rows = rows[:6].clone()
    rows[3, 0, 2] = float("inf")
    head = BoundedHead(head_model(weight))
    values = head.values(rows, (41, 600))
    assert head.batches == {"anchored": 1, "batched": 0} and head.full_gemv == 1
    for b in range(6):
        assert values.argmax[b] == int(torch.argmax(gemv(weight, rows[b : b + 1]))), b


def test_every_row_through_the_blocks_equals_the_gemv(head_and_rows):
    weight, rows = head_and_rows
    head = BoundedHead(head_model(weight))
    assert (head.block.data_ptr() - weight.data_ptr()) % exact_head.ALIGN == 0
    assert head.block.shape == (exact_head.BLOCK, weight.shape[1])
    for b in range(3):
        assert head.check_blocks(rows[b : b + 1], gemv(weight, rows[b : b + 1]), seed=b) == (True, 0.0)
    covered = torch.cat(
        [torch.randperm(weight.shape[0], generator=torch.Generator().manual_seed(0))[k::3] for k in range(3)]
    )
    assert sorted(covered.tolist()) == list(range(weight.shape[0]))  # the parts of one order cover every row once
    for k in range(3):
        assert head.check_blocks(rows[k : k + 1], gemv(weight, rows[k : k + 1]), part=(k, 3)) == (True, 0.0)
    wrong = gemv(weight, rows[:1]).clone()
    wrong[5] = torch.nextafter(wrong[5], torch.tensor(float("inf")))
    equal, diff = head.check_blocks(rows[:1], wrong)
    assert not equal and diff > 0
    position = int((torch.randperm(weight.shape[0], generator=torch.Generator().manual_seed(0)) == 5).nonzero())
    k = position % 4  # the part that holds row 5 finds it; the others do not look at it
    assert [head.check_blocks(rows[:1], wrong, part=(j, 4))[0] for j in range(4)] == [j != k for j in range(4)]


def test_the_bound_holds_between_the_batched_head_and_the_gemv(head_and_rows):
    weight, rows = head_and_rows
    head = BoundedHead(head_model(weight))
    batched = torch.nn.functional.linear(rows[:, 0], weight).double()
    exact = rows[:, 0].double() @ weight.double().T
    width = weight.shape[1]
    gamma = width * 2.0**-24 / (1 - width * 2.0**-24)
    magnitude = rows[:, 0].double().abs() @ weight.double().abs().T  # sum |W_vi h_i|, the tight form
    assert bool(((batched - exact).abs() <= gamma * magnitude).all())  # the rounding-error theorem holds here
    reach = head.scale * head.largest_row_norm * torch.linalg.vector_norm(rows[:, 0].double(), dim=1)[:, None]
    assert bool((2 * gamma * magnitude <= reach).all())  # Cauchy–Schwarz: the bound used (E) covers it


def test_a_flat_head_takes_the_full_gemv(one_torch_thread):
    weight = misaligned(torch.ones(exact_head.MAX_CANDIDATES + 50, 16))  # every row a candidate
    head = BoundedHead(head_model(weight))
    rows = torch.randn(3, 1, 16, generator=torch.Generator().manual_seed(0))
    values = head.values(rows, (0, 1))
    assert head.full_gemv == 3
    # the GEMV's tail rows may round otherwise (the argmax need not be row 0): compare with it
    assert values.argmax.tolist() == [int(torch.argmax(gemv(weight, rows[b : b + 1]))) for b in range(3)]
    assert values.gap.tolist() == [0.0, 0.0, 0.0]


def test_non_finite_rows_take_the_full_gemv(one_torch_thread):
    weight = misaligned(torch.randn(80, 16, generator=torch.Generator().manual_seed(1)))
    head = BoundedHead(head_model(weight))
    rows = torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(2))
    rows[1, 0, 3] = float("nan")
    values = head.values(rows, (4, 5))
    assert head.full_gemv == 1
    assert values.argmax[1] == int(torch.argmax(gemv(weight, rows[1:2])))
    assert np.isnan(values.gap[1]) and not np.isnan(values.gap[0])


def test_heads_the_bound_does_not_cover_are_refused(one_torch_thread):
    weight = torch.randn(32, 8)
    assert unusable_reason(head_model(weight)) is None
    assert unusable_reason(head_model(weight, bias=True)) == "lm_head has a bias"
    assert unusable_reason(head_model(weight, final_logit_softcapping=30.0)) == "final logit soft-capping"
    assert (
        unusable_reason(head_model(weight.bfloat16()))
        == "lm_head dtype torch.bfloat16 (the bound is for float32/float64)"
    )
    embedding = SimpleNamespace(get_output_embeddings=lambda: torch.nn.Embedding(4, 4), config=SimpleNamespace())
    assert unusable_reason(embedding) == "output embeddings are Embedding, not torch.nn.Linear"
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert unusable_reason(head_model(weight)) == ("float32 matmul precision 'high' (reduced internal precision)")
        assert unusable_reason(head_model(weight.double())) is None
    finally:
        torch.set_float32_matmul_precision(before)


PROMPT = "Beyond the ridge the shepherds counted their flock twice before the storm reached the valley"


@pytest.fixture
def heads(monkeypatch):
    """Every BoundedHead made while the test runs (to read how its batches were bounded)."""
    made: list[BoundedHead] = []
    plain = BoundedHead.__init__

    def recording(self: BoundedHead, model: object) -> None:
        plain(self, model)
        made.append(self)

    monkeypatch.setattr(BoundedHead, "__init__", recording)
    return made


@pytest.mark.parametrize(("half_width", "bounds"), [(6.0, "batched"), (1e-6, "anchored")])
def test_a_plane_of_the_packaged_model_equals_plain_forwards(one_torch_thread, heads, half_width, bounds):
    """A wide plane (the argmax changes; its points are too far apart for the anchored bound) and a
    narrow one (every batch bounded around the anchor), both bitwise plain forwards."""
    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models.loading import load

    model, tokenizer, _ = load(
        ModelSpec("smollm2-135m", device="cpu"), Numerics(dtype="float32", attn_implementation="eager")
    )
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
    prefix, x0 = embeds[:, :-1], embeds[0, -1]
    q, _ = torch.linalg.qr(torch.randn(x0.numel(), 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    e = grid.axis_n(-half_width, half_width, 7)
    points = grid.form_points(x0, q[:, 0], q[:, 1], e, e, "fp64_then_round")
    pair = (28, 30)
    result = grid.run_grid(model, prefix, points, pair, "faithful", batch_size=16, dedup=False)
    assert result.path == grid.SHARED_HEAD_PATH and result.check is not None and result.check.equal
    (head,) = heads
    assert head.batches[bounds] == 4 and sum(head.batches.values()) == 4  # 49 points: 4 balanced batches of 13
    with torch.no_grad():
        rows = [
            model(inputs_embeds=torch.cat([prefix, x[None, None]], dim=1), logits_to_keep=1).logits[0, -1]
            for x in points
        ]
    top = np.array([int(torch.argmax(row)) for row in rows])
    assert len(np.unique(top)) >= (3 if bounds == "batched" else 1), np.unique(top)
    assert np.array_equal(result.argmax, top)
    assert np.array_equal(result.logits_ab, np.array([[float(row[28]), float(row[30])] for row in rows]))
    assert np.array_equal(result.gap, np.array([float(row[28].double() - row[30].double()) for row in rows]))
