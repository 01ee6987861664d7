"""toolkit.numerics.spectrum and last_row: σ against an independent full-Jacobian SVD, bits of the one-token path.

The known answers come from plain transformers in the test: `torch.autograd.functional.jacobian`
of the decoder stack's last hidden state (all T rows recomputed, no KV cache) with respect to the
last token's embedding, then a float64 SVD.  Tolerance 1e-6 relative on σ₁ (the issue's bar; the
other σ_i to 1e-6·σ₁, as fp32 rounding of J scales with ‖J‖): the
two sides differentiate the same fp32 function by different AD orders (reverse, vectorised, for
the reference; Krylov basis + forward-mode Rayleigh–Ritz here), which differ by ~5e-7 on SmolLM2.
"""

from __future__ import annotations

import pytest
import torch

from toolkit.manifest import ModelSpec, Numerics
from toolkit.models.loading import load
from toolkit.numerics.embedding_forward import make_f
from toolkit.numerics.last_row import last_row_f
from toolkit.numerics.spectrum import EXACT_MAX_DIM, top_singular_fast

PROMPT = "The capital of France is"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """One torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def smollm2():
    model, tokenizer, _ = load(
        ModelSpec("smollm2-135m", device="cpu"), Numerics(dtype="float32", attn_implementation="eager")
    )
    return model, tokenizer


def _reference(model, ids) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ descending, right singular vectors as rows) of the full Jacobian, by plain transformers."""
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)[0]

    def f(x: torch.Tensor) -> torch.Tensor:
        rows = torch.cat([embeds[:-1], x[None]])[None]
        return model.model(inputs_embeds=rows, use_cache=False).last_hidden_state[0, -1]

    jacobian = torch.autograd.functional.jacobian(f, embeds[-1].clone(), vectorize=True)
    _, sigma, vt = torch.linalg.svd(jacobian.double())
    return sigma, vt


def _check(found, sigma, vt, k: int) -> None:
    assert abs(found.sigma[0] - sigma[0]) / sigma[0] < 1e-6, (found.sigma, sigma[:k])
    # fp32 rounding of J is relative to ‖J‖ = σ₁, so every σ_i is held to 1e-6·σ₁
    assert torch.all((found.sigma - sigma[:k]).abs() < 1e-6 * sigma[0]), (found.sigma, sigma[:k])
    overlap = (found.right @ vt[:k].T).diagonal().abs()  # the same vectors up to sign
    assert torch.all(overlap > 1 - 1e-6), overlap
    assert float(found.residual.max()) < 1e-4  # fp32 products: ~2e-6 measured


def test_smollm2_sigma_equals_the_full_jacobian_svd(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    sigma, vt = _reference(model, ids)
    op, found = top_singular_fast(model, ids, 5)
    assert op.in_dim == 576 > EXACT_MAX_DIM
    assert found.solver == "krylov/last_row" and 1 <= found.iterations == len(found.residual_history) <= 20
    _check(found, sigma, vt, 5)
    with torch.no_grad():
        assert torch.equal(
            op.f(op.x), model.model(inputs_embeds=model.get_input_embeddings()(ids)).last_hidden_state[0, -1]
        )


def test_the_one_token_path_reproduces_the_full_forward_bits(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer("Numbers: 1, 2, 3, 4,", return_tensors="pt").input_ids
    f, x = make_f(model, ids)
    cheap = last_row_f(model, ids, f, x)
    assert cheap.g is not None, cheap.reason
    with torch.no_grad():
        plain = model.model(inputs_embeds=model.get_input_embeddings()(ids), use_cache=False).last_hidden_state[0, -1]
        assert torch.equal(cheap.g(x), plain)


def test_a_one_token_prompt_falls_back_to_f_and_says_why(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer("Paris", return_tensors="pt").input_ids[:, :1]
    sigma, vt = _reference(model, ids)
    _, found = top_singular_fast(model, ids, 3)
    assert found.solver == "krylov/full" and found.solver_note == "a one-token prompt has no prefix to cache"
    _check(found, sigma, vt, 3)


def test_a_wide_model_takes_krylov_and_matches_the_full_svd():
    """D = 2048 (a random one-layer Llama): the Krylov route the benchmark's second size takes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=2048,
        intermediate_size=1024,
        num_hidden_layers=1,
        num_attention_heads=16,
        num_key_value_heads=4,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    sigma, vt = _reference(model, ids)
    _, found = top_singular_fast(model, ids, 5)
    assert found.solver == "krylov/last_row"
    _check(found, sigma, vt, 5)


def test_small_models_take_the_dense_last_row_jacobian():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.models import tiny_random

    folder = tiny_random.prepare("tiny-random-llama")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    ids = AutoTokenizer.from_pretrained(folder)(PROMPT, return_tensors="pt").input_ids
    sigma, vt = _reference(model, ids)
    op, found = top_singular_fast(model, ids, 3)
    assert op.in_dim == 64 and found.solver == "exact/last_row" and found.residual_history == []
    _check(found, sigma, vt, 3)
