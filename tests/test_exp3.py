"""exp3.precision (one task per dtype) and exp3.compare end to end on the tiny random Llama; regime rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, run_cli, submit_campaign

MANIFEST = """\
campaign: precision-tiny
output: {output}
model: {{source: tiny-random-llama, attn_implementation: eager}}
prompts: ["The capital of France is"]
experiments:
  - name: exp3.precision
    id: precision
    params: {{top_k: 1, iterations: 12, eps_min: 1.0e-12, eps_max: 1.0e-1, eps_steps: 12}}
    sweep: {{dtype: [float32, bfloat16, float16, float64]}}
  - name: exp3.compare
    id: compare
    needs: [precision]
"""
ABSORBED_INPUT, ABSORBED_OUTPUT, SIGNAL, NONLINEAR, CHAOTIC = range(5)


def test_classify_known_case():
    from toolkit.numerics.regimes import REGIMES, classify

    assert REGIMES == ("absorbed_input", "absorbed_output", "signal", "nonlinear", "chaotic")
    inputs = [0, 1, 1, 1, 1, 1, 1, 1]
    outputs = [0, 0, 1, 1, 1, 1, 1, 1]
    deviation = [np.nan, 1.0, 50.0, 2.0, 0.05, 0.01, 0.3, 0.09]
    # ε* = index 5 (smallest deviation): above it 0.3 > τ is nonlinear, 0.09 <= τ is signal
    assert classify(inputs, outputs, deviation, 0.1).tolist() == [0, 1, 4, 4, 2, 2, 3, 2]
    with pytest.raises(ValueError, match="signal tolerance must be > 0, got 0"):
        classify(inputs, outputs, deviation, 0)


def test_precision_campaign_finds_the_regimes(tmp_path):
    campaign = submit_campaign(tmp_path, MANIFEST, "precision.yaml")
    folder = campaign.folder
    g = "prompts/000"
    with campaign.store() as store:
        runs = {r.numerics["dtype"]: r for r in store.runs("exp3.precision")}
        assert sorted(runs) == ["bfloat16", "float16", "float32", "float64"]
        for dtype, run in runs.items():
            assert json.loads(run.attrs["regime_names"])[SIGNAL] == "signal" and run.attrs["signal_tol"] == 0.1
            regime, changed = run[f"{g}/regime"][0], run[f"{g}/input_changed"][0]
            out_changed = run[f"{g}/n_changed"][0, :, -1]
            assert np.array_equal(regime == ABSORBED_INPUT, changed == 0), dtype
            assert np.array_equal(regime == ABSORBED_OUTPUT, (changed > 0) & (out_changed == 0)), dtype
            propagated = (changed > 0) & (out_changed > 0)
            assert np.array_equal(regime == SIGNAL, propagated & (run[f"{g}/deviation"][0] <= 0.1)), dtype
            assert np.all(np.isnan(run[f"{g}/gain"][0][changed == 0]))
        fp64, fp32, bf16 = runs["float64"], runs["float32"], runs["bfloat16"]
        eps, sigma = fp64[f"{g}/eps"], fp64[f"{g}/sigma"][0]
        small = eps <= 1e-2
        # true fp64 resolves every ε here: all input coordinates move and the response is the linear signal
        assert np.all(fp64[f"{g}/input_changed"] == 64) and np.all(fp64[f"{g}/regime"][0][small] == SIGNAL)
        # δ ∥ v1, so ‖Jδ‖/‖δ‖ = σ1 up to the rounding of δ (ulp64(x_i)/δ_i ≲ 3e-5 per coordinate at ε = 1e-12)
        assert np.allclose(fp64[f"{g}/linear_norm"][0] / fp64[f"{g}/realised_norm"][0], sigma, rtol=1e-5)
        assert fp64[f"{g}/gain"][0][eps == 1e-6][0] == pytest.approx(sigma, rel=1e-6)
        # fp32: ε = 1e-12 is below half an ULP of every coordinate, so input rounding absorbs it
        assert fp32[f"{g}/eps_first_change"][0] > 1e-12 and fp32[f"{g}/regime"][0][0] == ABSORBED_INPUT
        # bf16: just above its ULP scale the response is rounding noise (gain inflated far above σ1),
        # and every chaotic ε lies below every signal ε
        regime, gain = bf16[f"{g}/regime"][0], bf16[f"{g}/gain"][0]
        assert (regime == CHAOTIC).any() and (regime == SIGNAL).any()
        assert eps[regime == CHAOTIC].max() < eps[regime == SIGNAL].min()
        assert gain[regime == CHAOTIC].max() > 2 * bf16[f"{g}/sigma"][0]
        (compare,) = store.runs("exp3.compare")
        order = [d.decode() for d in compare["dtypes"]]
        assert order == ["float16", "bfloat16", "float32", "float64"]
        for i, dtype in enumerate(order):
            assert np.array_equal(compare[f"{g}/regime"][i], runs[dtype][f"{g}/regime"][0])
            assert np.array_equal(compare[f"{g}/gain"][i], runs[dtype][f"{g}/gain"][0], equal_nan=True)
        assert "float64: signal" in compare.attrs["summary"]
        relative = compare[f"{g}/relative_to_float64"]
        assert relative.shape == (4, 12) and np.all(relative[3] == 0)
        # where fp32 is in its signal regime it reproduces the true-fp64 response (τ = 0.1)
        assert np.all(relative[2][compare[f"{g}/regime"][2] == SIGNAL] <= 0.1)
    figures = {p.name for p in (folder / "figures").iterdir()}
    assert {f"precision_{r.task_id}_p000.png" for r in runs.values()} | {
        f"precision_compare_{compare.task_id}_p000.png"
    } <= figures


def test_overflow_and_bad_params_are_clear_errors(write_manifest):
    from toolkit.experiments.exp3.precision import _check_finite

    states = np.zeros((4, 3))
    states[2, 1] = np.inf
    with pytest.raises(ValueError, match="the unperturbed float16 forward is not finite from row 2 on"):
        _check_finite(states, "float16")
    bad = write_manifest("""\
        campaign: bad
        model: {source: tiny-random-llama}
        experiments:
          - name: exp3.precision
            params: {signal_tol: 1.5}
        """)
    result = run_cli("validate", str(bad))
    assert result.code == 2
    assert "params.signal_tol: must be between 0 and 1 (exclusive), got 1.5" in result.err, result.err
    lonely = run_cli(
        "validate",
        str(
            write_manifest(
                """\
        campaign: bad
        model: {source: tiny-random-llama}
        experiments:
          - name: exp3.compare
        """,
                name="lonely.yaml",
            )
        ),
    )
    assert lonely.code == 2
    assert "exp3.compare reads exp3.precision runs: add the id of an exp3.precision entry to needs" in lonely.err
    assert run_cli("validate", str(REPO / "manifests" / "precision.yaml")).code == 0
