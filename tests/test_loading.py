"""`toolkit.models.loading.load` loads straight into the task's dtype and device, bit for bit as before.

The old path loaded every model in float32 on the host and then called `.to(dtype)`; the new one
passes `dtype=` and `device_map=` to `from_pretrained`.  The stored safetensors of the packaged
SmolLM2 are float32 (checked from the file's header), so both paths round the same float32
values; these tests prove it on the real model: the state dicts (weights), the float buffers
(RoPE inv_freq) and the logits of one prompt are equal with torch.equal in bfloat16 and float64.

tiny-random-llama now comes from its saved folder: its weights are the ones the in-memory builder
drew (LlamaConfig with the same arguments, seed 0), rebuilt here with plain transformers.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from toolkit.manifest import ModelSpec, Numerics
from toolkit.models.loading import load, prepare_packaged


@pytest.fixture(scope="module")
def fp32_model() -> torch.nn.Module:
    """The packaged model as the old path first loaded it: float32 on the host."""
    return AutoModelForCausalLM.from_pretrained(
        str(prepare_packaged()), dtype=torch.float32, attn_implementation="eager"
    ).eval()


def test_the_packaged_weights_are_stored_in_float32():
    with safe_open(str(prepare_packaged() / "model.safetensors"), "pt") as handle:
        dtypes = {handle.get_slice(key).get_dtype() for key in handle.keys()}
    assert dtypes == {"F32"}


@pytest.mark.parametrize("dtype", ["bfloat16", "float64"])
def test_straight_load_equals_fp32_then_cast_bitwise(dtype: str, fp32_model: torch.nn.Module):
    target = getattr(torch, dtype)
    new, tokenizer, device = load(ModelSpec("smollm2-135m", device="cpu"), Numerics(dtype=dtype))
    old = copy.deepcopy(fp32_model).to(dtype=target)  # the old path: float32 first, then cast
    assert device == torch.device("cpu") and next(new.parameters()).device == device
    a, b = old.state_dict(), new.state_dict()
    assert list(a) == list(b)
    assert all(a[k].dtype == b[k].dtype == target and torch.equal(a[k], b[k]) for k in a)
    old_buffers, new_buffers = dict(old.named_buffers()), dict(new.named_buffers())
    assert list(old_buffers) == list(new_buffers)
    assert all(
        old_buffers[k].dtype == new_buffers[k].dtype and torch.equal(old_buffers[k], new_buffers[k])
        for k in old_buffers
    )
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(old(ids).logits, new(ids).logits)


def test_tiny_random_llama_keeps_its_weights():
    tokenizer = AutoTokenizer.from_pretrained(str(prepare_packaged()))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    expected = LlamaForCausalLM(config).state_dict()
    torch.random.set_rng_state(state)
    rng_before = torch.random.get_rng_state()
    loaded = load(ModelSpec("tiny-random-llama", device="cpu"), Numerics())[0].state_dict()
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # loading draws nothing from the caller's RNG
    assert list(loaded) == list(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
