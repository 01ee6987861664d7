"""Teacher forcing over a long text: words → token spans → context windows → per-word scores.

The text is tokenised once (fast tokenizer, `return_offsets_mapping`), so every word's tokens are
the tokens of the real text in context — never a separate tokenisation of the word.  A token
belongs to every word whose characters it overlaps; tokens with no characters of any word (a
lone whitespace token, a special token such as BOS) belong to no word and are context only.

Windows: `window` tokens starting at multiples of `stride`, one full forward each (batch size
1, no KV cache).  Logits at position p predict token p + 1, so a word with tokens [j, e) needs
a window s ≤ j − 1 with e ≤ s + window.  It is scored in the valid window where its first token
has the most left context (the smallest such s) provided that context is at least `min_context`
tokens — or the window starting at the beginning of the text, where the context is everything
before the word.  With stride ≤ window − min_context every word of at most window − stride −
min_context + 1 tokens fits; a longer word may fit no window that way and, like the very first
token of a text without BOS, is not scored.

Per word, from the window's native logits: logit, probability and rank of the true first token,
top-k, the top-1/top-2 margin, the joint log-probability of all its tokens under teacher forcing
(softmax in float64 of the native logits), and the cosine between the lm_head input at the
position predicting the word and the true token's unembedding row (float64).
"""

from __future__ import annotations

from typing import Any

FIELDS_F64 = ("logit", "prob", "logprob_first", "logprob_word", "margin", "cosine")
ROW_CHUNK = 64  # float64 log-softmax rows at a time, to bound memory for large vocabularies


def word_token_spans(offsets: Any, word_starts: Any, word_ends: Any) -> tuple[Any, Any]:
    """[start, end) token span of each word (−1, −1 when no token overlaps it) from char offsets.

    `offsets` is [T, 2] (char start, end) per token; empty spans (special tokens) are skipped.
    """
    import numpy as np

    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    n = len(word_starts)
    first = np.full(n, -1, dtype=np.int64)
    last = np.full(n, -2, dtype=np.int64)
    for token, (lo, hi) in enumerate(offsets):
        if hi <= lo:
            continue
        w = int(np.searchsorted(word_starts, hi, side="left")) - 1  # last word starting before hi
        while w >= 0 and word_ends[w] > lo:
            if first[w] < 0:
                first[w] = token
            last[w] = token
            w -= 1
    return first, last + 1


def assign_windows(token_start: Any, token_end: Any, window: int, stride: int, min_context: int) -> Any:
    """Window start of each word (−1: not scored); see the module docstring for the rule."""
    import numpy as np

    out = np.full(len(token_start), -1, dtype=np.int64)
    for w, (j, e) in enumerate(zip(token_start, token_end)):
        if j < 1:
            continue
        s = max(0, -(-(int(e) - window) // stride)) * stride  # smallest multiple of stride ≥ e − window
        if s == 0 or j - s >= min_context:
            out[w] = s
    return out


class WindowLogits:
    """One window's forward with `lm_head` on the rows its words read only — once proved exact.

    The decoder stack runs on the whole window; `lm_head` (and a final soft-cap) then runs on the
    needed rows alone.  The first window this object computes also gets the full logits (all
    rows, as the model's own forward) and the needed rows are compared in every bit: equal, and later
    windows compute those rows only; different (or fewer than `min_rows` rows needed anywhere), and
    every window computes all rows.  Returned: the logits of the `needed` rows, in that order.
    `note` says which path ran.

    A matmul of few rows takes another kernel on CPU, and where the kernels change is the machine's
    (FACTS.md: below 8 rows on one, below 16 on another), so the first window also finds the
    smallest last-rows block (`MIN_ROWS`, doubled) whose logits equal the full ones: `min_rows`,
    the fewest rows a later subset may have (None: no block did, every row is computed).
    """

    MIN_ROWS = 8  # the first tail block tried; a matmul of fewer rows took another kernel on every CPU measured

    def __init__(self) -> None:
        self.proved: bool | None = None
        self.min_rows: int | None = self.MIN_ROWS
        self.note = "lm_head on every row of each window (no window computed)"

    def __call__(self, model: Any, ids: Any, needed: Any) -> tuple[Any, Any]:
        """(logits [R, V] of the R `needed` rows, final-norm output [T, D]) of `ids` [1, T]."""
        import torch

        from toolkit.numerics.embedding_forward import base_model
        from toolkit.numerics.forward import head_logits

        rows = torch.as_tensor(needed, dtype=torch.long, device=ids.device)
        with torch.inference_mode():
            hidden = base_model(model)(input_ids=ids, use_cache=False).last_hidden_state[0]
            if self.proved is False or self.min_rows is None or rows.numel() < self.min_rows:
                return head_logits(model, hidden)[rows], hidden
            part = head_logits(model, hidden[rows])
            if self.proved is None:
                full = head_logits(model, hidden)
                self.min_rows = self._tail_block(model, hidden, full)
                self.proved = bool(torch.equal(full[rows], part)) and self.min_rows is not None
                self.note = (
                    f"lm_head on the {rows.numel()} rows the words read, bitwise equal to all rows on the first window "
                    f"(subsets of at least {self.min_rows} rows)"
                    if self.proved
                    else "lm_head on every row: the needed rows alone differed from all rows on the first window"
                )
                return full[rows], hidden
            return part, hidden

    def _tail_block(self, model: Any, hidden: Any, full: Any) -> int | None:
        """The smallest last-rows block (MIN_ROWS, doubled, below the window) whose logits are `full`'s."""
        import torch

        from toolkit.numerics.forward import head_logits

        size = self.MIN_ROWS
        while size < hidden.shape[0]:
            if torch.equal(head_logits(model, hidden[-size:]), full[-size:]):
                return size
            size *= 2
        return None


def needed_rows(spans: list[tuple[int, int]], offset: int) -> Any:
    """Sorted window rows whose logits score the words with token spans `spans` (p − offset for p in [j − 1, e − 1))."""
    import numpy as np

    rows = {p - offset for j, e in spans for p in range(j - 1, e - 1)}
    return np.asarray(sorted(rows), dtype=np.int64)


def score_words(
    logits: Any,
    hidden: Any,
    unembed: Any,
    ids: Any,
    spans: list[tuple[int, int]],
    offset: int,
    top_k: int,
    held: Any = None,
) -> dict[str, Any]:
    """Per-word scores from one window's outputs; `offset` is the window start s in the text.

    `ids` [T_all] are the text's token ids; `spans` the words' [j, e) token spans (absolute).
    Window row p − s predicts token p + 1.  `logits` (native dtype) holds the window rows listed
    in `held` (in that order; `needed_rows(spans, offset)` at least), or every row when None.
    """
    import numpy as np
    import torch

    from toolkit.numerics.greedy import ranked_top

    device = logits.device
    if held is None:  # every window row: keep the rows the words read
        held = needed_rows(spans, offset)
        logits = logits[torch.as_tensor(held, device=device)]
    held = np.asarray(held, dtype=np.int64)
    slot = np.full(int(held.max()) + 1 if held.size else 0, -1, dtype=np.int64)  # window row -> row of logits
    slot[held] = np.arange(held.size)
    at_first = [j - 1 - offset for j, _ in spans]
    firsts = torch.tensor(at_first, dtype=torch.long, device=device)
    first_slots = torch.as_tensor(slot[at_first], device=device)
    true = torch.tensor([int(ids[j]) for j, _ in spans], dtype=torch.long, device=device)
    rows = logits[first_slots]
    true_logit = rows.gather(1, true[:, None])[:, 0]
    order = ranked_top(rows, max(top_k, 2))[1]
    top2 = rows.gather(1, order[:, :2]).double()
    # float64 log-probabilities: of the token each held row predicts, and of each word's top-k
    targets = torch.as_tensor(np.asarray(ids)[held + offset + 1].astype(np.int64), device=device)
    logp_target, logp_topk = _log_softmax_picks(logits, targets, first_slots, order[:, :top_k])
    logp_first = logp_target[first_slots]
    h = hidden[firsts].double()
    w = unembed[true].double()
    cosine = (h * w).sum(1) / (torch.linalg.vector_norm(h, dim=1) * torch.linalg.vector_norm(w, dim=1))
    word_logp = [float(logp_target[at : at + e - j].sum()) for at, (j, e) in zip(first_slots.tolist(), spans)]
    return {
        "true_id": true.cpu().numpy(),
        "logit": true_logit.double().cpu().numpy(),
        "logprob_first": logp_first.cpu().numpy(),
        "prob": logp_first.exp().cpu().numpy(),
        "logprob_word": np.asarray(word_logp, dtype=np.float64),
        "rank": (1 + (rows > true_logit[:, None]).sum(1, dtype=torch.int32)).cpu().numpy().astype(np.int64),
        "top1_match": (order[:, 0] == true).cpu().numpy(),
        "margin": (top2[:, 0] - top2[:, 1]).cpu().numpy(),
        "topk_ids": order[:, :top_k].cpu().numpy().astype(np.int64),
        "topk_probs": logp_topk.exp().cpu().numpy(),
        "cosine": cosine.cpu().numpy(),
    }


def _log_softmax_picks(logits: Any, targets: Any, first_slots: Any, topk: Any) -> tuple[Any, Any]:
    """(float64 log-softmax of each row of `logits` at `targets` [R], at `topk` [W, k] of rows
    `first_slots` [W]): one log-softmax of ROW_CHUNK rows at a time, only the picked entries kept."""
    import torch

    picked = torch.empty(logits.shape[0], dtype=torch.float64, device=logits.device)
    topk_logp = torch.empty(topk.shape, dtype=torch.float64, device=logits.device)
    for lo in range(0, logits.shape[0], ROW_CHUNK):
        part = torch.log_softmax(logits[lo : lo + ROW_CHUNK], dim=1, dtype=torch.float64)  # as of .double() first
        picked[lo : lo + part.shape[0]] = part.gather(1, targets[lo : lo + ROW_CHUNK, None])[:, 0]
        words = torch.nonzero((first_slots >= lo) & (first_slots < lo + part.shape[0])).flatten()
        if words.numel():
            topk_logp[words] = part[first_slots[words] - lo].gather(1, topk[words])
    return picked, topk_logp
