"""The experiment contract of docs/architecture.md, checked for every name in `REGISTRY`.

Statically: each module satisfies `toolkit.experiments.ExperimentModule`, declares what validation
and planning read, has a frozen `Params` with every field typed, and `READS` / `READS_OPTIONAL`
name registered experiments.  Dynamically: one real campaign through the CLI runs every registered
experiment at tiny settings on the tiny random Llama (upstream stages first, as a user would), and
every dataset each run stored matches a name in its `STORES` with the rank stated there.  The run
itself goes through the checked writer (`ctx.out`) and `ctx.inputs.matching`, so an undeclared
dataset or read fails the campaign.  Unit tests pin the writer's and `matching`'s refusals.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from conftest import submit_campaign

from toolkit import experiments
from toolkit.store.reader import Store
from toolkit.store.writer import parse_stores

NAMES = experiments.names()
DECLARED = ("PER_TARGET", "NEEDS_MODEL", "READS", "READS_PROMPTS", "NEEDS_EAGER_ATTENTION", "STORES")

MANIFEST = """\
campaign: contract
output: {output}
model: {{source: tiny-random-llama, dtype: float32, attn_implementation: eager, kv_cache: false}}
prompts: ["The capital of France is"]
targets: [cpu]
experiments:
  - name: exp1.layer_svd
    id: layer_svd
    params: {{top_k: 1, iterations: 2, oversample: 1, eps_min: 1.0e-6, eps_max: 1.0e-2, eps_steps: 2}}
  - name: exp2.lipschitz
    id: lipschitz
    params: {{top_k: 1, iterations: 2, oversample: 1, eps_min: 1.0e-6, eps_max: 1.0e-2, eps_steps: 2, n_random: 1,
              n_noise: 1}}
  - name: exp3.precision
    id: precision
    params: {{top_k: 1, iterations: 2, oversample: 1, eps_min: 1.0e-6, eps_max: 1.0e-2, eps_steps: 2}}
  - name: exp3.compare
    id: precision_compare
    needs: [precision]
  - name: exp5.module_lipschitz
    id: module_lipschitz
    params: {{modules: [mlp], layers: [0], iterations: 2, oversample: 1, eps: [1.0e-3]}}
  - name: exp4.generate
    id: generate
    params: {{max_new_tokens: 2, top_k: 2, stop_at_eos: false}}
    sweep: {{dtype: [float32, bfloat16]}}
  - name: exp4.census
    id: census
    params: {{completions: 3, max_new_tokens: 2, batch_sizes: [1, 2], top_k: 2, stop_at_eos: false}}
  - name: exp4.compare
    id: compare
    needs: [generate]
  - name: exp4.divergence
    id: divergence
    needs: [generate]
  - name: exp4.internals
    id: internals
    params: {{steps_before: 0}}
    needs: [generate]
  - name: exp4.perturb_until_divergence
    id: perturb
    params: {{directions: [random], n_tokens: 2, eps_min: 0.1, eps_max: 10.0, iterations: 1, singular_iterations: 1}}
  - name: exp4.embedding_similarity
    id: similarity
    params: {{n_below: 1}}
    needs: [perturb, internals]
  - name: exp6.equal_logits
    id: tie
    params: {{method: geometric, iterations: 3, polish_steps: 2, n_directions: 2, svd_iterations: 2, oversample: 1,
              true_fp64: false}}
  - name: exp6.token_flip
    id: flip
    needs: [tie]
    params: {{n_steps: 2, n_log: 1, directions: [1]}}
  - name: exp7.heatmap
    id: heatmap
    needs: [tie]
    params: {{planes: [[1, 2]], e_min: -1.0e-7, e_max: 1.0e-7, step: 1.0e-7, batch_size: 4, check_sample: 1}}
  - name: exp7.zoom
    id: zoom
    needs: [heatmap]
    params: {{e1_min: -1.0e-7, e1_max: 0.0, e2_min: 0.0, e2_max: 1.0e-7, recompute_steps: 2}}
  - name: exp7.randomness
    id: randomness
    needs: [heatmap, zoom]
    params: {{window: 2, n_perm: 9}}
  - name: pdf.word_prediction
    id: words
    params: {{pdf_path: {pdf}, window: 16, stride: 8, min_context: 4, top_k: 2, check_words: 1}}
"""


def _make_pdf(path: Path) -> Path:
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_textbox(pymupdf.Rect(72, 72, 520, 770), "Adding 0.1 and 0.2 gives a number close to 0.3.", fontsize=11)
    doc.save(str(path), garbage=4, deflate=True)
    doc.close()
    return path


def contract_campaign(factory: pytest.TempPathFactory) -> Path:
    """The campaign folder of MANIFEST (every registered experiment at tiny settings), run once per
    test session and shared with the tests of its tables and its xarray view (tests/test_tables.py,
    tests/test_xarray.py)."""
    folder = factory.getbasetemp() / "contract_campaign"
    campaign = folder / "campaigns" / "contract"
    if not (campaign / "store.h5").exists():
        folder.mkdir(exist_ok=True)
        submit_campaign(folder, MANIFEST, "contract.yaml", no_plot=True, pdf=_make_pdf(folder / "text.pdf"))
    return campaign


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One campaign with every registered experiment at tiny settings; its store.h5."""
    return contract_campaign(tmp_path_factory) / "store.h5"


def test_the_campaign_runs_every_registered_experiment():
    used = {line.split("name: ", 1)[1] for line in MANIFEST.splitlines() if "- name: " in line}
    assert used == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_module_declares_the_contract(name: str):
    module = experiments.get(name)
    assert isinstance(module, experiments.ExperimentModule)
    missing = [d for d in DECLARED if d not in vars(module)]
    assert missing == []
    assert isinstance(module.PER_TARGET, bool) and isinstance(module.NEEDS_MODEL, bool)
    assert isinstance(module.READS_PROMPTS, bool)
    assert isinstance(module.NEEDS_EAGER_ATTENTION, bool) or callable(module.NEEDS_EAGER_ATTENTION)
    assert isinstance(module.STORES, dict) and module.STORES
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in module.STORES.items())
    assert parse_stores(module.STORES), "STORES declares no dataset"
    experiments.upstream_rule(module)  # the UPSTREAM_* declarations name known fields
    declared = getattr(module, "HONOURS_NUMERICS", frozenset())
    assert isinstance(declared, frozenset) and experiments.honours_numerics(module) == declared


def test_honours_numerics_names_only_forward_path_keys():
    """HONOURS_NUMERICS lists forward-path keys only; exp4.generate honours all of them (#14)."""
    import types

    assert experiments.honours_numerics(experiments.get("exp4.generate")) == set(experiments.PATH_NUMERICS)
    odd = types.ModuleType("odd")
    odd.HONOURS_NUMERICS = frozenset({"batch_size", "dtype"})  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match=r"odd: HONOURS_NUMERICS names \['dtype'\], not among"):
        experiments.honours_numerics(odd)


@pytest.mark.parametrize("name", NAMES)
def test_params_are_frozen_and_typed(name: str):
    params = experiments.get(name).Params
    assert dataclasses.is_dataclass(params) and params.__dataclass_params__.frozen  # type: ignore[attr-defined]
    hints = typing.get_type_hints(params)
    assert [f.name for f in dataclasses.fields(params) if f.name not in hints] == []


@pytest.mark.parametrize("name", NAMES)
def test_reads_name_registered_experiments(name: str):
    module = experiments.get(name)
    reads = tuple(module.READS) + tuple(getattr(module, "READS_OPTIONAL", ()))
    assert set(reads) <= set(NAMES)
    assert name not in reads
    assert set(module.READS).isdisjoint(getattr(module, "READS_OPTIONAL", ()))


@pytest.mark.parametrize("name", NAMES)
def test_a_tiny_run_stores_only_what_stores_declares(store_path: Path, name: str):
    patterns = parse_stores(experiments.get(name).STORES)
    with Store(store_path) as store:
        runs = store.runs(experiment=name)
        assert runs, f"the campaign stored no {name} run"
        for run in runs:
            for path, (shape, _) in run.datasets().items():
                found = [p for p in patterns if p.regex.match(path)]
                assert found, f"{name} run {run.task_id} stores {path!r}, not in its STORES"
                assert any(not p.ranks or len(shape) in p.ranks for p in found), (
                    f"{name} {path!r} has shape {shape}, STORES states rank {sorted(found[0].ranks)}"
                )


def test_every_stated_rank_is_seen_in_the_campaign(store_path: Path):
    """The rank check is not vacuous: most declared names state a rank, and the runs hit them."""
    checked = 0
    with Store(store_path) as store:
        for run in store:
            patterns = parse_stores(experiments.get(run.experiment).STORES)
            for path, (shape, _) in run.datasets().items():
                ranks = [p.ranks for p in patterns if p.regex.match(path) and p.ranks]
                checked += bool(ranks) and any(len(shape) in r for r in ranks)
    assert checked >= 100


@pytest.mark.parametrize("name", NAMES)
def test_every_group_of_a_run_opens_in_xarray_with_named_dims(store_path: Path, name: str):
    """#16: each experiment's stored groups open with `xarray.open_dataset(..., engine="h5netcdf")`,
    named dimensions from STORES / DIMS, and the values h5py reads (tests/test_xarray.py)."""
    pytest.importorskip("xarray")
    from test_xarray import assert_opens_in_xarray, groups_with_datasets

    groups = [g for e, g in groups_with_datasets(store_path) if e == name]
    assert groups, f"the campaign stored no {name} group with datasets"
    for group in groups:
        assert_opens_in_xarray(store_path, group)


def test_writer_refuses_an_undeclared_dataset_and_a_wrong_rank(tmp_path: Path):
    import h5py
    import numpy as np

    from toolkit.errors import ContractError
    from toolkit.store.writer import CheckedGroup

    stores = {
        "prompts/<k>/sigma / right_vectors": "[K], [K,D] float64",
        "pairs/<q>/l2 | cosine": "[S,L] float64",
        "trace_*": "[I] per step",
        "views/<m> attrs": "source",
        "summary": "attr: one line",
        "run_ids": "scalar",
    }
    with h5py.File(tmp_path / "shard.h5", "w") as handle:
        out = CheckedGroup.for_experiment(handle, "exp0.demo", stores)
        group = out.create_group("prompts/000")
        group.create_dataset("sigma", data=np.zeros(3))
        group.create_dataset("right_vectors", data=np.zeros((3, 4)))
        out.require_group("pairs").require_group("001").create_dataset("cosine", data=np.zeros((2, 2)))
        out.create_dataset("trace_gap", data=np.zeros(5))
        out.create_dataset("run_ids", data=3)
        out.create_group("views/000").attrs["source"] = "x"
        out.attrs["summary"] = "text"
        with pytest.raises(ContractError) as undeclared:
            group.create_dataset("residual", data=np.zeros(3))
        with pytest.raises(ContractError) as prefixed:
            group.create_dataset("x_sigma", data=np.zeros(3))
        with pytest.raises(ContractError) as wrong_rank:
            out.create_group("prompts/001").create_dataset("right_vectors", data=np.zeros(3))
        with pytest.raises(ContractError) as views:
            out.create_dataset("views/000/extra", data=np.zeros(1))
    assert str(undeclared.value) == (
        "exp0.demo wrote dataset 'prompts/000/residual', which its STORES does not "
        "declare; add it to the module's STORES (name → shape and meaning) or do not "
        "write it"
    )
    assert "'prompts/000/x_sigma', which its STORES does not declare" in str(prefixed.value)
    assert "'views/000/extra', which its STORES does not declare" in str(views.value)
    assert str(wrong_rank.value) == (
        "exp0.demo wrote dataset 'prompts/001/right_vectors' with rank 1, its STORES "
        "states rank 2 (prompts/<k>/right_vectors); fix the data or the declaration"
    )


def test_writer_states_the_rank_it_expected(tmp_path: Path):
    import h5py
    import numpy as np

    from toolkit.errors import ContractError
    from toolkit.store.writer import CheckedGroup

    with h5py.File(tmp_path / "shard.h5", "w") as handle:
        out = CheckedGroup.for_experiment(handle, "exp0.demo", {"prompts/<k>/eps": "[E] float64 grid"})
        with pytest.raises(ContractError) as err:
            out.create_dataset("prompts/000/eps", data=np.zeros((2, 3)))
    assert str(err.value) == (
        "exp0.demo wrote dataset 'prompts/000/eps' with rank 2, its STORES states rank 1 "
        "(prompts/<k>/eps); fix the data or the declaration"
    )


def test_matching_refuses_an_undeclared_read_and_too_few_runs(store_path: Path):
    from toolkit.context import Inputs
    from toolkit.errors import ContractError, UpstreamError
    from toolkit.manifest import Numerics

    with Store(store_path) as store:
        ids = tuple(store.task_ids())
        inputs = Inputs(store, ids, "exp4.compare", ("exp4.generate",))
        assert sorted(r.numerics["dtype"] for r in inputs.matching("exp4.generate", min_runs=2)) == [
            "bfloat16",
            "float32",
        ]
        assert [r.task_id for r in inputs.matching("exp4.generate", dtype="bfloat16")] == [
            r.task_id for r in store.runs("exp4.generate", ids) if r.numerics["dtype"] == "bfloat16"
        ]
        with pytest.raises(ContractError) as undeclared:
            inputs.matching("exp6.equal_logits")
        with pytest.raises(UpstreamError) as few:
            inputs.matching("exp4.generate", min_runs=3)
        with pytest.raises(UpstreamError) as none:
            inputs.matching("exp4.generate", target="cpu", numerics=Numerics(dtype="float16"))
        with pytest.raises(UpstreamError) as distinct:
            inputs.matching("exp4.generate", dtype="float32", min_distinct=2)
    assert str(undeclared.value) == (
        "exp4.compare reads exp6.equal_logits runs, which its READS does not declare; "
        "add them to the module's READS (or READS_OPTIONAL)"
    )
    assert str(few.value) == (
        "exp4.compare needs at least 3 exp4.generate runs, found 2 (its inputs hold 2 "
        "exp4.generate runs); list the id of an exp4.generate entry under this entry's "
        "`needs`, swept over numerics (e.g. sweep: {dtype: [float32, bfloat16]}) or with "
        "repeats >= 2"
    )
    assert str(none.value) == (
        "exp4.compare found no exp4.generate run with this task's target 'cpu' and numerics "
        "float16/eager/kv (its inputs hold 2 exp4.generate runs); list the id of an "
        "exp4.generate entry under this entry's `needs` with the same targets and numerics "
        "(or sweep them together)"
    )
    assert str(distinct.value) == (
        "exp4.compare needs exp4.generate runs with this task's dtype float32 with at "
        "least 2 different dtype / attn_implementation, found 1 among 1; list the id of "
        "an exp4.generate entry under this entry's `needs` with the same targets and "
        "numerics (or sweep them together), swept over numerics (e.g. sweep: {dtype: "
        "[float32, bfloat16]}) or with repeats >= 2"
    )
    assert isinstance(few.value, ValueError) and few.value.exit_code == 2


def test_ctx_models_gives_the_task_model_or_one_cached_copy():
    import torch

    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.worker import _ModelCache, _TaskModels

    cache = _ModelCache(ModelSpec(source="tiny-random-llama", device="cpu"))
    own = Numerics(dtype="float32", attn_implementation="eager")
    model, _, _, _ = cache.get(own, True)
    models = _TaskModels(cache, own, model)
    assert models.get({**own.to_dict(), "kv_cache": not own.kv_cache}) is model  # a cache path is no other model
    other = models.get({**own.to_dict(), "dtype": "bfloat16"})
    assert other is not model and next(other.parameters()).dtype == torch.bfloat16
    assert models.get(Numerics(dtype="bfloat16", attn_implementation="eager")) is other  # loaded once
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a.to(torch.bfloat16), b)  # the same weights, rounded to the other dtype
    cache.release_extras()
    assert cache.extras == {}
