"""Matrix-free JVP/VJP and top-k singular triplets (toolkit.numerics.jacobian) vs the dense Jacobian."""

from __future__ import annotations

import contextlib

import pytest
import torch

from toolkit.manifest import ModelSpec, Numerics
from toolkit.models.loading import load
from toolkit.numerics.jacobian import JacobianOperator, full_jacobian, require_eager, svd_reference, top_singular
from toolkit.numerics.true_fp64 import true_fp64

PROMPT = "The capital of France is"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """Every test of this module runs with one torch thread (see conftest.one_torch_thread)."""


def _load(source: str, dtype: str, attn: str = "eager"):
    model, tokenizer, _ = load(ModelSpec(source, device="cpu"), Numerics(dtype=dtype, attn_implementation=attn))
    return model, tokenizer


@pytest.fixture(scope="module")
def tiny64():
    """The tiny model in true fp64 (a plain .double() model's JVP/VJP are only fp32-accurate:
    the tangents and cotangents pass through RMSNorm's float32 casts too)."""
    model, tokenizer = _load("tiny-random-llama", "float64")
    with true_fp64(model):
        yield JacobianOperator.for_model(model, tokenizer(PROMPT, return_tensors="pt").input_ids)


def test_top_singular_matches_full_svd_tiny_fp64(tiny64):
    op = tiny64
    jac = full_jacobian(op.f, op.x)
    assert jac.shape == (64, 64)
    assert torch.allclose(full_jacobian(op.f, op.x, mode="fwd"), jac, rtol=1e-10, atol=1e-10)
    exact = torch.linalg.svdvals(jac)
    found = top_singular(op, 3, iterations=60, oversample=4, seed=1)
    assert torch.all(found.sigma[:-1] >= found.sigma[1:])
    assert float(abs(found.sigma[0] - exact[0]) / exact[0]) < 1e-4
    assert torch.allclose(found.sigma, exact[:3], rtol=1e-4)
    reference = svd_reference(jac, 3)
    assert torch.allclose(found.right, reference.right, atol=1e-2)  # same sign convention
    assert float(abs(found.right[0] @ reference.right[0])) > 1 - 1e-6
    assert found.residual[0] < 1e-3 and found.iterations == 60 and len(found.residual_history) == 60
    for v, u, s in zip(found.right, found.left, found.sigma):  # J v = σ u by construction
        assert torch.allclose(jac.double() @ v, s * u, atol=1e-8)
        assert float(v[v.abs().argmax()]) > 0


def test_top_singular_is_deterministic_and_stops_at_tol(tiny64):
    a = top_singular(tiny64, 2, iterations=8, seed=3)
    b = top_singular(tiny64, 2, iterations=8, seed=3)
    assert torch.equal(a.sigma, b.sigma) and torch.equal(a.right, b.right)
    early = top_singular(tiny64, 1, iterations=200, tol=1e-3)
    assert early.iterations < 200 and early.residual_history[-1] < 1e-3
    with pytest.raises(ValueError, match="k must be"):
        top_singular(tiny64, 65)


@pytest.mark.parametrize(
    "dtype, exact64, low, high",
    [("float64", True, 0.0, 1e-14), ("float64", False, 1e-13, 1e-6), ("float32", False, 0.0, 1e-6)],
)
def test_jvp_vjp_adjoint_consistency(dtype, exact64, low, high):
    """<u, J v> = <Jᵀ u, v>: |difference| / (‖u‖‖J‖₂‖v‖) within [low, high].

    True fp64: below 1e-14 (measured 4e-17).  fp32: below 1e-6 (measured 2e-8).  The plain
    `.double()` model is only fp32-accurate even here (measured 9e-9): its RMSNorm rounds tangents
    and cotangents to float32, differently in forward and reverse mode."""
    model, tokenizer = _load("tiny-random-llama", dtype)
    with true_fp64(model) if exact64 else contextlib.nullcontext():
        op = JacobianOperator.for_model(model, tokenizer(PROMPT, return_tensors="pt").input_ids)
        g = torch.Generator().manual_seed(0)
        v = torch.randn(4, op.in_dim, generator=g, dtype=torch.float64)
        u = torch.randn(4, op.out_dim, generator=g, dtype=torch.float64)
        v, u = v.to(op.x.dtype).double(), u.to(op.x.dtype).double()  # exactly representable in the model dtype
        jv, jtu = op.jvp(v), op.vjp(u)
        norm = float(torch.linalg.matrix_norm(full_jacobian(op.f, op.x).double(), ord=2))
        worst = max(
            abs(float(u[i] @ jv[i]) - float(jtu[i] @ v[i])) / (float(u[i].norm() * v[i].norm()) * norm)
            for i in range(4)
        )
        assert low <= worst <= high
        single = JacobianOperator(op.f, op.x, batched=False)  # vmapped and one-by-one products agree
        assert torch.allclose(single.jvp(v[:2]), jv[:2], rtol=1e-5, atol=1e-5 * norm)
        assert op.products == {"jvp": 4, "vjp": 4}


def test_double_vjp_jvp_equals_forward_mode_in_true_fp64(tiny64):
    g = torch.Generator().manual_seed(5)
    v = torch.randn(6, tiny64.in_dim, generator=g, dtype=torch.float64)
    forward = tiny64.jvp(v)
    for batched in (True, False):
        reverse = JacobianOperator(tiny64.f, tiny64.x, batched=batched, jvp_mode="double_vjp").jvp(v)
        assert float((reverse - forward).abs().max() / forward.abs().max()) < 1e-13
    with pytest.raises(ValueError, match="jvp_mode"):
        JacobianOperator(tiny64.f, tiny64.x, jvp_mode="fd")


def test_sdpa_is_refused_with_a_clear_error():
    model, tokenizer = _load("tiny-random-llama", "float32", attn="sdpa")
    with pytest.raises(ValueError, match="attn_implementation 'eager'"):
        require_eager(model)
    with pytest.raises(ValueError, match="sdpa"):
        JacobianOperator.for_model(model, tokenizer(PROMPT, return_tensors="pt").input_ids)


@pytest.mark.slow
def test_packaged_model_sigma1_matches_full_jacobian_fp32():
    """SmolLM2-135M, fp32, D = 576: matrix-free σ₁ vs svdvals of the dense Jacobian (short prompt)."""
    model, tokenizer = _load("smollm2-135m", "float32")
    op = JacobianOperator.for_model(model, tokenizer("Paris is", return_tensors="pt").input_ids)
    found = top_singular(op, 1, iterations=12, oversample=1)
    exact = torch.linalg.svdvals(full_jacobian(op.f, op.x, chunk_size=96).double())
    assert op.in_dim == 576
    assert float(abs(found.sigma[0] - exact[0]) / exact[0]) < 1e-4
    assert found.residual[0] < 1e-3
