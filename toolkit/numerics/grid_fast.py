"""Fast mode of a 2-D grid: a prefix K/V cache shared by every point, then the bounded head
(`toolkit.numerics.exact_head`: the per-point GEMV's bits for the pair and the argmax of each
cached final row, once its blocks matched a full GEMV on the map's first point), else a batched
`lm_head`.

Not bitwise equal to one full forward per point (the cached path rounds differently), so every
fast map also stores its agreement with the faithful values on a seeded sample of its inputs
(`agreement`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class PrefixCache:
    """Fast path: the prefix K/V computed once (batch 1), repeated for a batch size and reused for
    every block of points."""

    def __init__(self, model: Any, prefix: Any, batch_size: int) -> None:
        import torch

        from toolkit.numerics.forward import last_logits

        self.model = model
        self.batch_size = batch_size
        self.prefix_length = prefix.shape[1]
        with torch.no_grad():
            _, self.cache = last_logits(model, inputs_embeds=prefix, use_cache=True)
            self.cache.batch_repeat_interleave(batch_size)

    def logits(self, xs: Any) -> Any:
        """Logits [B, V] for B = batch_size last-row inputs xs [B, D] against the cached prefix."""
        import torch

        from toolkit.numerics.forward import last_logits

        if xs.shape[0] != self.batch_size:
            raise ValueError(f"PrefixCache was built for batches of {self.batch_size}, got {xs.shape[0]}")
        with torch.no_grad():
            logits, _ = last_logits(self.model, inputs_embeds=xs.unsqueeze(1), cache=self.cache, use_cache=True)
        self._restore()
        return logits

    def rows(self, xs: Any) -> Any:
        """Final-norm rows [B, 1, D] of B = batch_size last-row inputs xs [B, D] against the cached prefix."""
        import torch

        from toolkit.numerics.embedding_forward import base_model
        from toolkit.numerics.forward import cache_keyword

        if xs.shape[0] != self.batch_size:
            raise ValueError(f"PrefixCache was built for batches of {self.batch_size}, got {xs.shape[0]}")
        stack = base_model(self.model)
        with torch.no_grad():
            out = stack(inputs_embeds=xs.unsqueeze(1), use_cache=True, **{cache_keyword(stack.__class__): self.cache})
        self._restore()
        return out.last_hidden_state[:, -1:]

    def _restore(self) -> None:
        extra = self.cache.get_seq_length() - self.prefix_length
        if extra > 0:
            try:
                self.cache.crop(-extra)  # transformers >= 5: a negative count removes tokens
            except ValueError:
                self.cache.crop(self.prefix_length)


def fast_map(
    model: Any, prefix: Any, xs: Any, pair: tuple[int, int], batch_size: int, progress: Callable[[int], None] | None
) -> tuple[Any, Any, Any, str]:
    """(gap, argmax, logits of the pair, the path) of fast mode over xs [U, D] in blocks of
    `batch_size`: `FAST_HEAD_PATH` where the head is usable and its GEMV blocks equal a full GEMV
    of the first point's cached row, else `FAST_PATH`."""
    import torch

    from toolkit.numerics.exact_head import BoundedHead, unusable_reason
    from toolkit.numerics.forward import head_logits
    from toolkit.numerics.grid import FAST_HEAD_PATH, FAST_PATH, evaluate, evaluate_values, pad_rows

    cache = PrefixCache(model, prefix, batch_size)
    if unusable_reason(model) is None:
        head = BoundedHead(model)
        rows = cache.rows(pad_rows(xs[:batch_size], batch_size))
        with torch.no_grad():
            full = head_logits(model, rows[:1])[0, 0]
        if head.check_blocks(rows[:1], full)[0]:
            first = head.values(rows, pair)
            values = evaluate_values(
                lambda block: head.values(cache.rows(block), pair), xs, batch_size, progress, first
            )
            return (*values, FAST_HEAD_PATH)
    return (*evaluate(cache.logits, xs, batch_size, pair, progress), FAST_PATH)


def agreement(
    model: Any,
    prefix: Any,
    xs: Any,
    fast_gap: Any,
    pair: tuple[int, int],
    sample: int,
    seed: int,
    progress: Callable[[int], None] | None,
) -> dict[str, Any]:
    """Faithful gaps on a seeded random sample of distinct inputs vs the fast gaps.  The faithful
    values come from faithful mode on the sample (`toolkit.numerics.grid_faithful.faithful`: bitwise
    one full forward per point, batched only after its own check); `faithful_path` says how."""
    import numpy as np
    import torch

    from toolkit.numerics.grid_faithful import faithful

    rng = np.random.default_rng(seed)
    count = min(sample, xs.shape[0])
    index = np.sort(rng.choice(xs.shape[0], size=count, replace=False))
    path = ""
    faithful_gap = np.empty(0)
    if count:
        picked = xs[torch.as_tensor(index, dtype=torch.long)]
        faithful_gap, _, _, _, path = faithful(model, prefix, picked, pair, min(16, count), 8, progress)
    fast = fast_gap[index]
    same_sign = np.sign(faithful_gap) == np.sign(fast)
    return {
        "index": index.astype(np.int64),
        "faithful_gap": faithful_gap,
        "faithful_path": path,
        "fast_gap": fast,
        "sign_agreement": float(same_sign.mean()) if count else float("nan"),
        "max_abs_gap_diff": float(np.abs(faithful_gap - fast).max()) if count else float("nan"),
        "bitwise_equal": int((faithful_gap == fast).sum()),
    }
