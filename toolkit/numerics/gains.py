"""Finite-difference gains of a function along directions, with the realised perturbation.

L̂(ε; d) = ‖f(x̃) − f(x)‖ / ‖x̃ − x‖ with x̃ = x + ε·d rounded to x's dtype as `mode` says
(`toolkit.numerics.perturb`).  The denominator is the *realised* perturbation (upstream divided by
the intended ε, which measures rounding once most coordinates stop moving); the norms are of
float64 differences of the native outputs.  A gain is NaN where x̃ == x (nothing to divide by) and
0 where the input moved but f did not change in any bit.  Shared by exp2.lipschitz (f = the model
up to the final norm) and exp5.module_lipschitz (f = one module), so both measure the same thing.

Every perturbed input is evaluated by an `Evaluator`: f one input at a time, or — when a
batched F is given and a run-time check on the first batch of real inputs proved its rows
bitwise equal to f — in padded batches of a fixed size, the shape the check validated.  Results
are then bitwise those of the per-point loop; `Evaluator.note` says which path ran.

`random_directions(n, dim, seed)` draws the seeded random unit directions both use (float64,
CPU generator, so the same seed gives the same directions on every device).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.numerics.row_classes import RowProbe

BATCH_CHECK_SAMPLE = 4  # rows of the first batch compared with f one at a time


class Evaluator:
    """f on many inputs: `rows(xs [N, D])` → [N, M] in f's dtype.

    Without a batched F (or batch_size 1): f on one input at a time.  With them: padded blocks
    through the first batched F that proves itself on the first block — its rows at
    BATCH_CHECK_SAMPLE spread positions must equal f of the same inputs in every bit — tried in order
    (`shared`, the last rows behind a shared prefix, then `batched`, a full recompute of B inputs);
    when none does, that block and everything after go through f one at a time.  Each candidate's
    block size is `batch_size`, or with a `probe` (`toolkit.numerics.row_classes.RowProbe` against
    f's T rows) the largest up to it whose matmuls round like f's on this machine (rows per input:
    1 for `shared`, T for `batched`); a candidate left with blocks of 1 is not tried.  `note` says
    which ran.
    """

    def __init__(
        self,
        f: Callable[[Any], Any],
        batched: Callable[[Any], Any] | None = None,
        batch_size: int = 1,
        shared: Callable[[Any], Any] | None = None,
        probe: RowProbe | None = None,
    ):
        self.f = f
        self.candidates: list[tuple[str, Callable[[Any], Any], int]] = []
        self.lowered: list[str] = []
        if batch_size > 1:
            for label, fn, rows_per_input in (
                ("last row only behind the shared prefix", shared, 1),
                ("full recompute", batched, probe.reference_rows if probe else 1),
            ):
                size = probe.batch_like(rows_per_input, batch_size) if probe and fn else batch_size
                if fn is not None and size > 1:
                    self.candidates.append((label, fn, size))
                if fn is not None and size < batch_size:
                    self.lowered.append(f"{label}: the row-class probe allowed {size} of {batch_size}")
        self.batched: Callable[[Any], Any] | None = None
        self.batch_size = 1
        self.checked = False
        self.note = "one forward per input (batch size 1)" + self._lowered()

    def _lowered(self) -> str:
        return "".join(f"; {line}" for line in self.lowered)

    def rows(self, xs: Any, progress: Callable[[int], None] | None = None) -> Any:
        """f of every row of xs, stacked; `progress(n)` after every n rows done."""
        import torch

        from toolkit.numerics.grid import pad_rows

        out = []
        start = 0
        with torch.no_grad():
            while start < xs.shape[0]:
                if not self.checked and self.candidates:
                    self.checked = True
                    values = self._first_block(xs[start:])
                elif self.batched is None:
                    values = self.f(xs[start])[None]
                else:
                    block = xs[start : start + self.batch_size]
                    values = self.batched(pad_rows(block, self.batch_size))[: block.shape[0]]
                out.append(values)
                start += values.shape[0]
                if progress is not None:
                    progress(values.shape[0])
        return torch.cat(out)

    def _first_block(self, rest: Any) -> Any:
        """The first block of `rest` through the first candidate that matches f bitwise on the sample
        (its own block size), else f of rest's inputs up to the last sampled one, one at a time."""
        import numpy as np
        import torch

        from toolkit.numerics.grid import pad_rows

        alone: dict[int, Any] = {}
        refused: list[tuple[str, int, float]] = []
        for label, fn, size in self.candidates:
            block = rest[:size]
            picks = sorted(set(np.linspace(0, block.shape[0] - 1, BATCH_CHECK_SAMPLE).round().astype(int).tolist()))
            for i in picks:
                if i not in alone:
                    alone[i] = self.f(block[i])
            together = fn(pad_rows(block, size))[: block.shape[0]]
            if all(bool((alone[i] == together[i]).all()) for i in picks):
                self.batched, self.batch_size = fn, size
                self.note = (
                    f"batches of {size} ({label}), bitwise equal to one input at a time "
                    f"on {len(picks)} rows of the first batch"
                )
                self.note += "".join(f"; {name} differed (max |Δ| {worst:.3g})" for name, _, worst in refused)
                self.note += self._lowered()
                return together
            refused.append(
                (label, size, max(float((alone[i].double() - together[i].double()).abs().max()) for i in picks))
            )
        if len(refused) == 1:
            why = f"max |Δ| {refused[0][2]:.3g}"
        else:
            why = ", ".join(f"{name}: max |Δ| {worst:.3g}" for name, _, worst in refused)
        sizes = "/".join(str(b) for b in sorted({b for _, b, _ in refused}, reverse=True))
        self.note = (
            f"one forward per input: batches of {sizes} differed ({why}) on {BATCH_CHECK_SAMPLE} rows "
            "of the first batch" + self._lowered()
        )
        # the block as far as it was sampled, one input at a time: the sampled inputs are not computed twice
        return torch.stack([alone[i] if i in alone else self.f(rest[i]) for i in range(max(alone) + 1)])


def finite_difference_gains(
    op: Any,
    base: Any,
    directions: Any,
    eps: Any,
    mode: str,
    tick: Callable[[], None] | None = None,
    evaluator: Evaluator | None = None,
) -> dict[str, Any]:
    """Gains along each of `directions` [N, D] at each ε of `eps` [E] for `op` (a
    `toolkit.numerics.jacobian.JacobianOperator`: op.x the point, op.f the function) with
    base = op.f(op.x) in float64, f evaluated by `evaluator` (default: one input at a time).
    Returns numpy `gain` [N,E] float64 (NaN: x̃ == x), `changed` [N,E] int64 elements of x that
    moved, `realised` [N,E] float64 ‖x̃ − x‖.  `tick` is called once per (direction, ε)."""
    import numpy as np
    import torch

    from toolkit.numerics.perturb import perturb

    evaluator = evaluator or Evaluator(op.f)
    shape = (directions.shape[0], len(eps))
    gain, realised = np.full(shape, np.nan), np.zeros(shape)
    changed = np.zeros(shape, dtype=np.int64)
    moved_at: list[tuple[int, int]] = []
    inputs = []
    for i, direction in enumerate(directions):
        for j, step in enumerate(eps):
            p = perturb(op.x, direction, float(step), mode)
            changed[i, j], realised[i, j] = p.n_changed, p.delta_norm
            if p.delta_norm > 0:
                moved_at.append((i, j))
                inputs.append(p.x_tilde)
            elif tick is not None:
                tick()

    progress: Callable[[int], None] | None = None
    if tick is not None:
        each = tick

        def progress(n: int) -> None:
            for _ in range(n):
                each()

    outputs = evaluator.rows(torch.stack(inputs), progress) if inputs else []
    for (i, j), out in zip(moved_at, outputs):
        gain[i, j] = float(torch.linalg.vector_norm(out.double() - base)) / realised[i, j]
    return {"gain": gain, "changed": changed, "realised": realised}


def random_directions(n: int, dim: int, seed: int) -> Any:
    """[n, dim] float64 unit vectors, Gaussian from a CPU generator seeded with `seed`."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    return directions / torch.linalg.vector_norm(directions, dim=1, keepdim=True)
