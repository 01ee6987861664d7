"""exp1.layer_svd end to end through the CLI (local executor) on the tiny random Llama."""

from __future__ import annotations

import numpy as np
import torch
from conftest import REPO, run_cli, submit_campaign

MANIFEST = """\
campaign: layer-svd-tiny
output: {output}
model: {{source: tiny-random-llama, attn_implementation: eager}}
prompts: ["The capital of France is"]
experiments:
  - name: exp1.layer_svd
    id: layer-svd
    params: {{top_k: 2, iterations: 12, eps_min: 1.0e-12, eps_max: 1.0e-2, eps_steps: 11, seed: 3}}
    sweep: {{dtype: [float32, float64]}}
"""


def test_layer_svd_campaign_records_every_layer(tmp_path):
    from toolkit.numerics.perturb import perturb

    campaign = submit_campaign(tmp_path, MANIFEST, "layer_svd.yaml")
    folder = campaign.folder
    with campaign.store() as store:
        runs = {r.numerics["dtype"]: r for r in store.runs("exp1.layer_svd")}
        assert sorted(runs) == ["float32", "float64"]
        for dtype, run in runs.items():
            g = "prompts/000"
            eps, base, right = run[f"{g}/eps"], run[f"{g}/base_states"], run[f"{g}/right_vectors"]
            assert base.shape == (2 + 2, 64)  # input, 2 decoder layers, final norm
            for name in ("l2", "linf", "rel_l2", "n_changed", "ulp_max", "ulp_median"):
                assert run[f"{g}/{name}"].shape == (2, 11, 4), name
            assert bool(run.attrs["true_fp64"]) is (dtype == "float64")
            assert run.attrs["ulp_format"].startswith(f"ULPs of {dtype}")
            x_tilde, l2, linf = run[f"{g}/x_tilde"], run[f"{g}/l2"], run[f"{g}/linf"]
            torch_dtype = getattr(torch, dtype)
            x = torch.from_numpy(base[0]).to(torch_dtype)
            for i in range(2):
                for j, step in enumerate(eps):
                    # the stored x̃ is what the documented rounding gives, bit for bit
                    p = perturb(x, torch.from_numpy(right[i]), float(step), "fp64_then_round")
                    assert np.array_equal(p.x_tilde.double().numpy(), x_tilde[i, j])
                    # row 0 is the realised input perturbation, exactly
                    assert l2[i, j, 0] == run[f"{g}/realised_norm"][i, j] == p.delta_norm
                    assert linf[i, j, 0] == np.abs(x_tilde[i, j] - base[0]).max()
                    assert run[f"{g}/n_changed"][i, j, 0] == run[f"{g}/input_changed"][i, j] == p.n_changed
                    assert run[f"{g}/ulp_max"][i, j, 0] == p.ulp_max
            changed, ulp_max = run[f"{g}/n_changed"], run[f"{g}/ulp_max"]
            assert np.all((changed == 0) == (l2 == 0)) and np.all((changed == 0) == (ulp_max == 0))
            assert np.all(changed <= 64) and np.all(run[f"{g}/ulp_median"] <= ulp_max)
        fp32, fp64 = runs["float32"], runs["float64"]
        # ε = 1e-12 is below half an fp32 ULP of every coordinate: the input, hence every row, is unchanged
        assert fp32["prompts/000/eps_first_change"][0] > 1e-12
        assert np.all(fp32["prompts/000/n_changed"][:, 0] == 0)
        # in true fp64 the divergence of every row is linear in ε: rel_l2 / ε constant for 1e-11 ≤ ε ≤ 1e-5
        # (curvature adds ~ε·1e-1 relative, fp64 rounding of δ ~ulp64(x_i)/δ_i ≲ 3e-6: both far below 1e-4)
        rel = fp64["prompts/000/rel_l2"][0]
        eps = fp64["prompts/000/eps"]
        window = (eps >= 1e-11) & (eps <= 1e-5)
        slope = rel[window] / eps[window, None]
        assert np.allclose(slope, slope[0], rtol=1e-4), slope
        assert np.all(fp64["prompts/000/input_changed"] == 64)
    figures = sorted(p.name for p in (folder / "figures").iterdir() if p.name.startswith("layer_svd_"))
    assert figures == sorted(f"layer_svd_{r.task_id}_p000.png" for r in runs.values())


def test_params_are_validated_and_the_manifest_is_valid(write_manifest):
    bad = write_manifest("""\
        campaign: bad
        model: {source: tiny-random-llama}
        experiments:
          - name: exp1.layer_svd
            params: {top_k: 0, eps_min: -1.0, eps_steps: 1}
        """)
    result = run_cli("validate", str(bad))
    assert result.code == 2
    for fragment in ("params.top_k: must be between 1 and 64", "params.eps_min: must be > 0, got -1.0"):
        assert fragment in result.err, result.err
    shipped = run_cli("validate", str(REPO / "manifests" / "layer_svd.yaml"))
    assert shipped.code == 0, shipped.err
