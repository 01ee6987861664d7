"""Per-layer divergence of a perturbed forward from the unperturbed one, in the model's own format.

`row_divergence(a, b)` compares two stacks of states [R, D] of ONE dtype row by row: L2, L∞ and
relative L2 (float64 arithmetic on exact float64 copies — every float16/bfloat16/float32 value and
every difference of two of them up to float32 is exact in float64), the number of elements whose
bits differ, and ULP distances counted in the stacks' own format (fp16, bf16, fp32 or fp64 ULPs,
`toolkit.numerics.fpunits.ulp_distance`).  The median ULP distance is taken over the
elements that changed (0 when none did): over all D elements it is 0 whenever fewer than half move.

`layer_sweep` runs the measurement shared by exp1.layer_svd and exp3.precision: for each direction
v_k and each ε of a grid, x̃ = x + ε·v_k rounded to the model dtype (`toolkit.numerics.perturb`),
one full forward (`toolkit.numerics.embedding_forward.forward_states`: rows 0..L are `hidden`,
row L+1 the final-norm output f), and the divergence of every row from the unperturbed forward.

`change_scale(x, v)` gives the ε at which rounding to x's format starts to let x + ε·v differ from x
(first coordinate) and where half the coordinates move: ulp(x_i) / (2|v_i|), minimum and median
(ulp: `toolkit.numerics.fpunits.spacing` in x's format).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

METRICS = ("l2", "linf", "rel_l2", "n_changed", "ulp_max", "ulp_median")


def row_divergence(a: Any, b: Any) -> dict[str, Any]:
    """Row-wise measures of b − a for two [R, D] torch tensors of one dtype (numpy arrays [R])."""
    import numpy as np
    import torch

    from toolkit.numerics.fpunits import ulp_distance

    if a.dtype != b.dtype or a.shape != b.shape:
        raise ValueError(
            f"row_divergence needs equal dtypes and shapes, got {a.dtype}{tuple(a.shape)} and {b.dtype}{tuple(b.shape)}"
        )
    x, y = a.detach().double().cpu(), b.detach().double().cpu()
    diff = y - x
    l2 = torch.linalg.vector_norm(diff, dim=-1).numpy()
    norm = torch.linalg.vector_norm(x, dim=-1).numpy()
    ulps = ulp_distance(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1))
    changed = (a != b).reshape(a.shape[0], -1).cpu().numpy()
    median = np.array([float(np.median(row[mask])) if mask.any() else 0.0 for row, mask in zip(ulps, changed)])
    return {
        "l2": l2,
        "linf": diff.abs().amax(dim=-1).numpy(),
        "rel_l2": np.divide(l2, norm, out=np.full_like(l2, np.nan), where=norm > 0),
        "n_changed": changed.sum(axis=-1).astype(np.int64),
        "ulp_max": ulps.max(axis=-1).astype(np.int64),
        "ulp_median": median,
    }


def change_scale(x: Any, direction: Any) -> tuple[float, float]:
    """(ε where the first coordinate of x + ε·d can round away from x, ε where half of them can)."""
    import torch

    from toolkit.numerics.fpunits import spacing

    d = direction.detach().double().cpu().abs()
    ratio = torch.from_numpy(spacing(x)) / (2 * d.clamp_min(torch.finfo(torch.float64).tiny))
    return float(ratio.min()), float(ratio.median())


def layer_sweep(
    model: Any,
    input_ids: Any,
    x: Any,
    directions: Any,
    eps: Any,
    mode: str,
    tick: Callable[[], None] | None = None,
    keep_final: bool = False,
) -> dict[str, Any]:
    """Divergence of every layer for x̃ = x + ε·d over directions [K, D] × eps [E].

    Returns numpy arrays: each of METRICS as [K, E, L+2] (row 0 = input, rows 1..L = decoder layer
    outputs, row L+1 = final norm), `realised_norm` [K, E] ‖x̃ − x‖₂ (float64, exact differences),
    `input_changed` [K, E], `x_tilde` [K, E, D] (float64, exact copies), `base_states` [L+2, D]
    (float64), and with `keep_final` `final_delta` [K, E, D] = f(x̃) − f(x) (float64).
    """
    import numpy as np

    from toolkit.numerics.embedding_forward import forward_states
    from toolkit.numerics.perturb import perturb

    base = _stack(forward_states(model, input_ids, x))
    k, e, rows = directions.shape[0], len(eps), base.shape[0]
    out: dict[str, Any] = {m: np.zeros((k, e, rows), dtype=np.float64) for m in ("l2", "linf", "rel_l2", "ulp_median")}
    out.update({m: np.zeros((k, e, rows), dtype=np.int64) for m in ("n_changed", "ulp_max")})
    out["realised_norm"] = np.zeros((k, e))
    out["input_changed"] = np.zeros((k, e), dtype=np.int64)
    out["x_tilde"] = np.zeros((k, e, x.numel()))
    if keep_final:
        out["final_delta"] = np.zeros((k, e, base.shape[1]))
    for i, direction in enumerate(directions):
        for j, step in enumerate(eps):
            p = perturb(x, direction, float(step), mode)
            moved = _stack(forward_states(model, input_ids, p.x_tilde))
            for name, values in row_divergence(base, moved).items():
                out[name][i, j] = values
            out["realised_norm"][i, j], out["input_changed"][i, j] = p.delta_norm, p.n_changed
            out["x_tilde"][i, j] = p.x_tilde.detach().double().cpu().numpy()
            if keep_final:
                out["final_delta"][i, j] = (moved[-1].double() - base[-1].double()).cpu().numpy()
            if tick is not None:
                tick()
    out["base_states"] = base.detach().double().cpu().numpy()
    return out


def _stack(states: Any) -> Any:
    import torch

    return torch.cat([states.hidden, states.final_norm[None]], dim=0)
