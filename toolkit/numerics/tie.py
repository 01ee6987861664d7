"""Logit ties as the model itself computes them: gaps, ULPs of a logit, and a tie certificate.

A *tie* between tokens a and b at some input means the two `lm_head` outputs are equal **in the
model's dtype**, exactly as the model's forward produced them (same code path, same kernels).
A gap computed any other way — a separate dot product h·(W[a] − W[b]), two dots in float64, the
logits of a row computed alone — is a different number, rounded differently, and certifies
nothing about the model's argmax (see `../shared/science/exp6_7_11_15.md` §1.3).

Conventions used by every function here:

* `gap(a, b) = logit[a] − logit[b]`, both logits taken from the native tensor and converted to
  float64 before subtracting (the conversion is exact; the float64 difference of two float32 or
  bfloat16 values is exact too, so the gap is the true difference of the two stored numbers);
* `ulp(v, dtype)` is the spacing of `dtype` just above |v| (for |v| a power of two, the larger
  spacing of its binade): the distance from |v| to the next representable number
  (`toolkit.numerics.fpunits.ulp`, the one definition);
* the gap in ULPs divides the gap by `ulp(max(|logit a|, |logit b|))`; exactly 0 is a true tie.
* `torch.argmax` resolves a tie in favour of the lowest index, so at a true tie the model picks
  min(a, b); `side(logits, a, b)` reports which of the two the model's argmax prefers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from toolkit.numerics.fpunits import ulp


def gap(logits: Any, a: int, b: int) -> float:
    """logit[a] − logit[b] in float64 from the native values (exact; see the module docstring)."""
    return float(logits[a].double() - logits[b].double())


def top_two(logits: Any) -> tuple[int, int]:
    """(argmax, runner-up) of a logits row, by `torch.argmax` semantics (ties: lowest index first)."""
    import torch

    first = int(torch.argmax(logits))
    rest = logits.detach().clone()
    rest[first] = -float("inf")
    return first, int(torch.argmax(rest))


def side(logits: Any, a: int, b: int) -> int:
    """+1 if the model's argmax restricted to {a, b} picks a (ties: the lower index), else −1."""
    la, lb = float(logits[a]), float(logits[b])
    if la != lb:
        return 1 if la > lb else -1
    return 1 if a < b else -1


@dataclass(frozen=True)
class TieCertificate:
    """What the model's own logits say about the pair at one input.

    `pair` is ordered so that `pair[0]` is the member the model's argmax prefers (at a true tie the
    lower index); `gap = logit[pair[0]] − logit[pair[1]] ≥ 0` when the pair is the top-2.
    """

    pair: tuple[int, int]
    logits_ab: tuple[float, float]  # native values converted exactly to float64
    gap: float  # logits_ab[0] − logits_ab[1], float64
    gap_ulps: float  # gap / ulp(max |logit|) in the model dtype
    argmax: int  # torch.argmax of the native logits row
    pair_is_top2: bool  # {a, b} == the two largest logits (argmax semantics)
    dtype: str


def certify(logits: Any, a: int, b: int) -> TieCertificate:
    """Certificate for the pair {a, b} from a native logits row [V] (no recomputation, no casts)."""
    import torch

    first, second = (a, b) if side(logits, a, b) > 0 else (b, a)
    la, lb = float(logits[first].double()), float(logits[second].double())
    spacing = ulp(max(abs(la), abs(lb)), logits.dtype)
    diff = la - lb
    return TieCertificate(
        pair=(first, second),
        logits_ab=(la, lb),
        gap=diff,
        gap_ulps=diff / spacing,
        argmax=int(torch.argmax(logits)),
        pair_is_top2=set(top_two(logits)) == {a, b},
        dtype=str(logits.dtype).replace("torch.", ""),
    )
