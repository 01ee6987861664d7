"""exp6.equal_logits and exp6.token_flip end to end through the CLI, plus the tie primitives.

(a) the tie is certified on the packaged SmolLM2-135M in fp32: the model's own forward on the
stored x0 gives back the stored logits bit for bit, and they are equal (0 ULP);
(b) on the tiny random Llama: both methods, best iterate kept, pair/argmax consistent, orthonormal
directions, and token_flip's nearest flip reproduced by an independent forward in this process.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import REPO, run_cli, submit_campaign

PACKAGED = """\
campaign: tie-fp32
output: {output}
model: {{source: smollm2-135m, dtype: float32, attn_implementation: eager}}
prompts: ["The capital of France is"]
targets: [cpu]
experiments:
  - name: exp6.equal_logits
    id: equal-logits
    params: {{method: geometric, n_directions: 1, svd_iterations: 2, oversample: 1, jvp_mode: double_vjp}}
"""

TINY = """\
campaign: tie-tiny
output: {output}
model: {{source: tiny-random-llama, dtype: float32, attn_implementation: eager}}
prompts: ["The capital of France is", "Numbers: 1, 2, 3,"]
targets: [cpu]
experiments:
  - name: exp6.equal_logits
    id: equal-logits
    params: {{n_directions: 3, svd_iterations: 8, jvp_mode: double_vjp}}
    sweep: {{method: [direct, geometric]}}
  - name: exp6.token_flip
    id: token-flip
    needs: [equal-logits]
    params: {{eps_max: 1.0e-6, n_steps: 8, n_log: 6, directions: [1, 3]}}
"""


@functools.cache
def _load(source: str):
    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models.loading import load

    return load(ModelSpec(source, device="cpu"), Numerics(dtype="float32", attn_implementation="eager"))


def _check_certificate(run, key: str, model, tokenizer) -> None:
    """The stored certificate equals what the model's own forward says at the stored x0 (bitwise)."""
    import torch

    from toolkit.numerics.embedding_forward import forward_states, prompt_embeddings
    from toolkit.numerics.tie import ulp

    g = f"prompts/{key}"
    x0, ids = run[f"{g}/x0"], torch.from_numpy(run[f"{g}/prompt_ids"])[None]
    assert np.array_equal(x0.astype(np.float32).astype(np.float64), x0)  # exactly representable in fp32
    x = torch.from_numpy(x0).to(torch.float32)
    assert np.array_equal(x.double().numpy(), x0)  # round trip is bit-exact
    embeds = run[f"{g}/embeds"]
    assert np.array_equal(embeds[-1], x0)
    assert np.array_equal(embeds[:-1], prompt_embeddings(model, ids)[0, :-1].double().numpy())
    assert not np.array_equal(x0, run[f"{g}/x_init"])  # the search moved x
    logits = forward_states(model, ids, x).logits
    pair = run[f"{g}/pair"]
    assert np.array_equal(logits[torch.from_numpy(pair)].double().numpy(), run[f"{g}/logits_ab"])
    assert int(torch.argmax(logits)) == run[f"{g}/argmax"] == pair[0]
    a_b = run[f"{g}/logits_ab"]
    assert run[f"{g}/gap"] == a_b[0] - a_b[1]
    assert run[f"{g}/gap_ulps"] == run[f"{g}/gap"] / ulp(max(abs(a_b)), torch.float32)
    attrs = run.group[g].attrs
    assert attrs["a_token"] == tokenizer.decode([int(pair[0])]) and attrs["b_token"] == tokenizer.decode([int(pair[1])])
    assert bool(attrs["trace_matches_certified"]) and bool(attrs["pair_is_top2"])
    # the best iterate is kept: the certified gap is the smallest |gap| among iterates whose pair is the top-2
    trace, top2 = np.abs(run[f"{g}/trace_gap"]), run[f"{g}/trace_pair_is_top2"]
    assert run[f"{g}/gap"] == trace[top2].min() == trace[int(attrs["best_iteration"])]
    assert len(run[f"{g}/trace_step"]) == len(trace)


def test_tie_is_certified_on_the_packaged_model_in_fp32(tmp_path, one_torch_thread):
    campaign = submit_campaign(tmp_path, PACKAGED, "tie.yaml")
    model, tokenizer, _ = _load("smollm2-135m")
    with campaign.store() as store:
        (run,) = store.runs("exp6.equal_logits")
        assert run.attrs["dtype"] == "float32" and run.attrs["method"] == "geometric"
        assert run.attrs["attn_implementation"] == "eager" and "float64 master copy" in run.attrs["arithmetic"]
        _check_certificate(run, "000", model, tokenizer)
        # the bound reached: an exact fp32 tie (0 ULP), the model's argmax resolving it to the lower index
        assert run["prompts/000/gap"] == 0.0 and run["prompts/000/gap_ulps"] == 0.0
        pair = run["prompts/000/pair"]
        assert pair[0] < pair[1] and bool(run.group["prompts/000"].attrs["converged"])
        assert run["prompts/000/right_vectors"].shape == (1, 576)


def test_both_methods_and_token_flip_on_the_tiny_model(tmp_path, one_torch_thread):
    import torch

    from toolkit.numerics.embedding_forward import forward_states
    from toolkit.numerics.perturb import perturb

    campaign = submit_campaign(tmp_path, TINY, "tiny.yaml")  # submit also draws the figures
    folder = campaign.folder
    model, tokenizer, _ = _load("tiny-random-llama")
    with campaign.store() as store:
        ups = {r.attrs["method"]: r for r in store.runs("exp6.equal_logits")}
        assert sorted(ups) == ["direct", "geometric"]
        for method, run in ups.items():
            for key in ("000", "001"):
                _check_certificate(run, key, model, tokenizer)
                g = f"prompts/{key}"
                right = run[f"{g}/right_vectors"]
                assert right.shape == (3, 64) and np.all(np.diff(run[f"{g}/sigma"]) <= 0)
                assert np.allclose(right @ right.T, np.eye(3), atol=1e-12)  # float64 QR basis
                assert np.all(right[np.arange(3), np.abs(right).argmax(axis=1)] > 0)  # sign convention
                if method == "geometric":  # the fixed pair of the initial top-2
                    assert set(run[f"{g}/pair"]) == set(run.group[g].attrs["initial_pair"])
                else:  # the current top-2 is re-selected: every gradient-phase iterate tracks the top-2
                    assert run[f"{g}/trace_pair_is_top2"][run[f"{g}/trace_phase"] == 0].all()
        (flip,) = store.runs("exp6.token_flip")
        assert sorted(flip.group["sources"]) == sorted(r.task_id for r in ups.values())
        for source, up in ((r.task_id, r) for r in ups.values()):
            for key in ("000", "001"):
                _check_flips(flip, f"sources/{source}/prompts/{key}", up, key, model, forward_states, perturb, torch)
    names = sorted(p.name for p in (folder / "figures").iterdir())
    expected = [f"equal_logits_{r.task_id}.png" for r in ups.values()] + [f"token_flip_{flip.task_id}.png"]
    assert names == sorted([*expected, "report.html"])  # the campaign's page, written by the last gather


def _check_flips(flip, g: str, up, key: str, model, forward_states, perturb, torch) -> None:
    attrs = flip.group[g].attrs
    assert bool(attrs["baseline_reproduced"]) and bool(attrs["x0_roundtrip_exact"])
    assert bool(attrs["prefix_matches_upstream"]) and attrs["upstream_task_id"] == up.task_id
    assert attrs["dedup_check"].startswith("passed")  # ε below the ULP scale of x0 repeats x0 itself
    eps, argmax, gap = flip[f"{g}/eps"], flip[f"{g}/argmax"], flip[f"{g}/gap"]
    assert np.array_equal(flip[f"{g}/directions"], [1, 3]) and argmax.shape == (2, len(eps))
    assert eps[0] == -1e-6 and eps[-1] == 1e-6 and 0.0 in eps and np.all(np.diff(eps) > 0)
    zero = int(np.nonzero(eps == 0)[0][0])
    assert np.all(argmax[:, zero] == up[f"prompts/{key}/argmax"]) and np.all(gap[:, zero] == 0.0)
    nearest, bracket = flip[f"{g}/nearest_flip_eps"], flip[f"{g}/nearest_flip_bracket"]
    assert np.all(np.isfinite(nearest))  # at a tie, ±1e-6 along any direction breaks it one way
    a, b = up[f"prompts/{key}/pair"]
    sides = np.where(gap > 0, 1, np.where(gap < 0, -1, 1 if a < b else -1))
    assert np.array_equal(flip[f"{g}/n_flips"], np.count_nonzero(sides[:, 1:] != sides[:, :-1], axis=1))
    x0 = torch.from_numpy(up[f"prompts/{key}/x0"]).to(torch.float32)
    ids = torch.from_numpy(up[f"prompts/{key}/prompt_ids"])[None]
    vectors = up[f"prompts/{key}/right_vectors"][[0, 2]]
    for i in range(2):
        inner, at = (int(np.nonzero(eps == e)[0][0]) for e in bracket[i])
        assert abs(eps[inner]) < abs(eps[at]) and np.all(argmax[i, np.abs(eps) < abs(eps[at])] == argmax[i, zero])
        assert argmax[i, inner] != argmax[i, at] == flip[f"{g}/nearest_flip_token"][i]
        for index in (inner, at):  # an independent forward in this process gives the stored argmax
            x = perturb(x0, torch.from_numpy(vectors[i]), float(eps[index]), "fp64_then_round").x_tilde
            assert int(torch.argmax(forward_states(model, ids, x).logits)) == argmax[i, index]


def test_params_are_validated_and_the_shipped_manifest_is_valid(write_manifest):
    bad = write_manifest("""\
        campaign: bad
        model: {source: tiny-random-llama}
        experiments:
          - name: exp6.equal_logits
            id: tie
            params: {n_directions: 0, lr: -1.0, tol_ulps: -1.0}
          - name: exp6.token_flip
            needs: [tie]
            params: {eps_max: 0.0, directions: [0, 2, 2]}
        """)
    result = run_cli("validate", str(bad))
    assert result.code == 2
    for fragment in (
        "params.n_directions: must be between 1 and 256, got 0",
        "params.lr: must be > 0, got -1.0",
        "params.tol_ulps: must be >= 0 (0 asks for an exact tie), got -1.0",
        "params.eps_max: must be > 0, got 0.0",
        "params.directions: are 1-based indices of stored directions (>= 1), got [0]",
        "params.directions: must be distinct",
    ):
        assert fragment in result.err, result.err
    literal = run_cli(
        "validate",
        str(
            write_manifest(
                """\
        campaign: bad
        model: {source: tiny-random-llama}
        experiments:
          - name: exp6.equal_logits
            params: {method: newton}
        """,
                name="literal.yaml",
            )
        ),
    )
    assert literal.code == 2 and "params.method: must be 'direct' | 'geometric', got 'newton'" in literal.err
    orphan = run_cli(
        "validate",
        str(
            write_manifest(
                """\
        campaign: bad
        model: {source: tiny-random-llama}
        experiments:
          - name: exp6.token_flip
        """,
                name="orphan.yaml",
            )
        ),
    )
    assert orphan.code == 2 and "exp6.token_flip reads exp6.equal_logits runs: add the id" in orphan.err
    shipped = run_cli("validate", str(REPO / "manifests" / "equal_logits.yaml"))
    assert shipped.code == 0, shipped.err


def test_token_flip_refuses_upstream_runs_of_other_numerics(run_context, tmp_path):
    from toolkit.experiments.exp6 import token_flip
    from toolkit.manifest import Numerics
    from toolkit.store.gather import gather
    from toolkit.store.reader import Store
    from toolkit.store.shard import open_shard

    # a real store holding one upstream fp32 exp6.equal_logits run on target cpu (no datasets needed:
    # the selection reads attributes only)
    attrs = {
        "experiment": "exp6.equal_logits",
        "exp_id": "equal",
        "target": "cpu",
        "repeat": 0,
        "params": {},
        "numerics": Numerics(dtype="float32").to_dict(),
        "model": {},
        "inputs": [],
        "provenance": {},
    }
    with open_shard(tmp_path, "abc", attrs):
        pass
    gather(tmp_path, manifest_text="")
    with Store(tmp_path / "store.h5") as store:
        ctx = run_context("exp6.token_flip", Numerics(dtype="bfloat16"), model=False, store=store, inputs=("abc",))
        with pytest.raises(
            ValueError, match="no exp6.equal_logits run with this task's target 'cpu' and numerics bfloat16/eager/kv"
        ):
            token_flip.run(ctx, token_flip.Params())
        same = ctx.inputs.matching("exp6.equal_logits", target="cpu", numerics=Numerics(dtype="float32"))
        assert [r.task_id for r in same] == ["abc"]


def test_tie_primitives():
    import torch

    from toolkit.numerics.tie import certify, side, top_two, ulp

    assert ulp(16.0, torch.float32) == 2.0**-19 and ulp(-17.5, torch.float32) == 2.0**-19
    assert ulp(1.0, torch.bfloat16) == 2.0**-7 and ulp(0.0, torch.float32) == 2.0**-149
    logits = torch.tensor([0.5, 3.0, 1.0, 3.0])
    assert top_two(logits) == (1, 3) and side(logits, 3, 1) == -1  # torch.argmax: lowest index wins a tie
    cert = certify(logits, 3, 1)
    assert cert.pair == (1, 3) and cert.gap == 0.0 and cert.gap_ulps == 0.0 and cert.argmax == 1 and cert.pair_is_top2
    near = certify(torch.tensor([2.0, torch.nextafter(torch.tensor(2.0), torch.tensor(0.0))]), 1, 0)
    assert near.pair == (0, 1) and near.gap_ulps == 0.5  # one spacing below 2.0 is half the spacing above it
    assert not certify(logits, 0, 2).pair_is_top2


def test_flip_statistics_and_grid():
    from toolkit.experiments.exp6.token_flip import eps_grid, flip_statistics

    eps = eps_grid(1.0, 2, 2, 0.01)
    assert np.array_equal(eps, [-1.0, -0.5, -0.01, 0.0, 0.01, 0.5, 1.0])
    argmax = np.array([[7, 7, 5, 5, 5, 7, 7], [5, 5, 5, 5, 5, 5, 5]])
    side = np.array([[1, 1, -1, -1, -1, 1, 1], [-1, -1, -1, -1, -1, -1, -1]])
    stats = flip_statistics(eps, argmax, side, eps_max=1.0, n_steps=2)
    # ±0.5 flip at the same |ε|: the first in grid order (the negative one) is reported
    assert stats["nearest_flip_eps"][0] == -0.5 and np.isnan(stats["nearest_flip_eps"][1])
    assert np.array_equal(stats["nearest_flip_bracket"][0], [-0.01, -0.5])
    assert np.array_equal(stats["nearest_flip_token"], [7, -1])
    assert np.array_equal(stats["flip_positions"], [[0, -0.5, -0.01], [0, 0.01, 0.5]])
    assert np.array_equal(stats["n_flips"], [2, 0]) and np.array_equal(stats["n_argmax_changes"], [2, 0])
    # uniform sub-grid −1, −0.5, 0, 0.5, 1: sides 1, 1, −1, 1, 1 → 2 changes over a width of 2
    assert np.array_equal(stats["flip_density"], [1.0, 0.0])


def test_adam_keeps_the_best_iterate(one_torch_thread):
    from toolkit.numerics.embedding_forward import forward_states, prompt_embeddings
    from toolkit.numerics.tie import top_two
    from toolkit.numerics.tie_search import SearchSettings, TieObjective, search_tie

    model, tokenizer, _ = _load("tiny-random-llama")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    embeds = prompt_embeddings(model, ids)
    pair0 = top_two(forward_states(model, ids, embeds[0, -1]).logits)
    settings = SearchSettings(method="direct", optimizer="adam", iterations=12, lr=1e-4, patience=12, polish_steps=0)
    result = search_tie(TieObjective(model, embeds, "direct", pair0), embeds[0, -1], settings, pair0)
    gaps = np.abs(result.trace["gap"])
    assert result.iterations_done == len(gaps) == 12 and result.trace["step"] == [1e-4] * 12
    assert gaps[result.best_iteration] == gaps.min() and gaps.min() < gaps[0]
    best = forward_states(model, ids, result.x_best).logits
    assert abs(float(best[result.pair[0]].double() - best[result.pair[1]].double())) == gaps.min()
