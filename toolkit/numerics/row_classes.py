"""Which matmul row counts round like a reference's: the batch sizes a faithful batched path may use.

A CPU BLAS picks its kernel by the number of rows M of a matmul, and one row's bits can change
with the kernel.  Measured: on the AVX2 machine of FACTS.md, M = 1, 2..7 and ≥ 8 rounded a row in
three different ways; on an AVX-512 machine (Sapphire Rapids, MKL 2024.2, torch 2.13, December
2026) the classes were 1, 2..15 and ≥ 16 for SmolLM2-135M's weights, and 2..5 for a K = 128
weight.  A batched path whose linear layers see b rows is bitwise equal to the per-point forward,
whose linear layers see T rows, only where b and T fall in the same class on the machine in use.
No constant can say which b that is, so `RowProbe` probes the model's own linear weights here,
at run time, with a few matmuls of seeded random rows: `batch_like` gives the largest batch that
fits, `tiling` a way to run a larger batch as tiles of fitting height
(`toolkit.numerics.tiled_linear`).

The probe only proposes.  Every caller still proves its batched path on real inputs
(`toolkit.numerics.grid_faithful`, `toolkit.numerics.gains.Evaluator`) and falls back to one
point at a time where that check fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.numerics.tiled_linear import Tiling

PROBE_SEED = 0


def decoder_weights(model: Any) -> list[Any]:
    """One weight of each distinct shape among the decoder layers' `torch.nn.Linear` modules (the
    layers a batched decoder path runs on b rows: `embedding_forward.decoder_linears`), smallest first."""
    from toolkit.numerics.embedding_forward import base_model, decoder_linears

    found: dict[tuple[int, ...], Any] = {}
    for module in decoder_linears(getattr(base_model(model), "layers", None) or []):
        found.setdefault(tuple(module.weight.shape), module.weight)
    return sorted(found.values(), key=lambda w: w.numel())


def rounds_like(
    weight: Any, rows: int, reference_rows: int, probe: Any, linear: Callable[[Any, Any], Any] | None = None
) -> bool:
    """True when rows at the start, middle and end of a `rows`-row matmul with `weight` ([out, in])
    (by `linear`, default `torch.nn.functional.linear`) are bitwise those of the same input row as
    the last row of a plain `reference_rows`-row matmul.  `probe` [≥ rows + reference_rows − 1, in]
    holds the input rows (weight's dtype and device)."""
    import torch

    with torch.no_grad():
        inputs = probe[:rows]
        batched = (linear or torch.nn.functional.linear)(inputs, weight)
        filler = probe[rows : rows + reference_rows - 1]
        for p in sorted({0, rows // 2, rows - 1}):
            alone = torch.nn.functional.linear(torch.cat([filler, inputs[p : p + 1]]), weight)[-1]
            if not torch.equal(alone, batched[p]):
                return False
    return True


class RowProbe:
    """The row-class probe of one model against a reference matmul height (`reference_rows`, the
    T rows of the one-point forward): `fits(rows)` and `batch_like(rows_per_point, largest)`."""

    def __init__(self, model: Any, reference_rows: int) -> None:
        self.weights = decoder_weights(model)
        self.reference_rows = reference_rows
        self._probes: dict[int, Any] = {}

    def _probe(self, weight: Any, rows: int) -> Any:
        import torch

        width = int(weight.shape[1])
        have = self._probes.get(width)
        if have is None or have.shape[0] < rows + self.reference_rows:
            generator = torch.Generator().manual_seed(PROBE_SEED)
            sample = torch.randn(rows + self.reference_rows, width, generator=generator, dtype=torch.float32)
            self._probes[width] = have = sample.to(device=weight.device, dtype=weight.dtype)
        return have

    def fits(self, rows: int) -> bool:
        """True when matmuls of `rows` rows round like the reference's on every decoder weight shape
        (the smallest weight first: it screens a candidate cheaply, the others confirm)."""
        return all(rounds_like(w, rows, self.reference_rows, self._probe(w, rows)) for w in self.weights)

    def batch_like(self, rows_per_point: int, largest: int) -> int:
        """The largest b in 2..`largest` whose b·`rows_per_point`-row matmuls `fit`; 1 when none does
        (`largest` itself when the model has no decoder linear layers).  `rows_per_point`: 1 for a
        path whose linear layers see the last row of each point only, T for a full recompute."""
        if largest < 2 or not self.weights:
            return max(1, largest)
        for b in range(largest, 1, -1):
            if self.fits(b * rows_per_point):
                return b
        return 1

    def tiling(self, rows: int, most: int | None = None) -> Tiling | None:
        """A `Tiling` of `rows`-row matmuls whose every row rounds like the reference's on every decoder
        weight (row chunks of the largest fitting height up to `most`, default rows − 1; column tiles
        if they keep the bits, else whole columns), or None: not needed (`rows` fits whole and no
        `most` was given) or none found (no row height of 2 or more fits)."""
        from toolkit.numerics.tiled_linear import Tiling

        if rows < 2 or not self.weights or (most is None and self.fits(rows)):
            return None
        height = self.batch_like(1, min(most or rows - 1, rows - 1))
        if height < 2:
            return None
        for split in (True, False):
            tiling = Tiling(rows, height, split)
            if all(
                rounds_like(w, rows, self.reference_rows, self._probe(w, rows), tiling.linear) for w in self.weights
            ):
                return tiling
        return None
