"""exp4.perturb_until_divergence and exp4.embedding_similarity end to end on the packaged model.

The proof the issue asks for: the stored threshold brackets the flip.  The test regenerates, in
this process, greedy output at the stored lower ε (must equal the unperturbed output) and upper ε
(must diverge at the stored step with the stored tokens), with the stored directions and the same
rounding — so the bracket is a reproducible fact, not a property of one run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import run_cli, submit_campaign

from toolkit.experiments.exp4 import embedding_similarity, perturb_until_divergence
from toolkit.store.reader import Store

MANIFEST = """\
campaign: exp4-perturb
output: {output}
model: {{source: smollm2-135m, dtype: float32, attn_implementation: eager}}
prompts: ["The capital of France is"]
experiments:
  - name: exp4.perturb_until_divergence
    id: perturb
    params: {{directions: [random, gradient, singular], n_tokens: 6, eps_min: 0.1, eps_max: 100.0,
              growth: 10.0, iterations: 3, scope: last, kv_cache: true, singular_iterations: 3, seed: 3}}
  - name: exp4.embedding_similarity
    id: similarity
    params: {{n_below: 1, factor: 10.0}}
    needs: [perturb]
"""


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    return submit_campaign(tmp_path_factory.mktemp("exp4_perturb"), MANIFEST, "m.yaml", no_plot=True).folder


def test_threshold_brackets_the_flip_when_regenerated(campaign):
    import torch

    from toolkit.experiments.exp4.perturb_until_divergence import Params, generate_at, scoped_embeddings
    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models import loading
    from toolkit.numerics.greedy import first_difference, greedy_from_embeds

    with Store(campaign / "store.h5") as store:
        (run,) = store.runs("exp4.perturb_until_divergence")
        data = {
            name: run[f"prompts/000/{name}"]
            for name in (
                "prompt_ids",
                "reference_ids",
                "direction_vectors",
                "eps_lower",
                "eps_upper",
                "realised_lower",
                "realised_upper",
                "divergence_step",
                "tokens_upper",
                "evaluations",
                "changed_upper",
            )
        }
        names = [x.decode() for x in run["prompts/000/directions"]]
        params = Params(**{k: tuple(v) if isinstance(v, list) else v for k, v in run.params.items()})
        assert run.attrs["path"] == "kv_cache" and run.attrs["scope"] == "last"
    assert names == ["random_0", "gradient", "singular"]
    assert np.allclose(np.linalg.norm(data["direction_vectors"], axis=1), 1, rtol=1e-12)
    torch.set_num_threads(1)
    model, _, _ = loading.load(ModelSpec("smollm2-135m"), Numerics(dtype="float32", attn_implementation="eager"))
    ids = torch.tensor(data["prompt_ids"][None])
    embeds, x = scoped_embeddings(model, ids, "last")
    reference = greedy_from_embeds(model, embeds, params.n_tokens, params.kv_cache).ids
    assert reference == data["reference_ids"].tolist()  # the unperturbed path is deterministic across processes
    bracketed = 0
    for r, name in enumerate(names):
        lower, upper = float(data["eps_lower"][r]), float(data["eps_upper"][r])
        if math.isnan(upper):  # censored: never diverged up to eps_max (allowed, but then nothing to bracket)
            assert data["divergence_step"][r] == -1
            continue
        if math.isnan(lower):  # diverged already at eps_min: only an upper bound (allowed, nothing to bisect)
            assert upper == params.eps_min
            continue
        bracketed += 1
        assert lower < upper
        # bracket by ×10, then `iterations` log-bisections: upper/lower = 10 ** (1/2**iterations)
        assert upper / lower == pytest.approx(10 ** (1 / 2**params.iterations), rel=1e-9), name
        v = torch.from_numpy(data["direction_vectors"][r])
        below, p_low = generate_at(model, embeds, x, v, lower, params)
        above, p_up = generate_at(model, embeds, x, v, upper, params)
        assert below == reference, f"{name}: output at the stored lower ε must equal the unperturbed output"
        step = first_difference(above, reference)
        assert step == data["divergence_step"][r] >= 0, f"{name}: output at the stored upper ε must diverge"
        assert (reference[step], above[step]) == tuple(data["tokens_upper"][r])
        assert p_low.delta_norm == data["realised_lower"][r] and p_up.delta_norm == data["realised_upper"][r]
        assert p_up.n_changed == data["changed_upper"][r] and p_up.exact
    assert bracketed >= 1, "precondition: at least one direction must flip the output below eps_max"


def test_embedding_similarity_row0_is_the_realised_perturbation(campaign, tmp_path):
    with Store(campaign / "store.h5") as store:
        (perturb,) = store.runs("exp4.perturb_until_divergence")
        (sim,) = store.runs("exp4.embedding_similarity")
        group = sim.group["perturb/000/prompts/000"]
        eps, l2, rel = group["eps"][()], group["l2"][()], group["rel_l2"][()]
        lower, upper = perturb["prompts/000/eps_lower"], perturb["prompts/000/eps_upper"]
        assert eps.shape == (3, 3) and l2.shape == (3, 3, 32)
        for r in range(3):
            assert eps[r, 1] == lower[r] and (eps[r, 2] == upper[r] or np.isnan(upper[r]))
            assert eps[r, 0] == pytest.approx(lower[r] / 10, rel=1e-15)
            # row 0 is the last token's input row: its difference is exactly the realised perturbation
            assert l2[r, 1, 0] == perturb["prompts/000/realised_lower"][r]
            if np.isfinite(upper[r]):
                assert l2[r, 2, 0] == perturb["prompts/000/realised_upper"][r]
            for e in range(3):
                if np.isfinite(rel[r, e, 0]) and rel[r, e, 0] > 0:
                    above = np.nonzero(rel[r, e, 1:] > 10 * rel[r, e, 0])[0]
                    assert group["separation"][r, e] == (above[0] + 1 if above.size else -1)
        paths = perturb_until_divergence.plot(perturb, tmp_path) + embedding_similarity.plot(sim, tmp_path)
        assert [p.name for p in paths] == [
            f"perturb_until_divergence_{perturb.task_id}.png",
            f"embedding_similarity_{sim.task_id}.png",
        ]
        assert all(p.stat().st_size > 10_000 for p in paths)


def test_bad_params_and_missing_needs_are_refused_with_exit_2(write_manifest):
    path = write_manifest("""\
        campaign: bad
        output: campaigns
        model: {source: tiny-random-llama}
        prompts: ["a"]
        experiments:
          - name: exp4.perturb_until_divergence
            id: perturb
            params: {directions: [random, sideways], eps_min: 1.0, eps_max: 0.5, growth: 1.0}
          - name: exp4.embedding_similarity
            id: similarity
        """)
    result = run_cli("validate", str(path))
    assert result.code == 2
    assert (
        "experiments[0].params.directions: unknown direction 'sideways'; choose from random, singular, "
        "gradient" in result.err
    )
    assert "experiments[0].params.eps_min: need 0 < eps_min < eps_max, got 1.0 and 0.5" in result.err
    assert "experiments[0].params.growth: must be > 1, got 1.0" in result.err
    fixed = path.read_text().replace("[random, sideways], eps_min: 1.0, eps_max: 0.5, growth: 1.0", "[random]")
    path.write_text(fixed)
    result = run_cli("validate", str(path))
    assert result.code == 2
    assert (
        "experiments[1].needs: exp4.embedding_similarity reads exp4.perturb_until_divergence runs: add the id "
        "of an exp4.perturb_until_divergence entry to needs"
    ) in result.err
