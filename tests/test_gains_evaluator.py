"""toolkit.numerics.gains.Evaluator: batches only after the first batch proved bitwise equal to f.

Unit tests of one class with plain functions standing in for the model (f a float32 map, the
"batched" path either its exact row-wise copy or one that is off by one ulp in one element)."""

from __future__ import annotations

import torch

from toolkit.numerics.gains import Evaluator


def f(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * 3


def exact_rows(xs: torch.Tensor) -> torch.Tensor:
    return torch.stack([f(x) for x in xs])


def off_rows(xs: torch.Tensor) -> torch.Tensor:
    out = exact_rows(xs)
    out[:, 0] = torch.nextafter(out[:, 0], torch.full_like(out[:, 0], float("inf")))
    return out


XS = torch.linspace(-1, 1, 40 * 3, dtype=torch.float32).reshape(40, 3)


def test_a_proved_batch_is_used_and_padded_to_its_size():
    calls: list[int] = []

    def batched(xs: torch.Tensor) -> torch.Tensor:
        calls.append(xs.shape[0])
        return exact_rows(xs)

    evaluator = Evaluator(f, batched, 16)
    done: list[int] = []
    out = evaluator.rows(XS, done.append)
    assert torch.equal(out, exact_rows(XS)) and done == [16, 16, 8]
    assert calls == [16, 16, 16]  # the last block of 8 padded to the checked shape
    assert evaluator.note == (
        "batches of 16 (full recompute), bitwise equal to one input at a time on 4 rows of the first batch"
    )


def test_a_batch_that_differs_in_one_ulp_falls_back_to_one_input_at_a_time():
    evaluator = Evaluator(f, off_rows, 16)
    out = evaluator.rows(XS)
    assert torch.equal(out, exact_rows(XS)) and evaluator.batched is None and evaluator.batch_size == 1
    assert evaluator.note.startswith("one forward per input: batches of 16 differed (max |Δ| ")
    assert evaluator.note.endswith(") on 4 rows of the first batch")


def test_without_a_batched_path_it_is_the_plain_loop():
    evaluator = Evaluator(f)
    assert torch.equal(evaluator.rows(XS), exact_rows(XS))
    assert evaluator.note == "one forward per input (batch size 1)"


def test_the_shared_prefix_path_is_tried_first_and_a_refusal_is_noted():
    calls: list[str] = []

    def shared(xs: torch.Tensor) -> torch.Tensor:
        calls.append("shared")
        return off_rows(xs)

    def batched(xs: torch.Tensor) -> torch.Tensor:
        calls.append("full")
        return exact_rows(xs)

    evaluator = Evaluator(f, batched, 16, shared=shared)
    out = evaluator.rows(XS)
    assert torch.equal(out, exact_rows(XS)) and evaluator.batched is batched
    assert calls == ["shared", "full", "full", "full"]  # the refused path once, on the first block only
    ulp = float(torch.nextafter(f(XS[0])[0], torch.tensor(float("inf"))) - f(XS[0])[0])
    assert evaluator.note == (
        "batches of 16 (full recompute), bitwise equal to one input at a time on 4 rows of the first batch; "
        f"last row only behind the shared prefix differed (max |Δ| {ulp:.3g})"
    )


def test_a_proved_shared_prefix_path_is_used_and_no_other_runs():
    evaluator = Evaluator(f, off_rows, 16, shared=exact_rows)
    assert torch.equal(evaluator.rows(XS), exact_rows(XS)) and evaluator.batched is exact_rows
    assert evaluator.note == (
        "batches of 16 (last row only behind the shared prefix), bitwise equal to one input at a time "
        "on 4 rows of the first batch"
    )


def test_when_both_differ_each_refusal_is_named():
    evaluator = Evaluator(f, off_rows, 16, shared=off_rows)
    assert torch.equal(evaluator.rows(XS), exact_rows(XS)) and evaluator.batch_size == 1
    assert evaluator.note.startswith(
        "one forward per input: batches of 16 differed (last row only behind the shared prefix: max |Δ| "
    )
    assert ", full recompute: max |Δ| " in evaluator.note
