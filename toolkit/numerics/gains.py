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
from typing import Any

BATCH_CHECK_SAMPLE = 4  # rows of the first batch compared with f one at a time


class Evaluator:
    """f on many inputs: `rows(xs [N, D])` → [N, M] in f's dtype.

    Without `batched` (or batch_size 1): f on one input at a time.  With it: padded blocks of
    `batch_size` rows through the batched F, but only after the first block proved itself: its
    rows at BATCH_CHECK_SAMPLE spread positions must equal f of the same inputs in every bit,
    else that block and everything after go through f one at a time.  `note` says which ran.
    """

    def __init__(self, f: Callable[[Any], Any], batched: Callable[[Any], Any] | None = None, batch_size: int = 1):
        self.f = f
        self.batched = batched if batch_size > 1 else None
        self.batch_size = batch_size if self.batched is not None else 1
        self.checked = False
        self.note = "one forward per input (batch size 1)"

    def rows(self, xs: Any, progress: Callable[[int], None] | None = None) -> Any:
        """f of every row of xs, stacked; `progress(n)` after every n rows done."""
        import torch

        out = []
        size = self.batch_size  # a failed check sets it to 1 for later calls; this call keeps its blocks
        with torch.no_grad():
            for start in range(0, xs.shape[0], size):
                block = xs[start : start + size]
                out.append(self._block(block))
                if progress is not None:
                    progress(block.shape[0])
        return torch.cat(out)

    def _block(self, block: Any) -> Any:
        import torch

        from toolkit.numerics.grid import pad_rows

        if self.batched is None:
            return torch.stack([self.f(x) for x in block])
        together = self.batched(pad_rows(block, self.batch_size))[: block.shape[0]]
        if not self.checked:
            self.checked = True
            if not self._same(block, together):
                self.batched, self.batch_size = None, 1
                return torch.stack([self.f(x) for x in block])
        return together

    def _same(self, block: Any, together: Any) -> bool:
        import numpy as np

        picks = sorted(set(np.linspace(0, block.shape[0] - 1, BATCH_CHECK_SAMPLE).round().astype(int).tolist()))
        alone = {i: self.f(block[i]) for i in picks}
        if all(bool((alone[i] == together[i]).all()) for i in picks):
            self.note = (
                f"batches of {self.batch_size} (full recompute), bitwise equal to one input at a time "
                f"on {len(picks)} rows of the first batch"
            )
            return True
        worst = max(float((alone[i].double() - together[i].double()).abs().max()) for i in picks)
        self.note = (
            f"one forward per input: batches of {self.batch_size} differed (max |Δ| {worst:.3g}) "
            f"on {len(picks)} rows of the first batch"
        )
        return False


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
