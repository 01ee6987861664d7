"""Forward passes from input embeddings (toolkit.numerics.embedding_forward) on the tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from toolkit.manifest import ModelSpec, Numerics
from toolkit.models.loading import load
from toolkit.numerics.embedding_forward import decoder_layer_names, forward_states, make_f, with_row

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer, _ = load(
        ModelSpec("tiny-random-llama", device="cpu"), Numerics(dtype="float32", attn_implementation="eager")
    )
    return model, tokenizer(PROMPT, return_tensors="pt").input_ids


def test_layer_indexing_matches_output_hidden_states(tiny):
    model, ids = tiny
    states = forward_states(model, ids)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False, logits_to_keep=1)
    hs = [h[0, -1] for h in out.hidden_states]
    layers = model.config.num_hidden_layers
    assert states.hidden.shape == (layers + 1, model.config.hidden_size) and len(hs) == layers + 1
    for i in range(layers):  # [0] input embedding, [1..L-1] decoder layer outputs: identical
        assert torch.equal(states.hidden[i], hs[i])
    # transformers' last entry is already post-norm; ours keeps the raw residual at [L]
    assert torch.equal(hs[layers], states.final_norm)
    assert not torch.allclose(states.hidden[layers], states.final_norm)
    assert torch.equal(states.last_residual, states.hidden[layers])
    assert torch.equal(states.hidden[0], model.get_input_embeddings()(ids)[0, -1])
    assert torch.equal(states.logits, out.logits[0, -1])
    assert decoder_layer_names(model) == [f"model.layers.{i}" for i in range(layers)]


def test_f_is_the_final_norm_output_and_replaces_only_one_row(tiny):
    model, ids = tiny
    f, x = make_f(model, ids)
    with torch.no_grad():
        assert torch.equal(f(x), forward_states(model, ids).final_norm)
        moved = x + 0.05
        assert torch.equal(f(moved), forward_states(model, ids, x=moved).final_norm)
        assert not torch.equal(f(moved), f(x))
    embeds = torch.zeros(1, 4, 3)
    replaced = with_row(embeds, torch.ones(3), -1)
    assert replaced[0, :3].abs().sum() == 0 and (replaced[0, 3] == 1).all() and embeds.abs().sum() == 0
    assert forward_states(model, ids, position=1).position == 1
    with pytest.raises(ValueError, match="outside a prompt"):
        forward_states(model, ids, position=ids.shape[1])
