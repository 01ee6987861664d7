"""toolkit.numerics.teacher_forcing.score_words against a plain computation written here.

score_words takes the float64 log-softmax a ROW_CHUNK of rows at a time and keeps only the entries
it reads; the expected values come from one log-softmax of every held row at once, indexed word by
word, and from a numpy ordering (value descending, id ascending) for the top-k.  A row's
log-softmax does not depend on the other rows in its call, so every field must be bitwise equal."""

from __future__ import annotations

import numpy as np
import torch

from toolkit.numerics.teacher_forcing import ROW_CHUNK, needed_rows, score_words

VOCAB, WINDOW, OFFSET, TOP_K = 500, 300, 40, 5


def _window() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray, list[tuple[int, int]]]:
    generator = torch.Generator().manual_seed(7)
    rng = np.random.default_rng(7)
    ids = rng.integers(0, VOCAB, OFFSET + WINDOW + 1)
    spans, start = [], OFFSET + 20
    while True:
        length = int(rng.integers(1, 6))
        if start + length > OFFSET + WINDOW:
            break
        spans.append((start, start + length))
        start += length + int(rng.integers(0, 3))  # some tokens belong to no word
    logits = torch.randn(WINDOW, VOCAB, generator=generator) * 4
    logits[spans[2][0] - 1 - OFFSET, :] = 1.0  # a row a word's first token is read from: all tied
    hidden = torch.randn(WINDOW, 16, generator=generator)
    unembed = torch.randn(VOCAB, 16, generator=generator)
    return logits, hidden, unembed, ids, spans


def test_every_field_equals_the_plain_computation_bitwise() -> None:
    logits, hidden, unembed, ids, spans = _window()
    held = needed_rows(spans, OFFSET)
    assert held.size > 2 * ROW_CHUNK  # the chunked log-softmax crosses chunk boundaries
    got = score_words(logits[torch.as_tensor(held)], hidden, unembed, ids, spans, OFFSET, TOP_K, held=held)

    logp = torch.log_softmax(logits.double(), dim=1)  # every row at once
    for w, (j, e) in enumerate(spans):
        row = j - 1 - OFFSET
        assert got["true_id"][w] == ids[j]
        assert got["logit"][w] == float(logits[row, ids[j]])
        assert got["logprob_first"][w] == float(logp[row, ids[j]])
        assert got["prob"][w] == float(logp[row, ids[j]].exp())
        targets = torch.as_tensor(ids[j:e].astype(np.int64))
        assert got["logprob_word"][w] == float(logp[row : row + e - j].gather(1, targets[:, None]).sum())
        values = logits[row].numpy()
        order = np.lexsort((np.arange(VOCAB), -values))
        assert got["topk_ids"][w].tolist() == order[:TOP_K].tolist()
        assert got["top1_match"][w] == (order[0] == ids[j])
        assert got["rank"][w] == 1 + int((values > values[ids[j]]).sum())
        assert got["margin"][w] == float(values[order[0]]) - float(values[order[1]])
        assert np.array_equal(got["topk_probs"][w], logp[row, torch.as_tensor(order[:TOP_K])].exp().numpy())
        if w == 2:
            assert got["topk_ids"][w].tolist() == list(range(TOP_K)) and got["margin"][w] == 0.0
        h, u = hidden[row].double(), unembed[ids[j]].double()
        assert np.isclose(got["cosine"][w], float(h @ u / (h.norm() * u.norm())), rtol=1e-12, atol=0)
