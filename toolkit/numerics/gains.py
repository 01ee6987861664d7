"""Finite-difference gains of a function along directions, with the realised perturbation.

L̂(ε; d) = ‖f(x̃) − f(x)‖ / ‖x̃ − x‖ with x̃ = x + ε·d rounded to x's dtype as `mode` says
(`toolkit.numerics.perturb`).  The denominator is the *realised* perturbation (upstream divided by
the intended ε, which measures rounding once most coordinates stop moving); the norms are of
float64 differences of the native outputs.  A gain is NaN where x̃ == x (nothing to divide by) and
0 where the input moved but f did not change in any bit.  Shared by exp2.lipschitz (f = the model
up to the final norm) and exp5.module_lipschitz (f = one module), so both measure the same thing.

`random_directions(n, dim, seed)` draws the seeded random unit directions both use (float64,
CPU generator, so the same seed gives the same directions on every device).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def finite_difference_gains(
    op: Any, base: Any, directions: Any, eps: Any, mode: str, tick: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Gains along each of `directions` [N, D] at each ε of `eps` [E] for `op` (a
    `toolkit.numerics.jacobian.JacobianOperator`: op.x the point, op.f the function) with
    base = op.f(op.x) in float64.  Returns numpy `gain` [N,E] float64 (NaN: x̃ == x),
    `changed` [N,E] int64 elements of x that moved, `realised` [N,E] float64 ‖x̃ − x‖.
    `tick` is called once per (direction, ε)."""
    import numpy as np
    import torch

    from toolkit.numerics.perturb import perturb

    shape = (directions.shape[0], len(eps))
    gain, realised = np.full(shape, np.nan), np.zeros(shape)
    changed = np.zeros(shape, dtype=np.int64)
    for i, direction in enumerate(directions):
        for j, step in enumerate(eps):
            p = perturb(op.x, direction, float(step), mode)
            changed[i, j], realised[i, j] = p.n_changed, p.delta_norm
            if p.delta_norm > 0:
                with torch.no_grad():
                    moved = op.f(p.x_tilde).double()
                gain[i, j] = float(torch.linalg.vector_norm(moved - base)) / p.delta_norm
            if tick is not None:
                tick()
    return {"gain": gain, "changed": changed, "realised": realised}


def random_directions(n: int, dim: int, seed: int) -> Any:
    """[n, dim] float64 unit vectors, Gaussian from a CPU generator seeded with `seed`."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    return directions / torch.linalg.vector_norm(directions, dim=1, keepdim=True)
