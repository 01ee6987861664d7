"""Fast mode of a 2-D grid: a prefix K/V cache shared by every point and a batched `lm_head`.

Not bitwise equal to one full forward per point (the cached path and the batched head round
differently), so every fast map also stores its agreement with the faithful values on a seeded
sample of its inputs (`agreement`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class PrefixCache:
    """Fast path: the prefix K/V computed once for a batch size, reused for every block of points."""

    def __init__(self, model: Any, prefix: Any, batch_size: int) -> None:
        import torch

        from toolkit.numerics.forward import last_logits

        self.model = model
        self.batch_size = batch_size
        self.prefix_length = prefix.shape[1]
        with torch.no_grad():
            _, self.cache = last_logits(model, inputs_embeds=prefix.expand(batch_size, -1, -1), use_cache=True)

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

    def _restore(self) -> None:
        extra = self.cache.get_seq_length() - self.prefix_length
        if extra > 0:
            try:
                self.cache.crop(-extra)  # transformers >= 5: a negative count removes tokens
            except ValueError:
                self.cache.crop(self.prefix_length)


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
    """Faithful (per-point) gaps on a seeded random sample of distinct inputs vs the fast gaps."""
    import numpy as np

    from toolkit.numerics.grid import gap_and_argmax, point_logits

    rng = np.random.default_rng(seed)
    count = min(sample, xs.shape[0])
    index = np.sort(rng.choice(xs.shape[0], size=count, replace=False))
    faithful = np.empty(count)
    for k, i in enumerate(index):
        faithful[k] = gap_and_argmax(point_logits(model, prefix, xs[int(i)]), pair)[0][0]
        if progress is not None:
            progress(1)
    fast = fast_gap[index]
    same_sign = np.sign(faithful) == np.sign(fast)
    return {
        "index": index.astype(np.int64),
        "faithful_gap": faithful,
        "fast_gap": fast,
        "sign_agreement": float(same_sign.mean()) if count else float("nan"),
        "max_abs_gap_diff": float(np.abs(faithful - fast).max()) if count else float("nan"),
        "bitwise_equal": int((faithful == fast).sum()),
    }
