"""The per-point `lm_head` values a grid stores — the pair's logits and the argmax over the
vocabulary — bitwise those of the per-point GEMV, for the cost of one batched head.

Why: a faithful grid's reference applies `lm_head` to ONE point's final row ([1, 1, D], a GEMV),
which reads all V·D weights for every point; a batched head [B, D] is B times cheaper but its
bits differ (another kernel, another summation order).  Only two things per point are stored: the
pair's logits and the argmax.  So:

1. `approx` = the batched head [B, V].  It and the GEMV compute the same D-term dot products in
   some order, so each is within γ_D·Σ|W_vi·h_i| ≤ γ_D·‖W_v‖·‖h‖ of the exact value
   (γ_D = D·u/(1 − D·u); Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1), plus D
   half-subnormals for underflowing products: |approx_v − gemv_v| ≤ E = twice that bound with the
   largest row norm max_v ‖W_v‖.
2. With m = max_v approx_v (at row v̂) and v* the GEMV's argmax: approx_v* ≥ gemv_v* − E ≥
   gemv_v̂ − E ≥ m − 2E.  So the argmax is among the candidates C = {v : approx_v ≥ m − 2E}: one
   comparison per logit in the model's dtype, against m − 2E rounded down to that dtype.
3. The GEMV's own bits for C and the pair: their weight rows gathered into blocks of exactly
   `BLOCK` rows (the last padded with a repeated row) at the head's own address alignment
   (`ALIGN`), one [1, 1, D] × [BLOCK, D] GEMV each.  On CPU (torch 2.13) a GEMV's rows are bitwise
   the same in any block of a multiple of 8 rows, in any order (not in a block of 17), if the rows
   sit at the same address modulo 64 bytes; `check_blocks` proves it at run time for this model:
   the whole vocabulary in shuffled blocks against a full GEMV.
4. argmax = the lowest index with the largest exact value among C (`torch.argmax`'s rule).

Usable only where the bound holds: a `torch.nn.Linear` head without bias or soft-cap, float32 or
float64, and float32 matmuls at full precision (no TF32/bf16 internal precision); otherwise
`unusable_reason` says why and callers keep the per-point GEMV.  A point whose candidates are not
few (`MAX_CANDIDATES`) or whose values are not finite takes the full per-point GEMV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Rows per GEMV block: the shape `check_blocks` validates and every later call uses.
BLOCK = 64
#: The alignment (bytes) the GEMV's bits depend on: on CPU the same rows and row give other bits when
#: the weights sit at another address modulo the vector width (measured: a head loaded at 40 mod 64
#: bytes vs a 64-byte aligned copy differed in 39,881 of 49,152 logits, up to 5.5e-6).
ALIGN = 64
#: Above this many candidate rows a point takes the full per-point GEMV instead.
MAX_CANDIDATES = 4 * BLOCK
#: Safety factor, and a margin relative to |approx_v|, for the float64 arithmetic that forms and
#: applies the bounds themselves (each of those operations errs by at most 2**-53 relative).
SLACK = 1.0 + 2.0**-30
ROUNDING = 2.0**-40

DESCRIPTION = (
    f"lm_head batched as [B,D] to bound every logit (|batched − GEMV| ≤ 2·γ_D·‖W_v‖·‖h‖), then the "
    f"per-point [1,1,D] GEMV's own bits for the pair and every row that can be the argmax, in blocks of {BLOCK} "
    "weight rows (block-invariance checked on the whole vocabulary at run time)"
)


def unusable_reason(model: Any) -> str | None:
    """Why the bounded head cannot stand in for the per-point GEMV of `model` (None: it can)."""
    import torch

    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return f"output embeddings are {type(head).__name__}, not torch.nn.Linear"
    if head.bias is not None:
        return "lm_head has a bias"
    if getattr(model.config, "final_logit_softcapping", None) is not None:
        return "final logit soft-capping"
    if head.weight.dtype not in (torch.float32, torch.float64):
        return f"lm_head dtype {head.weight.dtype} (the bound is for float32/float64)"
    if head.weight.dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return f"float32 matmul precision {torch.get_float32_matmul_precision()!r} (reduced internal precision)"
    if head.weight.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        return "TF32 matmuls are allowed"
    return None


@dataclass
class HeadValues:
    """What a grid stores per point, as numpy arrays over B points."""

    gap: Any  # float64 [B] logit[a] − logit[b]
    argmax: Any  # int64 [B]
    pair: Any  # float64 [B, 2] the two logits


def aligned_like(weight: Any, rows: int) -> Any:
    """An empty [rows, D] buffer whose address has the same remainder modulo `ALIGN` bytes as
    `weight`'s, so the GEMV kernel splits each gathered row as it splits the head's own rows."""
    import torch

    size = weight.element_size()
    flat = torch.empty(rows * weight.shape[1] + ALIGN // size, dtype=weight.dtype, device=weight.device)
    shift = (weight.data_ptr() - flat.data_ptr()) % ALIGN
    if shift % size:
        raise ValueError(f"lm_head's address is not a multiple of its element size {size}")
    start = shift // size
    return flat[start : start + rows * weight.shape[1]].view(rows, weight.shape[1])


class BoundedHead:
    """`values(hidden, pair)`: the bounded head of a model whose `unusable_reason` is None."""

    def __init__(self, model: Any) -> None:
        import torch

        from toolkit.numerics.fpunits import float_format

        self.weight = model.get_output_embeddings().weight.detach()
        fmt = float_format(self.weight.dtype)
        d = self.weight.shape[1]
        u = 2.0**-fmt.precision
        gamma = d * u / (1.0 - d * u)
        self.scale = 2.0 * gamma * SLACK
        self.floor = 2.0 * d * fmt.smallest_subnormal * SLACK
        self.largest_row_norm = max(  # in float64, 4096 rows at a time (no copy of the whole matrix)
            float(torch.linalg.vector_norm(rows.double(), dim=1).max()) for rows in self.weight.split(4096)
        )
        self.block = aligned_like(self.weight, BLOCK)
        self.points = 0  # points evaluated by `values`
        self.full_gemv = 0  # of those, points that took the full per-point GEMV

    def gemv_rows(self, row: Any, index: Any) -> Any:
        """The per-point GEMV's values of rows `index` (int64 [n]) for one final row [1, 1, D]."""
        import torch

        n = index.shape[0]
        padded = torch.cat([index, index[-1:].expand((-n) % BLOCK)])
        blocks = []
        for start in range(0, padded.shape[0], BLOCK):
            torch.index_select(self.weight, 0, padded[start : start + BLOCK], out=self.block)
            blocks.append(torch.nn.functional.linear(row, self.block)[0, 0])
        return torch.cat(blocks)[:n]

    def values(self, hidden: Any, pair: tuple[int, int]) -> HeadValues:
        """Stored values of B points from their final rows `hidden` [B, 1, D] (see the module doc)."""
        import numpy as np
        import torch

        with torch.no_grad():
            approx = torch.nn.functional.linear(hidden[:, 0], self.weight)
            top = approx.amax(dim=1).double()
            reach = self.scale * self.largest_row_norm * torch.linalg.vector_norm(hidden[:, 0].double(), dim=1)
            below = top - 2 * (reach + self.floor) - top.abs() * ROUNDING
            threshold = below.to(approx.dtype)
            threshold = torch.where(
                threshold.double() > below,
                torch.nextafter(threshold, torch.full_like(threshold, -torch.inf)),
                threshold,
            )
            rows, columns = torch.nonzero(approx >= threshold[:, None], as_tuple=True)
            starts = torch.searchsorted(rows, torch.arange(hidden.shape[0] + 1, device=rows.device)).tolist()
            finite = (torch.isfinite(top) & torch.isfinite(approx.amin(dim=1))).tolist()  # amax/amin keep NaN
            count = hidden.shape[0]
            out = HeadValues(np.empty(count), np.empty(count, dtype=np.int64), np.empty((count, 2)))
            wanted = torch.tensor(pair, dtype=torch.long, device=hidden.device)
            for b in range(count):
                index = columns[starts[b] : starts[b + 1]]  # row-major: each point's candidates, ascending
                top_row, ab = self._point(hidden[b : b + 1], finite[b], index, wanted)
                pair_values = ab.double().cpu().numpy()
                out.pair[b] = pair_values
                out.gap[b] = pair_values[0] - pair_values[1]
                out.argmax[b] = top_row
            self.points += count
        return out

    def _point(self, row: Any, finite: bool, index: Any, wanted: Any) -> tuple[int, Any]:
        """(argmax, the pair's logits) of one point from its final row [1, 1, D] and its candidate
        rows `index` (ascending)."""
        import torch

        if finite and 0 < index.shape[0] <= MAX_CANDIDATES:
            exact = self.gemv_rows(row, torch.cat([index, wanted]))
            if bool(torch.isfinite(exact).all()):
                return int(index[int(torch.argmax(exact[: index.shape[0]]))]), exact[index.shape[0] :]
        self.full_gemv += 1
        logits = torch.nn.functional.linear(row, self.weight)[0, 0]
        return int(torch.argmax(logits)), logits[wanted]

    def check_blocks(self, row: Any, reference: Any, seed: int = 0) -> tuple[bool, float]:
        """(bitwise equal, max |diff|): every vocabulary row of one final row [1, 1, D] through
        `gemv_rows` in a seeded random order, against `reference` [V], the full GEMV's logits."""
        import torch

        order = torch.randperm(self.weight.shape[0], generator=torch.Generator().manual_seed(seed))
        order = order.to(self.weight.device)
        with torch.no_grad():
            values = torch.empty_like(reference)
            values[order] = self.gemv_rows(row, order)
        diff = (values.double() - reference.double()).abs().max()
        return bool(torch.equal(values, reference)), float(diff) if not math.isnan(float(diff)) else math.inf
