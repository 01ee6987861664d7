"""Top-1/top-2 margins, spacing of floats (one ULP at a value) and how close a greedy step was to a tie.

A greedy step picks the largest logit.  Its margin (top-1 minus top-2 logit) measured in units of
the spacing of the format the logits were computed in says how many representable values lie
between the decision and a tie: a margin of 1 ULP flips with the smallest possible rounding change.
`spacing` supports float16/32/64 and bfloat16 (given by name): a bfloat16 number has the exponent
of a float32 and 8 significant bits, so its spacing is the float32 spacing × 2**16 (normal range).
"""

from __future__ import annotations

from typing import Any

BF16_SHIFT = 16  # bfloat16 = top 16 bits of a float32: 2**16 float32 ULPs per bfloat16 ULP


def spacing(values: Any, dtype: str) -> Any:
    """Distance from |v| to the next larger representable value of `dtype` (float64 numpy array)."""
    import numpy as np

    mags = np.abs(np.asarray(values, dtype=np.float64))
    if dtype == "bfloat16":
        return np.spacing(mags.astype(np.float32)).astype(np.float64) * 2.0 ** BF16_SHIFT
    formats = {"float16": np.float16, "float32": np.float32, "float64": np.float64}
    if dtype not in formats:
        raise ValueError(f"no spacing for dtype {dtype!r}; known: bfloat16, {', '.join(formats)}")
    return np.spacing(mags.astype(formats[dtype])).astype(np.float64)


def margin_in_ulps(margin: Any, top1: Any, dtype: str) -> Any:
    """A margin expressed in ULPs of the top-1 logit's magnitude in `dtype` (0 = exact tie)."""
    import numpy as np

    return np.asarray(margin, dtype=np.float64) / spacing(top1, dtype)


def logit_of(topk_ids: Any, topk_logits: Any, token: int) -> float:
    """The stored logit of `token` in one step's top-k (NaN when the token is not among them)."""
    import numpy as np

    hit = np.nonzero(np.asarray(topk_ids) == token)[0]
    return float(topk_logits[hit[0]]) if hit.size else float("nan")


def contested_margin(topk_ids: Any, topk_logits: Any, winner: int, loser: int) -> float:
    """z(winner) − z(loser) from one step's stored top-k (NaN when either token is missing)."""
    return logit_of(topk_ids, topk_logits, winner) - logit_of(topk_ids, topk_logits, loser)
