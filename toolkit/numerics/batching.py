"""One prompt computed as one row of a batch: the batch-composition axis of the field's divergence work.

Serving engines compute a request inside a batch of other requests, and kernels change their
reduction order with the batch's shape (../shared/FACTS.md: a batch of 4 changes fp32 logits bits
on a laptop CPU).  `build_batch` places a prompt at row `position` of a batch of `size` rows whose
other rows (the co-requests) are, by `fill`:

* `same`   — copies of the prompt;
* `others` — the campaign's other prompts, cycled in the order given (the prompt itself when
  there is no other);
* `random` — token sequences drawn from `seed` (uniform ids in [0, vocab_size), lengths uniform
  within ±25 % of the prompt's), reproducible on every machine (torch's CPU generator).

Rows of unequal length are padded on `padding_side` with `pad_id`, and `attention_mask` marks the
real tokens (fed as a 4-D additive mask, `additive_mask`). `greedy_in_batch` then generates
greedily for every row at once — each row appends its own argmax (lowest id wins a tie), finished
rows keep being fed their own argmax so the batch shape is the same at every step — and returns
the per-step trace of the prompt's row only, in the form of exp4.generate's traces. Padding is
handled exactly: pads are masked, position ids count real tokens only (so a row's positions equal
the prompt's alone), generated tokens follow the pads on the right (the KV cache keeps the masked
pads), and at the first step of a right-padded batch each row's logits are read at its last real
token.

A batch without padding (size 1, or rows of one length) is fed exactly as a single prompt is fed
today (no attention mask, no position ids): batch size 1 gives the bits of exp4.generate's
historical path (tests/test_batching.py checks this against a plain transformers loop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

FILLS = ("same", "others", "random")
PADDING_SIDES = ("left", "right")
LOGITS_PATHS = ("last_row", "all_rows")


@dataclass(frozen=True)
class BatchDraw:
    """Where and with whom a prompt is computed: `size` rows, co-requests by `fill`, the prompt at
    row `position`, pads on `padding_side`, random co-requests drawn from `seed`."""

    size: int = 1
    fill: str = "same"
    position: int = 0
    padding_side: str = "left"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.position < self.size:
            raise ValueError(f"batch position {self.position} must lie in [0, {self.size}) (size {self.size})")
        if self.fill not in FILLS or self.padding_side not in PADDING_SIDES:
            raise ValueError(
                f"batch fill {self.fill!r} / padding side {self.padding_side!r} not in {FILLS} / {PADDING_SIDES}"
            )


@dataclass(frozen=True)
class Batch:
    """Token ids and attention mask [B, L] (int64, 1 = real token); the prompt is row `row`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    row: int

    @property
    def padded(self) -> bool:
        """Whether any row holds pads (then the mask and position ids are fed to the model)."""
        return not bool(self.attention_mask.all())


def co_requests(
    prompt_ids: torch.Tensor, draw: BatchDraw, others: Sequence[torch.Tensor], vocab_size: int
) -> list[torch.Tensor]:
    """The `draw.size - 1` other rows (1-D int64 id tensors), in row order."""
    import torch

    prompt = prompt_ids.reshape(-1).cpu()
    count = draw.size - 1
    if draw.fill == "same" or (draw.fill == "others" and not others):
        return [prompt.clone() for _ in range(count)]
    if draw.fill == "others":
        return [others[i % len(others)].reshape(-1).cpu() for i in range(count)]
    generator = torch.Generator().manual_seed(draw.seed)
    length = prompt.numel()
    spread = length // 4
    rows = []
    for _ in range(count):
        n = int(torch.randint(max(1, length - spread), length + spread + 1, (1,), generator=generator))
        rows.append(torch.randint(0, vocab_size, (n,), generator=generator, dtype=torch.int64))
    return rows


def build_batch(
    prompt_ids: torch.Tensor, draw: BatchDraw, others: Sequence[torch.Tensor], pad_id: int, vocab_size: int
) -> Batch:
    """The batch of `draw` holding `prompt_ids` ([L] or [1, L]) at row `draw.position`, on its device."""
    import torch

    rows = co_requests(prompt_ids, draw, others, vocab_size)
    rows.insert(draw.position, prompt_ids.reshape(-1).cpu())
    width = max(r.numel() for r in rows)
    ids = torch.full((draw.size, width), int(pad_id), dtype=torch.int64)
    mask = torch.zeros((draw.size, width), dtype=torch.int64)
    for index, row in enumerate(rows):
        span = slice(width - row.numel(), width) if draw.padding_side == "left" else slice(0, row.numel())
        ids[index, span] = row.to(torch.int64)
        mask[index, span] = 1
    device = prompt_ids.device
    return Batch(input_ids=ids.to(device), attention_mask=mask.to(device), row=draw.position)


def additive_mask(mask: torch.Tensor, queries: int, dtype: torch.dtype) -> torch.Tensor:
    """The [B, 1, queries, K] additive attention mask of the last `queries` of K positions: a query
    sees the real keys up to itself, and a pad query sees itself too, so that no row is fully
    masked (transformers' own mask from a 2-D one makes fp64 eager attention NaN at pad rows, and
    the NaN reaches the real rows through zero weights).  0 where seen, the dtype's minimum elsewhere."""
    import torch

    keys = mask.shape[1]
    query_at = torch.arange(keys - queries, keys, device=mask.device)[:, None]
    key_at = torch.arange(keys, device=mask.device)[None, :]
    seen = ((key_at <= query_at)[None] & mask.bool()[:, None, :]) | (key_at == query_at)[None]
    blocked = torch.zeros(seen.shape, dtype=dtype, device=mask.device).masked_fill(~seen, torch.finfo(dtype).min)
    return blocked[:, None]


def _forward(
    model: Any, ids: torch.Tensor, cache: Any, kv_cache: bool, keep: Any, mask: torch.Tensor | None, positions: Any
) -> tuple[torch.Tensor, Any]:
    """One forward: (logits [B, K, V], the new cache or None); mask and positions only when padded."""
    from toolkit.numerics.forward import cache_keyword

    kwargs: dict[str, Any] = {"use_cache": kv_cache, "logits_to_keep": keep}
    if kv_cache and cache is not None:
        kwargs[cache_keyword(model.__class__)] = cache
    if mask is not None:
        kwargs["attention_mask"] = additive_mask(mask, ids.shape[1], model.dtype)
        kwargs["position_ids"] = positions
    out = model(input_ids=ids, **kwargs)
    new_cache = None
    if kv_cache:
        new_cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
    return out.logits, new_cache


def last_real(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token in a [B, L] attention mask (pads on either side)."""
    import torch

    return (torch.arange(mask.shape[1], device=mask.device) * mask).amax(dim=1)


def _read_plan(batch: Batch, first: bool, width: int, logits_path: str) -> tuple[Any, Any]:
    """(logits_to_keep, per-row index into the kept positions) for one step feeding `width` positions.

    Every step reads each row's last position, except the first step of a right-padded batch,
    which reads each row's last real token: `last_row` then applies `lm_head` to those positions
    only (the distinct ones, shared by the batch), `all_rows` to every fed position.
    """
    import torch

    mask = batch.attention_mask
    rows = mask.shape[0]
    last = last_real(mask) if first else torch.full((rows,), width - 1, device=mask.device)
    if logits_path == "all_rows":
        return 0, last
    if bool((last == width - 1).all()):
        return 1, torch.zeros_like(last)
    kept = torch.unique(last)  # sorted
    return kept, torch.searchsorted(kept, last)


def greedy_in_batch(
    model: Any,
    batch: Batch,
    max_new_tokens: int,
    *,
    kv_cache: bool,
    logits_path: str,
    stop_ids: set[int],
    top_k: int,
    on_step: Callable[[], None] | None = None,
    hidden: str | None = None,
) -> dict[str, list[Any]]:
    """Greedy generation of every row of `batch`; the per-step trace of row `batch.row`.

    Keys as exp4.generate's traces: `ids`, `topk_ids`, `topk_logits` (float32 exact copies),
    `margin` (top-1 − top-2 in float64), `hash` (bits of the full logits row), `hidden` (the output
    of module `hidden` at the position read, or None), `stop_reason` (["eos"] or
    ["max_new_tokens"]) and `prompt_ids` ([the row's real tokens]).  Generation stops when the
    prompt's row emits a stop id or after `max_new_tokens` steps; `on_step` is called after each.
    Run it under `torch.inference_mode()`.
    """
    import contextlib

    import torch

    from toolkit.numerics.greedy import ranked_top
    from toolkit.numerics.hooks import capture

    if logits_path not in LOGITS_PATHS:
        raise ValueError(f"logits_path {logits_path!r} not in {LOGITS_PATHS}")
    row = batch.row
    mask = batch.attention_mask
    padded = batch.padded
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    next_position = mask.sum(dim=1, keepdim=True)
    context, cache = batch.input_ids, None
    steps: dict[str, list[Any]] = {"ids": [], "topk_ids": [], "topk_logits": [], "margin": [], "hash": [], "hidden": []}
    watch: contextlib.AbstractContextManager[dict[str, Any]] = (
        capture(model, [hidden], last_position_only=False) if hidden else contextlib.nullcontext({})
    )
    with watch as captured:
        for step in range(max_new_tokens):
            incremental = kv_cache and cache is not None
            feed = context[:, -1:] if incremental else context
            keep, index = _read_plan(batch, step == 0, feed.shape[1], logits_path)
            feed_positions = positions[:, -1:] if incremental else positions
            logits, cache = _forward(model, feed, cache, kv_cache, keep, mask if padded else None, feed_positions)
            rows = torch.arange(logits.shape[0], device=logits.device)
            picked = logits[rows, index] if not isinstance(keep, int) or keep != 1 else logits[:, -1]
            every_value, every_order = ranked_top(picked, max(top_k, 2))  # the record and the picks
            values, order = every_value[row], every_order[row]
            _record(steps, picked[row], values, order, top_k)
            if hidden:
                at = int(last_real(batch.attention_mask)[row]) if step == 0 else -1
                steps["hidden"].append(captured[hidden][row, at].cpu())
            else:
                steps["hidden"].append(None)
            if on_step is not None:
                on_step()
            next_ids = every_order[:, :1]
            context = torch.cat([context, next_ids], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = torch.cat([positions, next_position + step], dim=1)
            if steps["ids"][-1] in stop_ids:
                steps["stop_reason"] = ["eos"]
                break
    steps.setdefault("stop_reason", ["max_new_tokens"])
    steps["prompt_ids"] = [batch.input_ids[row][batch.attention_mask[row].bool()].cpu()]
    return steps


def _record(
    steps: dict[str, list[Any]], logits: torch.Tensor, values: torch.Tensor, order: torch.Tensor, top_k: int
) -> None:
    from toolkit.numerics.fpunits import tensor_hash

    steps["ids"].append(int(order[0]))
    steps["topk_ids"].append(order[:top_k].cpu())
    steps["topk_logits"].append(values[:top_k].cpu())
    steps["margin"].append(float(values[0].double() - values[1].double()))
    steps["hash"].append(tensor_hash(logits))
