"""toolkit.numerics.batching on the packaged SmolLM2-135M: batch 1 is today's exp4.generate path bit
for bit, a batch of 4 changes logits bits while same-batch replicates are bitwise equal, and padding
on either side keeps every row's greedy tokens equal to the prompt alone (fp64).

References are plain transformers loops written here, not the code under test."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from toolkit.numerics.batching import BatchDraw, build_batch, greedy_in_batch  # noqa: E402

PROMPTS = ("The capital of France is", "One two three four five six seven", "Hi there")
VOCAB = 49152


@pytest.fixture(scope="module")
def smollm(one_torch_thread: None) -> tuple[Any, Any]:
    """The packaged model in fp32 (eager attention) and its tokenizer."""
    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models.loading import load

    model, tokenizer, _ = load(ModelSpec("smollm2-135m", device="cpu"), Numerics(dtype="float32"))
    return model, tokenizer


def _ids(tokenizer: Any) -> list[Any]:
    return [tokenizer(p, return_tensors="pt").input_ids for p in PROMPTS]


def _plain_greedy(model: Any, prompt_ids: Any, steps: int, kv_cache: bool) -> tuple[list[int], list[Any]]:
    """Today's exp4.generate loop, written out with transformers: (greedy ids, last-position logits rows)."""
    ids, rows, context, past = [], [], prompt_ids, None
    with torch.inference_mode():
        for _ in range(steps):
            feed = context[:, -1:] if (kv_cache and past is not None) else context
            kwargs = {"past_key_values": past} if (kv_cache and past is not None) else {}
            out = model(input_ids=feed, use_cache=kv_cache, logits_to_keep=1, **kwargs)
            past = out.past_key_values if kv_cache else None
            row = out.logits[0, -1]
            token = int(torch.sort(row.float(), descending=True, stable=True)[1][0])
            ids.append(token)
            rows.append(row.clone())
            context = torch.cat([context, torch.tensor([[token]])], dim=1)
    return ids, rows


def _run(model: Any, batch: Any, steps: int, kv_cache: bool = True, logits_path: str = "last_row") -> dict[str, list]:
    with torch.inference_mode():
        return greedy_in_batch(
            model, batch, steps, kv_cache=kv_cache, logits_path=logits_path, stop_ids=set(), top_k=20
        )


def test_build_batch_places_the_prompt_and_pads_with_a_mask() -> None:
    """Row `position` holds the prompt; `others` cycles the other prompts; pads sit on the chosen
    side with mask 0; random co-requests are reproducible from the seed and change with it."""
    prompt, a, b = torch.tensor([[5, 6, 7]]), torch.tensor([1, 2, 3, 4, 9]), torch.tensor([8])
    batch = build_batch(prompt, BatchDraw(4, "others", 2, "left", 0), [a, b], pad_id=0, vocab_size=100)
    assert batch.row == 2
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 9], [0, 0, 0, 0, 8], [0, 0, 5, 6, 7], [1, 2, 3, 4, 9]]
    assert batch.attention_mask.tolist() == [[1] * 5, [0, 0, 0, 0, 1], [0, 0, 1, 1, 1], [1] * 5]
    right = build_batch(prompt, BatchDraw(2, "others", 0, "right", 0), [b], pad_id=0, vocab_size=100)
    assert right.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]] and right.attention_mask.tolist() == [
        [1, 1, 1],
        [1, 0, 0],
    ]
    same = build_batch(prompt, BatchDraw(3, "same", 1, "left", 0), [a], pad_id=0, vocab_size=100)
    assert same.input_ids.tolist() == [[5, 6, 7]] * 3 and not same.padded
    draws = [build_batch(prompt, BatchDraw(4, "random", 0, "left", s), [], 0, 100).input_ids for s in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert torch.equal(draws[0][0, -3:], prompt[0])
    with pytest.raises(ValueError, match=r"batch position 4 must lie in \[0, 4\)"):
        BatchDraw(4, "same", 4)


def test_batch_of_one_is_todays_generate_path_bit_for_bit(smollm: tuple[Any, Any]) -> None:
    """greedy_in_batch at batch 1 gives the tokens and the exact logits bits of the plain loop
    (exp4.generate's path before batching existed), with and without the KV cache."""
    from toolkit.numerics.fpunits import tensor_hash

    model, tokenizer = smollm
    prompt = _ids(tokenizer)[0]
    for kv_cache in (True, False):
        ids, rows = _plain_greedy(model, prompt, 6, kv_cache)
        steps = _run(model, build_batch(prompt, BatchDraw(), [], 0, VOCAB), 6, kv_cache)
        assert steps["ids"] == ids
        assert steps["hash"] == [tensor_hash(r) for r in rows]
        for got, row in zip(steps["topk_logits"], rows):
            assert torch.equal(got, torch.sort(row.float(), descending=True, stable=True)[0][:20])


def test_a_batch_of_four_changes_bits_and_replicates_do_not(smollm: tuple[Any, Any]) -> None:
    """The needle-in-batch test: the prompt's row in a batch of 4 (copies, or the other prompts)
    has different logits bits from batch 1 at some step, while two runs of one batch are bitwise
    equal.  Measured here (FACTS.md): max |Δlogit| ~6e-5 over the top-20, tokens unchanged."""
    model, tokenizer = smollm
    ids = _ids(tokenizer)
    alone = _run(model, build_batch(ids[0], BatchDraw(), [], 0, VOCAB), 8)
    for fill in ("same", "others"):
        draw = BatchDraw(4, fill, 1, "left", 0)
        first = _run(model, build_batch(ids[0], draw, [i[0] for i in ids[1:]], 0, VOCAB), 8)
        again = _run(model, build_batch(ids[0], draw, [i[0] for i in ids[1:]], 0, VOCAB), 8)
        assert first["hash"] == again["hash"], fill
        assert first["hash"] != alone["hash"], fill
        common = [
            float((a - b).abs().max())
            for a, b, i, j in zip(first["topk_logits"], alone["topk_logits"], first["topk_ids"], alone["topk_ids"])
            if torch.equal(i, j)
        ]
        # kernel-shape differences, not a different computation: far below the logits' scale (~10)
        assert common and 0 < max(common) < 1e-3, (fill, max(common))


@pytest.fixture(scope="module")
def smollm64(smollm: tuple[Any, Any]) -> Any:
    """An fp64 copy of the packaged model (rounding differences far below any greedy margin)."""
    import copy

    return copy.deepcopy(smollm[0]).double()


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padding_keeps_every_rows_greedy_tokens_in_fp64(
    smollm64: Any, smollm: tuple[Any, Any], padding_side: str
) -> None:
    """Prompts of 6, 8 and 3 tokens in one padded batch: every row, with and without the KV cache,
    generates the tokens of its prompt alone (plain loop, fp64)."""
    ids = _ids(smollm[1])
    assert len({i.shape[1] for i in ids}) == 3  # three lengths: both pad widths occur
    for row in range(3):
        others = [ids[(row + k) % 3][0] for k in (1, 2)]
        alone, _ = _plain_greedy(smollm64, ids[row], 3, kv_cache=True)
        for kv_cache in (True, False):
            batch = build_batch(ids[row], BatchDraw(3, "others", row, padding_side, 0), others, 0, VOCAB)
            assert batch.padded
            assert _run(smollm64, batch, 3, kv_cache)["ids"] == alone, (row, kv_cache)


def test_logits_path_changes_bits_only_where_lm_head_sees_other_rows(smollm: tuple[Any, Any]) -> None:
    """`last_row` vs `all_rows`: with the KV cache, every step after the prefill feeds one position,
    so both paths apply lm_head to the same one row and agree bit for bit; the prefill (and every
    full-recompute step) applies it to a [L, D] matrix instead of [1, D], and on this CPU that
    changes bits at some step (FACTS.md: 46 of 49 exp7 cells) while keeping the tokens here."""
    model, tokenizer = smollm
    batch = build_batch(_ids(tokenizer)[0], BatchDraw(), [], 0, VOCAB)
    differs = []
    for kv_cache in (True, False):
        last = _run(model, batch, 4, kv_cache, "last_row")
        every = _run(model, batch, 4, kv_cache, "all_rows")
        assert last["ids"] == every["ids"]
        if kv_cache:
            assert last["hash"][1:] == every["hash"][1:]
        differs += [a != b for a, b in zip(last["hash"], every["hash"])]
    assert any(differs)
