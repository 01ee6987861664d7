"""The per-point `lm_head` values a grid stores — the pair's logits and the argmax over the
vocabulary — bitwise those of the per-point GEMV, for far less than a GEMV per point.

Why: a faithful grid's reference applies `lm_head` to ONE point's final row ([1, 1, D], a GEMV),
which reads all V·D weights for every point.  Only two things per point are stored: the pair's
logits and the argmax.  So each logit v of a point with final row h is first BOUNDED, then the
GEMV's own bits are computed only for the rows that can be the argmax:

1. Bounds.  A GEMV computes the D-term dot product W_v·h in some order, so it is within
   γ_D·Σ|W_vi·h_i| ≤ γ_D·‖W_v‖·‖h‖ of the exact value (γ_D = D·u/(1 − D·u); Higham, *Accuracy
   and Stability of Numerical Algorithms*, §3.1), plus D half-subnormals for underflowing products.
   a. Anchored (tried first): z = W·h₀ of one anchor row h₀, once per map in float64 (each product
      exact, the sum within γ_D(float64)·‖W_v‖·‖h₀‖).  Since W_v·h = W_v·h₀ + W_v·(h − h₀), every
      GEMV value of a point lies within ‖W_v‖·(‖h − h₀‖ + γ_D·‖h‖) + γ_D(float64)·‖W_v‖·‖h₀‖ of z_v:
      O(V) work per batch with the row norms ‖W_v‖ taken once.  Grid points are close together, so
      this leaves a handful of rows for the whole batch.
   b. Batched (where (a) leaves more than `MAX_CANDIDATES` rows): the head on the whole batch
      [B, D], each value within 2·γ_D·max_v‖W_v‖·‖h‖ of the GEMV's.
2. With lower and upper bounds ℓ_v ≤ gemv_v ≤ u_v, the argmax v* has u_v* ≥ gemv_v* ≥ max_v ℓ_v,
   so it is among the candidates C = {v : u_v ≥ max ℓ}; every row tied for the maximum is too.
3. The GEMV's own bits for C and the pair: their weight rows gathered into blocks of exactly
   `BLOCK` rows (the last padded with a repeated row) at the head's own address alignment
   (`ALIGN`), one [1, 1, D] × [BLOCK, D] GEMV each.  On an AVX2 CPU (torch 2.13) a GEMV's rows were
   bitwise the same in any block of a multiple of 8 rows, in any order (not in a block of 17), if
   the rows sit at the same address modulo 64 bytes (an AVX-512 one: in any block but one of 2
   rows); that is the kernel's, not a guarantee, so `check_blocks` proves it at run time for this model:
   the whole vocabulary in shuffled blocks against full GEMVs (each row once, spread over the
   checked points).
4. argmax = the lowest index with the largest exact value among C (`torch.argmax`'s rule).

Usable only where the bound holds: a `torch.nn.Linear` head without bias or soft-cap, float32 or
float64, and float32 matmuls at full precision (no TF32/bf16 internal precision); otherwise
`unusable_reason` says why and callers keep the per-point GEMV.  A point whose candidates are not
few (`MAX_CANDIDATES`) or whose values are not finite takes the full per-point GEMV.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
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
#: Weight rows converted to float64 at a time when forming the row norms and the anchor's logits.
CHUNK = 4096
#: Safety factor, and a margin relative to |approx_v|, for the float64 arithmetic that forms and
#: applies the bounds themselves (each of those operations errs by at most 2**-53 relative).
SLACK = 1.0 + 2.0**-30
ROUNDING = 2.0**-40

DESCRIPTION = (
    "every logit bounded around one anchor row's float64 logits (|GEMV(h)_v − W_v·h₀| ≤ ‖W_v‖·(‖h − h₀‖ + "
    "γ_D·‖h‖) + γ_D(f64)·‖W_v‖·‖h₀‖), or, where that leaves more than "
    f"{MAX_CANDIDATES} rows, by lm_head batched as [B,D] (|batched − GEMV| ≤ 2·γ_D·‖W_v‖·‖h‖), then the "
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
        self.gamma = d * u / (1.0 - d * u)
        self.gamma64 = d * 2.0**-53 / (1.0 - d * 2.0**-53)
        self.scale = 2.0 * self.gamma * SLACK
        self.floor = 2.0 * d * fmt.smallest_subnormal * SLACK
        self.norms = torch.empty(self.weight.shape[0], dtype=torch.float64, device=self.weight.device)
        self.anchor: tuple[Any, Any] | None = None  # (h₀ [D] float64, W·h₀ [V] float64)
        for rows, chunk in self._float64_chunks():
            torch.linalg.vector_norm(chunk, dim=1, out=self.norms[rows])
        self.largest_row_norm = float(self.norms.max())
        self.block = aligned_like(self.weight, BLOCK)
        self.points = 0  # points evaluated by `values`
        self.full_gemv = 0  # of those, points that took the full per-point GEMV
        self.batches = {"anchored": 0, "batched": 0}  # how each batch's candidates were bounded

    def gemv_rows(self, row: Any, index: Any) -> Any:
        """The per-point GEMV's values of rows `index` (int64 [n]) for one final row [1, 1, D]."""
        return self.gemv_blocks(row, self._blocks(index, reuse=True))[: index.shape[0]]

    def gather(self, index: Any) -> list[Any]:
        """Weight rows `index` (int64 [n]) in new blocks of `BLOCK` rows at the head's alignment, the
        last padded with its last row: `gemv_rows`' blocks, kept for many rows [1, 1, D]."""
        return list(self._blocks(index, reuse=False))

    def gemv_blocks(self, row: Any, blocks: Iterable[Any]) -> Any:
        """One [1, 1, D] × [BLOCK, D] GEMV per block, concatenated."""
        import torch

        return torch.cat([torch.nn.functional.linear(row, block)[0, 0] for block in blocks])

    def _blocks(self, index: Any, reuse: bool) -> Iterator[Any]:
        """Weight rows `index` gathered into aligned blocks of exactly `BLOCK` rows (the last padded
        with its last row); with `reuse`, every block is the same buffer, valid until the next one."""
        import torch

        padded = torch.cat([index, index[-1:].expand((-index.shape[0]) % BLOCK)])
        for start in range(0, padded.shape[0], BLOCK):
            block = self.block if reuse else aligned_like(self.weight, BLOCK)
            torch.index_select(self.weight, 0, padded[start : start + BLOCK], out=block)
            yield block

    def values(self, hidden: Any, pair: tuple[int, int]) -> HeadValues:
        """Stored values of B points from their final rows `hidden` [B, 1, D] (see the module doc)."""
        import numpy as np
        import torch

        with torch.no_grad():
            rows = hidden[:, 0]
            count = rows.shape[0]
            wanted = torch.tensor(pair, dtype=torch.long, device=hidden.device)
            out = HeadValues(np.empty(count), np.empty(count, dtype=np.int64), np.empty((count, 2)))
            finite = torch.isfinite(rows).all(dim=1).tolist()
            shared = self._anchored_candidates(rows, finite)
            if shared is not None:
                self.batches["anchored"] += 1
                blocks = self.gather(torch.cat([shared, wanted]))
                per_point = [shared] * count
            else:
                self.batches["batched"] += 1
                blocks = None
                per_point, batched_finite = self._batched_candidates(rows)
                finite = [a and b for a, b in zip(finite, batched_finite)]
            for b in range(count):
                top_row, ab = self._point(hidden[b : b + 1], finite[b], per_point[b], wanted, blocks)
                pair_values = ab.double().cpu().numpy()
                out.pair[b] = pair_values
                with np.errstate(invalid="ignore"):  # inf − inf: NaN, as the GEMV's own gap
                    out.gap[b] = pair_values[0] - pair_values[1]
                out.argmax[b] = top_row
            self.points += count
        return out

    def _anchored_candidates(self, rows: Any, finite: list[bool]) -> Any:
        """Candidate rows (int64, ascending) shared by every finite point of `rows` [B, D], from the
        bounds around the anchor (module doc, 1a); None where they are more than `MAX_CANDIDATES`
        or no point is finite."""
        import torch

        usable = torch.tensor(finite, device=rows.device)
        if not bool(usable.any()):
            return None
        if self.anchor is None:
            self.anchor = self._anchor_logits(rows[int(usable.nonzero()[0, 0])].double())
        h0, z0 = self.anchor
        points = rows[usable].double()
        radius = torch.linalg.vector_norm(points - h0, dim=1) + self.gamma * torch.linalg.vector_norm(points, dim=1)
        reach = float(radius.max()) + self.gamma64 * float(torch.linalg.vector_norm(h0))
        half = (self.norms * reach + self.floor) * SLACK + z0.abs() * ROUNDING
        if not float(z0.abs().max() + half.max()) < torch.finfo(self.weight.dtype).max / 2:
            return None  # NaN or near overflow: the batched bounds and the full GEMV handle those
        index = torch.nonzero(z0 + half >= (z0 - half).max()).flatten()
        return index if index.shape[0] <= MAX_CANDIDATES else None

    def _float64_chunks(self) -> Iterator[tuple[slice, Any]]:
        """The head in float64, `CHUNK` rows at a time through one buffer (no copy of the whole matrix)."""
        import torch

        buffer = torch.empty(CHUNK, self.weight.shape[1], dtype=torch.float64, device=self.weight.device)
        for start in range(0, self.weight.shape[0], CHUNK):
            rows = self.weight[start : start + CHUNK]
            buffer[: rows.shape[0]].copy_(rows)
            yield slice(start, start + rows.shape[0]), buffer[: rows.shape[0]]

    def _anchor_logits(self, h0: Any) -> tuple[Any, Any]:
        """(h₀, W·h₀) in float64 for the anchor row h₀ [D] (float64)."""
        import torch

        z0 = torch.empty_like(self.norms)
        for rows, chunk in self._float64_chunks():
            torch.mv(chunk, h0, out=z0[rows])
        return h0, z0

    def _batched_candidates(self, rows: Any) -> tuple[list[Any], list[bool]]:
        """Per point of `rows` [B, D]: candidate rows (ascending) from the batched head's bounds
        (module doc, 1b), and whether its batched values are finite."""
        import torch

        approx = torch.nn.functional.linear(rows, self.weight)
        top = approx.amax(dim=1).double()
        reach = self.scale * self.largest_row_norm * torch.linalg.vector_norm(rows.double(), dim=1)
        below = top - 2 * (reach + self.floor) - top.abs() * ROUNDING
        threshold = below.to(approx.dtype)
        threshold = torch.where(
            threshold.double() > below,
            torch.nextafter(threshold, torch.full_like(threshold, -torch.inf)),
            threshold,
        )
        found, columns = torch.nonzero(approx >= threshold[:, None], as_tuple=True)
        starts = torch.searchsorted(found, torch.arange(rows.shape[0] + 1, device=found.device)).tolist()
        finite = (torch.isfinite(top) & torch.isfinite(approx.amin(dim=1))).tolist()  # amax/amin keep NaN
        return [columns[starts[b] : starts[b + 1]] for b in range(rows.shape[0])], finite

    def _point(self, row: Any, finite: bool, index: Any, wanted: Any, blocks: list[Any] | None) -> tuple[int, Any]:
        """(argmax, the pair's logits) of one point from its final row [1, 1, D] and its candidate
        rows `index` (ascending), through `blocks` (those rows and the pair, gathered) if given."""
        import torch

        if finite and 0 < index.shape[0] <= MAX_CANDIDATES:
            if blocks is None:
                exact = self.gemv_rows(row, torch.cat([index, wanted]))
            else:
                exact = self.gemv_blocks(row, blocks)
            n = index.shape[0]
            if bool(torch.isfinite(exact[: n + 2]).all()):
                return int(index[int(torch.argmax(exact[:n]))]), exact[n : n + 2]
        self.full_gemv += 1
        logits = torch.nn.functional.linear(row, self.weight)[0, 0]
        return int(torch.argmax(logits)), logits[wanted]

    def check_blocks(
        self, row: Any, reference: Any, seed: int = 0, part: tuple[int, int] = (0, 1)
    ) -> tuple[bool, float]:
        """(bitwise equal, max |diff|): vocabulary rows of one final row [1, 1, D] through `gemv_rows`
        in a seeded random order, against `reference` [V], the full GEMV's logits.  `part` (k, n)
        takes every n-th row of that order from the k-th: n calls with k = 0..n-1 and one seed cover
        every row once (the whole vocabulary by default)."""
        import torch

        k, n = part
        order = torch.randperm(self.weight.shape[0], generator=torch.Generator().manual_seed(seed))[k::n]
        order = order.to(self.weight.device)
        with torch.no_grad():
            values = self.gemv_rows(row, order)
        wanted = reference[order]
        diff = (values.double() - wanted.double()).abs().max()
        return bool(torch.equal(values, wanted)), float(diff) if not math.isnan(float(diff)) else math.inf
