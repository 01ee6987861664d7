"""Top-1/top-2 margins, margins in ULPs of the logits' format, and how close a greedy step was to a tie.

A greedy step picks the largest logit.  Its margin (top-1 minus top-2 logit) measured in units of
the spacing of the format the logits were computed in says how many representable values lie
between the decision and a tie: a margin of 1 ULP flips with the smallest possible rounding change.
The spacing is `toolkit.numerics.fpunits.spacing` (float16/32/64 and bfloat16, given by name).
"""

from __future__ import annotations

from typing import Any


def margin_in_ulps(margin: Any, top1: Any, dtype: str) -> Any:
    """A margin expressed in ULPs of the top-1 logit's magnitude in `dtype` (0 = exact tie)."""
    import numpy as np

    from toolkit.numerics.fpunits import spacing

    return np.asarray(margin, dtype=np.float64) / spacing(top1, dtype)


def logit_of(topk_ids: Any, topk_logits: Any, token: int) -> float:
    """The stored logit of `token` in one step's top-k (NaN when the token is not among them)."""
    import numpy as np

    hit = np.nonzero(np.asarray(topk_ids) == token)[0]
    return float(topk_logits[hit[0]]) if hit.size else float("nan")


def contested_margin(topk_ids: Any, topk_logits: Any, winner: int, loser: int) -> float:
    """z(winner) − z(loser) from one step's stored top-k (NaN when either token is missing)."""
    return logit_of(topk_ids, topk_logits, winner) - logit_of(topk_ids, topk_logits, loser)
