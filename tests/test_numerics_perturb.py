"""Perturbations with explicit rounding (toolkit.numerics.perturb)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from toolkit.numerics.perturb import perturb, realised, ulp_distance_tensor


def _vectors(dtype=torch.float32, n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, generator=g, dtype=torch.float64) * 0.05).to(dtype)
    d = torch.randn(n, generator=g, dtype=torch.float64)
    return x, d / torch.linalg.vector_norm(d)


@pytest.mark.parametrize("mode", ["fp64_then_round", "model_dtype"])
@pytest.mark.parametrize("eps", [1e-2, 1e-6, 3e-9])
def test_realised_perturbation_is_exactly_x_tilde_minus_x(mode, eps):
    x, d = _vectors()
    p = perturb(x, d, eps, mode)
    assert p.x_tilde.dtype == torch.float32 and p.delta.dtype == torch.float64 and p.exact
    for a, b, delta in zip(x.tolist(), p.x_tilde.tolist(), p.delta.tolist()):
        assert Fraction(b) - Fraction(a) == Fraction(delta)  # exact rational arithmetic
    assert p.n_changed == int((p.x_tilde != x).sum())
    assert p.delta_norm == pytest.approx(
        float(np.linalg.norm(p.x_tilde.double().numpy() - x.double().numpy())), rel=1e-15
    )
    assert p.intended_norm == pytest.approx(eps, rel=1e-12)


def test_modes_are_the_stated_expressions_and_differ():
    x, d = _vectors()
    differs = False
    for eps in np.geomspace(1e-8, 1e-1, 15):
        plain = perturb(x, d, float(eps), "model_dtype").x_tilde
        once = perturb(x, d, float(eps), "fp64_then_round").x_tilde
        assert torch.equal(plain, x + float(eps) * d.float())
        assert torch.equal(once, (x.double() + float(eps) * d).float())
        differs |= not torch.equal(plain, once)
    assert differs, "three roundings and one rounding should disagree somewhere"


def test_sub_ulp_steps_do_not_move_the_input_and_ulp_counts():
    x, d = _vectors()
    tiny = perturb(x, d, 1e-14, "fp64_then_round")
    assert tiny.n_changed == 0 and tiny.delta_norm == 0.0 and tiny.ulp_max == 0
    small = perturb(x, d, 1e-7, "fp64_then_round")
    assert 0 < small.n_changed < x.numel()  # some coordinates move, the large ones do not
    assert small.delta_norm != pytest.approx(1e-7, rel=1e-3)  # realised != intended
    one = torch.zeros_like(x)
    one[3] = 1.0
    step = float(np.spacing(np.float32(abs(float(x[3])))))
    p = perturb(x, one * (1 if x[3] > 0 else -1), step, "fp64_then_round")
    assert p.n_changed == 1 and p.ulp_max == 1 and p.ulp_mean == pytest.approx(1 / x.numel())


def test_bfloat16_and_float64_ulps_and_bad_input():
    a = torch.tensor([1.0, -1.0, 0.5], dtype=torch.bfloat16)
    b = torch.tensor([1.0078125, -1.015625, 0.5], dtype=torch.bfloat16)  # +1 ulp, 2 ulps, 0
    assert ulp_distance_tensor(a, b).tolist() == [1, 2, 0]
    x, d = _vectors(torch.float64)
    p = perturb(x, d, 1e-9, "fp64_then_round")
    assert p.exact and p.n_changed == x.numel()
    assert realised(x, x).n_changed == 0
    with pytest.raises(ValueError, match="mode"):
        perturb(x, d, 1e-3, "fp32")
    with pytest.raises(ValueError, match="shapes"):
        perturb(x, d[:-1], 1e-3)
