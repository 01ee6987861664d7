"""exp4.divergence and exp4.internals end to end through the CLI, on runs that really diverge.

The packaged SmolLM2-135M generates in float32, bfloat16 and float64 (full recompute, so replays
can be checked bit for bit); bf16 and fp32 really diverge.  The analysis is checked against the
stored exp4.generate arrays directly, and the internals replay against the stored logits hashes and
the model's own embedding table.  float32 vs float64 is the "same embedding" case: the float32
embedding rows cast exactly, so row 0 must be identical while the layers differ.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli, submit_campaign

from toolkit.experiments.exp4 import divergence
from toolkit.store.reader import Store

PACKAGED = """\
campaign: exp4-analysis
output: {output}
model: {{source: smollm2-135m, dtype: float32, attn_implementation: eager, kv_cache: false}}
prompts: ["My favourite food is"]
experiments:
  - name: exp4.generate
    id: generate
    params: {{max_new_tokens: 6, top_k: 20}}
    sweep: {{dtype: [float32, bfloat16, float64]}}
  - name: exp4.divergence
    id: divergence
    needs: [generate]
  - name: exp4.internals
    id: internals
    params: {{steps_before: 0}}
    needs: [generate]
"""


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """The fp32 + bf16 campaign, run once for this module; yields the campaign folder."""
    return submit_campaign(tmp_path_factory.mktemp("exp4_analysis"), PACKAGED, "m.yaml", no_plot=True).folder


def _pair_index(pairs, order, store, wanted):
    """Index q of the pair whose two runs have the dtypes in `wanted` (a set)."""
    for q, (i, j) in enumerate(pairs):
        if {store.run(order[i]).numerics["dtype"], store.run(order[j]).numerics["dtype"]} == wanted:
            return q
    raise AssertionError(f"no pair with dtypes {wanted}")


def test_divergence_finds_the_step_and_margins_of_a_real_flip(packaged, tmp_path):
    with Store(packaged / "store.h5") as store:
        (table,) = store.runs("exp4.divergence")
        order = [x.decode() for x in table["run_task_ids"]]
        assert sorted(store.run(t).numerics["dtype"] for t in order) == ["bfloat16", "float32", "float64"]
        assert table["pairs"].shape == (3, 2) and table["divergence_step"].shape == (3, 1)
        for q, (i, j) in enumerate(table["pairs"]):  # every pair, diverged or not, against the stored ids
            ga, gb = store.run(order[i])["prompts/000/generated_ids"], store.run(order[j])["prompts/000/generated_ids"]
            common = min(len(ga), len(gb))
            differ = np.nonzero(ga[:common] != gb[:common])[0]
            assert table["divergence_step"][q, 0] == (differ[0] if differ.size else -1)
            assert table["common_length"][q, 0] == common
            if not differ.size:  # never diverged: no measures
                assert np.isnan(table["margin_top"][q, 0]).all() and (table["tokens"][q, 0] == -1).all()
        q = _pair_index(table["pairs"], order, store, {"float32", "bfloat16"})
        i, j = table["pairs"][q]
        a, b = store.run(order[i]), store.run(order[j])
        ga, gb = a["prompts/000/generated_ids"], b["prompts/000/generated_ids"]
        d = int(table["divergence_step"][q, 0])
        assert d >= 0, "precondition: fp32 and bf16 must diverge within 6 tokens on this prompt"
        assert tuple(table["tokens"][q, 0]) == (ga[d], gb[d]) and ga[d] != gb[d]
        # row d, not d-1: the stored margins of both runs at d, bitwise
        assert table["margin_top"][q, 0, 0] == a["prompts/000/margin"][d]
        assert table["margin_top"][q, 0, 1] == b["prompts/000/margin"][d]
        ids_a, z_a = a["prompts/000/topk_ids"][d], a["prompts/000/topk_logits"][d]
        assert ids_a[0] == ga[d] and z_a[0] - z_a[1] == a["prompts/000/margin"][d]
        if gb[d] in ids_a:  # t_j in run i's top-20 (it normally is rank 2)
            z_other = float(z_a[list(ids_a).index(gb[d])])
            assert table["margin_contested"][q, 0, 0] == float(z_a[0]) - z_other >= 0
            # a flip: the decisive difference moved by both sides' contested margins together
            assert table["contested_change"][q, 0] == pytest.approx(table["margin_contested"][q, 0].sum(), rel=1e-12)
        for side, run in enumerate((a, b)):  # tie distance: margin in ULPs of the top-1 logit in the run's dtype
            top1 = run["prompts/000/topk_logits"][d][0]
            bf16 = run.numerics["dtype"] == "bfloat16"
            spacing = np.spacing(np.float32(abs(top1))) * (2.0**16 if bf16 else 1.0)
            assert table["tie_ulps"][q, 0, side] == pytest.approx(run["prompts/000/margin"][d] / spacing, rel=1e-12)
            if bf16:  # bf16 logits: the margin is a whole number of bf16 ULPs (same binade at this size)
                assert float(table["tie_ulps"][q, 0, side]).is_integer()
        assert "1/1 prompts diverged" in table.attrs["summary"]
        paths = divergence.plot(table, tmp_path)  # from the store only (in-process: no second CLI start-up)
        assert [p.name for p in paths] == [
            f"divergence_scatter_{table.task_id}.png",
            f"divergence_margins_{table.task_id}.png",
        ]
        assert all(p.stat().st_size > 10_000 for p in paths)


def test_internals_row0_is_the_embedding_difference_and_replay_matches_stored_logits(packaged):
    import torch
    from safetensors import safe_open

    from toolkit.models.loading import prepare_packaged

    with Store(packaged / "store.h5") as store:
        (internals,) = store.runs("exp4.internals")
        order = [x.decode() for x in internals["run_task_ids"]]
        pairs = {}
        for q in sorted(internals.group["pairs"]):
            i, j = internals.group[f"pairs/{q}"].attrs["runs"]
            key = frozenset({store.run(order[i]).numerics["dtype"], store.run(order[j]).numerics["dtype"]})
            g = internals.group[f"pairs/{q}/prompts/000"]
            pairs[key] = {n: g[n][()] for n in ("steps", "l2", "ulp_max", "rel_l2", "replay_matches", "separation")}
            pairs[key]["d"] = int(g.attrs["divergence_step"])
        gen = store.run(order[0])
        prompt_ids = gen["prompts/000/prompt_ids"]
        ids = np.concatenate([prompt_ids, gen["prompts/000/generated_ids"]])
    assert len(pairs) == 3
    for found in pairs.values():  # full-recompute runs: every replayed logits row has the stored hash, bitwise
        assert found["replay_matches"].all() and found["l2"].shape == (1, 30 + 2)  # emb., 30 layers, final norm
        assert found["d"] < 0 or found["steps"][-1] == found["d"]
    # fp32 vs fp64: the same embedding (exact cast) → row 0 identical; the arithmetic differs later
    same = pairs[frozenset({"float32", "float64"})]
    assert np.all(same["l2"][:, 0] == 0) and np.all(same["ulp_max"][:, 0] == 0)
    assert np.all(same["rel_l2"][:, -1] > 0)
    for s, rel in zip(same["separation"], same["rel_l2"]):  # identical inputs: first row with any difference
        assert s == np.nonzero(rel[1:] > 0)[0][0] + 1
    # fp32 vs bf16: row 0 is exactly the bf16 rounding of the embedding row of the context's last token
    flip = pairs[frozenset({"float32", "bfloat16"})]
    assert flip["d"] >= 0
    folder = prepare_packaged()  # the converted fp32 weights the tasks loaded (tied: embed = lm_head)
    files = sorted(folder.glob("*.safetensors"))
    table = None
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            if "model.embed_tokens.weight" in handle.keys():
                table = handle.get_tensor("model.embed_tokens.weight")
    assert table is not None and table.dtype == torch.float32
    for row, step in enumerate(flip["steps"]):
        token = int(ids[len(prompt_ids) + step - 1])  # last token of prompt + generated[:step]
        expected = float(torch.linalg.vector_norm(table[token].double() - table[token].to(torch.bfloat16).double()))
        assert flip["l2"][row, 0] == expected and expected > 0


MISSING_UPSTREAM = """\
campaign: exp4-missing
output: {output}
model: {{source: tiny-random-llama, dtype: float32, attn_implementation: eager, kv_cache: false}}
prompts: ["My favourite food is"]
experiments:
  - name: exp4.generate
    id: generate
    params: {{max_new_tokens: 2, top_k: 5}}
  - name: exp4.compare
    id: compare
    needs: [generate]
  - name: exp4.divergence
    id: divergence
    needs: [generate]
  - name: exp4.internals
    id: internals
    needs: [generate]
"""


def test_a_single_generate_run_is_refused_with_what_to_add(tmp_path):
    """One exp4.generate run: validation refuses each analysis (exit 2, before anything is created),
    saying how to give it the runs it needs."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MISSING_UPSTREAM.format(output=tmp_path / "campaigns"))
    result = run_cli("submit", str(manifest), "--executor", "local", "--no-plot", env={"OMP_NUM_THREADS": "1"})
    assert result.code == 2 and "Traceback" not in result.err, result.err
    assert not (tmp_path / "campaigns").exists()
    runs = (
        "sweep the upstream entry over numerics (e.g. sweep: {dtype: [float32, bfloat16]}), give it repeats "
        ">= 2 or more targets"
    )
    assert result.err.splitlines() == [
        f"error: {manifest}:11:12: experiments[1].needs: exp4.compare needs at least 2 exp4.generate runs; its "
        f"needs (generate) give 1: {runs}",
        f"error: {manifest}:14:12: experiments[2].needs: exp4.divergence needs at least 2 exp4.generate runs; its "
        f"needs (generate) give 1: {runs}",
        f"error: {manifest}:17:12: experiments[3].needs: exp4.internals needs exp4.generate runs with at least 2 "
        "different dtype / attn_implementation; its needs (generate) give 1: sweep the upstream entry over "
        "numerics (e.g. sweep: {dtype: [float32, bfloat16]})",
    ]
