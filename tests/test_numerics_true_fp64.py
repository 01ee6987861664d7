"""True fp64 (toolkit.numerics.true_fp64): what is patched, that it is undone, and why it matters.

The finite-difference gain along the top right singular vector, ‖f(x+εv₁)−f(x)‖/‖realised δ‖,
must converge to σ₁ as ε shrinks.  In true fp64 its error falls with ε (truncation error ∝ ε)
down to ε ≈ 1e-8; in the plain `.double()` model RMSNorm rounds to float32, so the error stops
falling near ε ≈ 1e-5 and then grows (rounding error ∝ 1/ε).
"""

from __future__ import annotations

import pytest
import torch

from toolkit.manifest import ModelSpec, Numerics
from toolkit.models.loading import load
from toolkit.numerics.embedding_forward import forward_states
from toolkit.numerics.jacobian import JacobianOperator, top_singular
from toolkit.numerics.perturb import perturb
from toolkit.numerics.true_fp64 import TRUE_FP64_ATTENTION, true_fp64

PROMPT = "The capital of France is"
EPS = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """Every test of this module runs with one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def tiny64():
    model, tokenizer, _ = load(
        ModelSpec("tiny-random-llama", device="cpu"), Numerics(dtype="float64", attn_implementation="eager")
    )
    return model, tokenizer(PROMPT, return_tensors="pt").input_ids


def _relative_errors(model, ids) -> list[float]:
    op = JacobianOperator.for_model(model, ids)
    top = top_singular(op, 1, iterations=40, oversample=2)
    sigma, v = float(top.sigma[0]), top.right[0]
    with torch.no_grad():
        base = op.f(op.x).double()
        errors = []
        for eps in EPS:
            p = perturb(op.x, v, eps, "fp64_then_round")
            gain = float(torch.linalg.vector_norm(op.f(p.x_tilde).double() - base)) / p.delta_norm
            errors.append(abs(gain - sigma) / sigma)
    return errors


def test_finite_differences_converge_in_true_fp64_and_stall_in_plain_double(tiny64):
    model, ids = tiny64
    plain = _relative_errors(model, ids)
    with true_fp64(model):
        true = _relative_errors(model, ids)
    by_eps = dict(zip(EPS, true))
    # true fp64: the error falls at least 5x per decade from 1e-2 down to 1e-8, ending below 1e-7
    assert all(later < earlier / 5 for earlier, later in zip(true[:7], true[1:7])), true
    assert by_eps[1e-8] < 1e-7
    # plain .double(): below ε = 1e-5 the error no longer falls; at 1e-8 it is 1e4+ times the true one
    plain_by_eps = dict(zip(EPS, plain))
    assert min(plain_by_eps[e] for e in (1e-6, 1e-7, 1e-8, 1e-9)) > 1e-4, plain
    assert plain_by_eps[1e-9] > plain_by_eps[1e-7] > plain_by_eps[1e-6]
    assert plain_by_eps[1e-8] > 1e4 * by_eps[1e-8]


def test_patches_every_rmsnorm_rope_and_attention_then_restores(tiny64):
    model, ids = tiny64
    norms = [name for name, m in model.named_modules() if "RMSNorm" in type(m).__name__]
    assert len(norms) == 2 * model.config.num_hidden_layers + 1
    before = forward_states(model, ids)
    with true_fp64(model) as patched:
        assert [p.split(" ")[0] for p in patched[: len(norms)]] == norms
        assert any(p.startswith("model.rotary_emb") and "float64" in p for p in patched)
        assert model.config._attn_implementation == TRUE_FP64_ATTENTION
        inside = forward_states(model, ids)
        cos, _ = model.model.rotary_emb(inside.hidden[None, None, :1], torch.arange(4)[None])
        assert cos.dtype == torch.float64
    after = forward_states(model, ids)
    assert model.config._attn_implementation == "eager"
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert torch.equal(after.final_norm, before.final_norm) and torch.equal(after.logits, before.logits)
    # the patched model is the same function up to float32-level rounding, but not bitwise
    diff = float((inside.final_norm - before.final_norm).norm() / before.final_norm.norm())
    assert 0 < diff < 1e-5


def test_refuses_a_model_that_is_not_float64():
    model, _, _ = load(
        ModelSpec("tiny-random-llama", device="cpu"), Numerics(dtype="float32", attn_implementation="eager")
    )
    with pytest.raises(ValueError, match="float64"):
        with true_fp64(model):
            pass
    assert all("forward" not in m.__dict__ for m in model.modules())
