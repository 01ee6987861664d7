"""One plain greedy decode from input embeddings, for perturbed and unperturbed inputs alike.

`greedy_from_embeds(model, embeds, n_tokens, kv_cache)` feeds the prompt as `inputs_embeds`
(so any row may be perturbed), then appends each argmax token's own embedding.  Two paths, one
per call, recorded by the caller:

* `kv_cache=False` — every step is a full forward over all positions (prompt embeddings followed by
  the embeddings of the tokens generated so far), `logits_to_keep=1`;
* `kv_cache=True`  — one prefill over the prompt embeddings, then one-token forwards on the cache.

The two paths are not bitwise equal to each other (see ../shared/FACTS.md), so a perturbed run and
its reference must use the same path; the experiment calls this one function for both.  Argmax
picks the lowest token id among equal maxima (`ranked`, as exp4.generate).  Each step's forward is
`toolkit.numerics.forward.last_logits`, the one forward step of every decode loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Greedy:
    """Generated token ids and each step's top-1 − top-2 logit margin (native logits, exact in fp64)."""

    ids: list[int]
    margins: list[float]


def first_difference(a: list[int], b: list[int]) -> int:
    """First index where two id lists differ (-1: equal over their common length and same length)."""
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return -1 if len(a) == len(b) else min(len(a), len(b))


def ranked(logits: Any) -> tuple[Any, Any]:
    """(values, ids) of `logits` sorted along the last dim, largest first, as float32 (exact for
    bf16/fp16/fp32 logits); equal values keep their index order (`stable=True`), so ids[..., 0] is the
    greedy token with the lowest id winning a tie.  The one greedy pick of every decode loop."""
    import torch

    return torch.sort(logits.float(), dim=-1, descending=True, stable=True)


def ranked_top(logits: Any, k: int) -> tuple[Any, Any]:
    """The first k columns of `ranked(logits)` — same values, same ids, ties to the lowest id —
    without sorting the whole vocabulary.  `torch.topk` gives each row's k + 1 largest; where the
    (k + 1)-th is below the k-th, exactly k entries are >= the k-th value and they are the set,
    ordered by id and then stably by value; a row with ties across the k-th place sorts its entries
    >= that value (ascending ids) stably.  Rows holding a NaN (topk puts it first) take the full sort."""
    import torch

    values = logits.float()
    width = values.shape[-1]
    k = min(k, width)
    rows = values.reshape(-1, width)
    if k < width:
        top, index = torch.topk(rows, k + 1, dim=1)  # topk ranks NaN above every number
    if k == width or bool(torch.isnan(top[:, 0]).any()):
        full_values, full_ids = ranked(logits)
        return full_values[..., :k], full_ids[..., :k]
    tied = torch.nonzero(top[:, k] == top[:, k - 1]).flatten().tolist()  # more than k entries >= the k-th value
    top, index = top[:, :k], index[:, :k]
    threshold = top[:, -1:]
    by_id, perm = torch.sort(index, dim=1)
    out_values, order = torch.sort(top.gather(1, perm), dim=1, descending=True, stable=True)
    out_ids = by_id.gather(1, order)
    for r in tied:
        candidates = torch.nonzero(rows[r] >= threshold[r]).flatten()  # ascending ids
        tied_values, tied_order = torch.sort(rows[r, candidates], descending=True, stable=True)
        out_values[r], out_ids[r] = tied_values[:k], candidates[tied_order[:k]]
    shape = (*values.shape[:-1], k)
    return out_values.reshape(shape), out_ids.reshape(shape)


def greedy_from_embeds(
    model: Any, embeds: Any, n_tokens: int, kv_cache: bool, stop_ids: frozenset[int] = frozenset()
) -> Greedy:
    """Greedy continuation of `embeds` [1, T, D] (model dtype) for up to `n_tokens` steps."""
    import torch

    from toolkit.numerics.forward import last_logits

    table = model.get_input_embeddings()
    ids: list[int] = []
    margins: list[float] = []
    context, cache = embeds, None
    with torch.inference_mode():
        for _ in range(n_tokens):
            row, cache = last_logits(model, inputs_embeds=context, cache=cache, use_cache=kv_cache)
            values, order = ranked_top(row[0], 2)
            token = int(order[0])
            ids.append(token)
            margins.append(float(values[0].double() - values[1].double()))
            if token in stop_ids:
                break
            new = table(torch.tensor([[token]], device=embeds.device)).to(embeds.dtype)
            context = new if kv_cache else torch.cat([context, new], dim=1)
    return Greedy(ids=ids, margins=margins)
