"""Perturb one token's embedding with explicit rounding, and measure what really changed.

`perturb(x, direction, eps, mode)` forms x̃ ≈ x + eps·direction in the model dtype in one of two
stated ways:

* `model_dtype`     — the plain PyTorch expression `x + eps * d` with d cast to x's dtype, as the
                      upstream scripts wrote it.  PyTorch rounds the Python float eps to the
                      tensor's compute type before multiplying (fp32 for fp32/bf16/fp16 tensors),
                      rounds the product, then rounds the sum: up to three roundings, so nearby
                      eps values can give the same x̃.
* `fp64_then_round` — x + eps·d computed in float64 (eps and d as float64) and rounded once to the
                      model dtype: the closest the model dtype can come to the intended point.

Below about ulp(x_i)/|d_i| a coordinate does not move at all, so the *intended* step eps·‖d‖ is
not what the model sees.  The result carries the *realised* perturbation δ = x̃ − x, computed in
float64 and checked to be exact (TwoSum error zero), its norm, how many elements changed, and
their distances in ULPs of the model dtype (`toolkit.numerics.fpunits.ulp_distance`).  Finite-difference
gains should divide by ‖δ‖.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from toolkit.numerics.fpunits import ulp_distance

#: The name tests and older callers use for `toolkit.numerics.fpunits.ulp_distance` on tensors.
ulp_distance_tensor = ulp_distance

MODES = ("model_dtype", "fp64_then_round")


@dataclass
class Perturbation:
    """x̃ and the realised change; `delta` is float64 and exactly x̃ − x when `exact` is true."""

    x_tilde: Any  # [D] model dtype
    delta: Any  # [D] float64, x̃ − x
    delta_norm: float  # ‖x̃ − x‖₂ (float64)
    intended_norm: float  # ‖eps·d‖₂ in float64
    n_changed: int  # elements with x̃_i != x_i
    ulp_max: int  # largest |x̃_i − x_i| in ULPs of the model dtype
    ulp_mean: float  # mean over all D elements
    exact: bool  # the float64 subtraction x̃ − x was exact for every element
    eps: float
    mode: str


def perturb(x: Any, direction: Any, eps: float, mode: str = "fp64_then_round") -> Perturbation:
    """x̃ = x + eps·direction in x's dtype, rounded as `mode` says (see the module docstring)."""
    import torch

    if mode not in MODES:
        raise ValueError(f"perturbation mode must be one of {', '.join(MODES)}, got {mode!r}")
    if x.shape != direction.shape:
        raise ValueError(f"x and direction shapes differ: {tuple(x.shape)} vs {tuple(direction.shape)}")
    x = x.detach()
    direction = direction.detach().to(x.device)
    if mode == "model_dtype":
        x_tilde = x + eps * direction.to(x.dtype)
    else:
        x_tilde = (x.double() + float(eps) * direction.double()).to(x.dtype)
    return realised(
        x,
        x_tilde,
        eps=eps,
        mode=mode,
        intended_norm=abs(float(eps)) * float(torch.linalg.vector_norm(direction.double())),
    )


def realised(
    x: Any, x_tilde: Any, eps: float = float("nan"), mode: str = "given", intended_norm: float = float("nan")
) -> Perturbation:
    """The realised change from x to x̃ (both in one dtype): δ, ‖δ‖, changed count, ULP stats."""
    import torch

    if x.dtype != x_tilde.dtype:
        raise ValueError(f"x and x_tilde must share a dtype, got {x.dtype} and {x_tilde.dtype}")
    a, b = x_tilde.detach().double(), x.detach().double()
    delta = a - b
    # TwoSum (Knuth): s + err == a + (-b) exactly; the subtraction was exact iff err == 0.
    bb = delta - a
    err = (a - (delta - bb)) + (-b - bb)
    exact = bool(torch.all((err == 0) | ~torch.isfinite(delta)))
    ulps = ulp_distance(x, x_tilde)
    return Perturbation(
        x_tilde=x_tilde,
        delta=delta,
        delta_norm=float(torch.linalg.vector_norm(delta)),
        intended_norm=intended_norm,
        n_changed=int((x_tilde != x).sum()),
        ulp_max=int(ulps.max()) if ulps.size else 0,
        ulp_mean=float(ulps.mean()) if ulps.size else 0.0,
        exact=exact,
        eps=float(eps),
        mode=mode,
    )
