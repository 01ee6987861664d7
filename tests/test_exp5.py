"""exp5.module_lipschitz end to end on the tiny random Llama, plus exact-name hooks on the packaged model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REPO, run_cli, submit_campaign

MANIFEST = """\
campaign: modules-tiny
output: {output}
model: {{source: tiny-random-llama, dtype: float32, attn_implementation: eager}}
prompts: ["The capital of France is"]
experiments:
  - name: exp5.module_lipschitz
    id: modules
    params: {{top_k: 1, iterations: 20, eps: [1.0e-3], seed: 1}}
"""
MODULES = ["input_layernorm", "self_attn", "post_attention_layernorm", "mlp"]


def _load(name, dtype="float32"):
    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models.loading import load

    return load(ModelSpec(name, device="cpu"), Numerics(dtype=dtype, attn_implementation="eager"))


def test_module_sigma_matches_the_full_jacobian_svd(tmp_path, one_torch_thread):
    from toolkit.numerics.hooks import capture_calls
    from toolkit.numerics.jacobian import full_jacobian
    from toolkit.numerics.modules import layer_module_names, module_function

    campaign = submit_campaign(tmp_path, MANIFEST, "modules.yaml")
    folder = campaign.folder
    with campaign.store() as store:
        (run,) = store.runs("exp5.module_lipschitz")
        names = [[n.decode() for n in row] for row in run["module_names"]]
        assert names == [[f"model.layers.{i}.{m}" for m in MODULES] for i in range(2)]
        assert run.attrs["all_faithful"] and run["prompts/000/faithful"].all()
        sigma, gain = run["prompts/000/sigma"], run["prompts/000/gain_v1"]
        assert sigma.shape == (2, 4, 1) and np.all(sigma > 0)
        assert run["prompts/000/right_vectors"].shape == (2, 4, 1, 64)

        model, tokenizer, _ = _load("tiny-random-llama")
        ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
        flat = [n for row in layer_module_names(model, MODULES) for n in row]
        with torch.no_grad(), capture_calls(model, flat) as calls:
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
        modules = dict(model.named_modules())
        for i in range(2):
            for j, name in enumerate(names[i]):
                g, z = module_function(modules[name], calls[name])
                dense = full_jacobian(g, z).double()
                reference = torch.linalg.svdvals(dense)[:1].numpy()
                # matrix-free σ vs the dense SVD of the same fp32 Jacobian: both carry fp32 rounding (~1e-6)
                assert np.allclose(sigma[i, j], reference, rtol=1e-4), (name, sigma[i, j], reference)
                # finite difference at ε = 1e-3 along v1 (realised step): curvature and fp32 rounding < 1%
                assert gain[i, j, 0] == pytest.approx(sigma[i, j, 0], rel=1e-2)
    assert (folder / "figures" / f"module_lipschitz_{run.task_id}_p000.png").exists()


def test_unknown_module_and_layer_names_are_clear_errors(one_torch_thread, write_manifest):
    from toolkit.numerics.modules import layer_module_names

    model, _, _ = _load("tiny-random-llama")
    with pytest.raises(
        ValueError,
        match=r"no module named model\.layers\.0\.attn \(2 missing\); the children of "
        r"model\.layers\.0 are: input_layernorm, mlp, post_attention_layernorm, "
        r"self_attn",
    ):
        layer_module_names(model, ["attn"])
    bad = write_manifest("""\
        campaign: bad
        model: {source: tiny-random-llama}
        experiments:
          - name: exp5.module_lipschitz
            params: {modules: [], layers: [1, 1], eps: [0.0]}
        """)
    result = run_cli("validate", str(bad))
    assert result.code == 2
    for fragment in (
        "params.modules: must name at least one module",
        "params.layers: must be distinct indices",
        "params.eps: must be a non-empty list of values > 0",
    ):
        assert fragment in result.err, result.err
    assert run_cli("validate", str(REPO / "manifests" / "module_lipschitz.yaml")).code == 0


def test_hooks_catch_exactly_the_named_modules_on_the_packaged_model(one_torch_thread):
    """Layer 1 of SmolLM2's 30 layers: upstream's substring test would also have hooked layers 10-19."""
    from toolkit.numerics.embedding_forward import forward_states
    from toolkit.numerics.hooks import capture_calls
    from toolkit.numerics.modules import layer_module_names

    model, tokenizer, _ = _load("smollm2-135m")
    names = layer_module_names(model, MODULES)
    assert len(names) == 30 and names[1] == [f"model.layers.1.{m}" for m in MODULES]
    seen: list[str] = []
    hooks = [
        module.register_forward_hook(lambda *_, n=n: seen.append(n))
        for n, module in model.named_modules()
        if n in set(names[1])
    ]
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    try:
        with torch.no_grad(), capture_calls(model, names[1]) as calls:
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        for hook in hooks:
            hook.remove()
    assert sorted(calls) == sorted(names[1]) and sorted(seen) == sorted(names[1])  # each called exactly once
    states = forward_states(model, ids)
    # the recorded input of layer 1's first norm is the residual stream after layer 0 (hidden[1]), bit for bit
    assert torch.equal(calls["model.layers.1.input_layernorm"]["args"][0][0, -1], states.hidden[1])
    assert not torch.equal(states.hidden[1], states.hidden[10])
