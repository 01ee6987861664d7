"""Tables of a store (`toolkit.store.tables`, `Store.table`, `toolkit export`), checked against the
store read with plain h5py on one real tiny campaign (tiny random Llama, CPU): every column the
docs name, the values row by row, and Parquet files that round-trip bit for bit.

The campaign is the contract campaign of tests/test_experiment_contract.py (every registered
experiment at tiny settings), run once per test session and shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_experiment_contract import contract_campaign

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

#: The experiments with a tidy table (docs/tables.md), written out here, not taken from the code.
TABLED = (
    "exp2.lipschitz",
    "exp4.generate",
    "exp4.census",
    "exp4.compare",
    "exp5.module_lipschitz",
    "exp7.heatmap",
    "exp7.zoom",
    "exp7.randomness",
    "pdf.word_prediction",
)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return contract_campaign(tmp_path_factory)


def _h5(campaign: Path):
    import h5py

    return h5py.File(campaign / "store.h5", "r")


def _tasks(handle, experiment: str) -> list[str]:
    return sorted(t for t in handle["tasks"] if handle["tasks"][t].attrs["experiment"] == experiment)


def test_run_table_has_one_row_per_task_and_every_numerics_key_and_param(campaign: Path):
    from toolkit.store.reader import Store

    with Store(campaign / "store.h5") as store:
        runs = store.table("runs")
    with _h5(campaign) as handle:
        ids = sorted(handle["tasks"])
        assert list(runs["task_id"]) == ids
        for row, task_id in zip(runs.itertuples(index=False), ids):
            attrs = handle["tasks"][task_id].attrs
            numerics, params = json.loads(attrs["numerics"]), json.loads(attrs["params"])
            prov = json.loads(attrs["provenance"])
            values = dict(zip(runs.columns, row))
            assert values["experiment"] == attrs["experiment"] and values["exp_id"] == attrs["exp_id"]
            assert values["repeat"] == int(attrs["repeat"]) and values["status"] == "complete"
            for key, value in numerics.items():
                got = values[f"numerics.{key}"]
                assert (pd.isna(got) and value is None) or got == value, (task_id, key)
            for key, value in params.items():
                got = values[f"params.{key}"]
                if value is None:
                    assert pd.isna(got), (task_id, key)
                else:
                    assert (got == json.dumps(value, sort_keys=True)) if isinstance(value, list) else got == value
            for column, value in (("device_name", prov.get("device_name")), ("device", prov.get("device"))):
                assert (pd.isna(values[column]) and value is None) or values[column] == value, (task_id, column)
            assert values["node"] == prov["host"]  # no Slurm: the host
            assert values["started_utc"] == pd.Timestamp(attrs["started_utc"])
        keys = {f"numerics.{k}" for t in ids for k in json.loads(handle["tasks"][t].attrs["numerics"])}
    assert keys <= set(runs.columns)
    assert runs["repeat"].dtype == np.int64 and str(runs["sm_count"].dtype) == "Int64"
    assert str(runs["started_utc"].dtype) == "datetime64[us, UTC]"
    assert runs["sm_count"].isna().all()  # CPU runs: no SM count recorded
    assert runs["image_digest"].isna().all()  # no container


def test_exp4_compare_table_is_one_row_per_pair_and_prompt(campaign: Path):
    from toolkit.store.reader import Store

    with Store(campaign / "store.h5") as store:
        table = store.table("exp4.compare")
    with _h5(campaign) as handle:
        (task,) = _tasks(handle, "exp4.compare")
        group = handle["tasks"][task]
        first, tokens = group["first_divergence"][()], group["tokens_at_divergence"][()]
        margins, bitwise = group["margin_at_divergence"][()], group["first_bitwise_diff"][()]
        run_ids = [t.decode() for t in group["run_task_ids"][()]]
    n, _, p = first.shape
    assert (n, p) == (2, 1) and len(table) == n * (n - 1) // 2 * p
    for row in table.itertuples(index=False):
        i, j, k = row.run_i, row.run_j, row.prompt
        assert i < j and (row.task_i, row.task_j) == (run_ids[i], run_ids[j])
        assert row.first_divergence == first[i, j, k] and row.first_bitwise_diff == bitwise[i, j, k]
        assert (row.token_i, row.token_j) == tuple(tokens[i, j, k])
        assert np.array_equal([row.margin_i, row.margin_j], margins[i, j, k], equal_nan=True)
    assert table["first_divergence"].dtype == np.int32 and table["margin_i"].dtype == np.float64


def test_exp4_generate_table_is_one_row_per_step(campaign: Path):
    from toolkit.store.reader import Store

    with Store(campaign / "store.h5") as store:
        table = store.table("exp4.generate")
    with _h5(campaign) as handle:
        tasks = _tasks(handle, "exp4.generate")
        assert len(tasks) == 2 and len(table) == len(tasks) * 1 * 2  # runs × prompts × steps
        for task in tasks:
            for k in (0,):
                group = handle["tasks"][task][f"prompts/{k:03d}"]
                rows = table[(table.task_id == task) & (table.prompt == k)].sort_values("step")
                assert list(rows.step) == [0, 1]
                assert np.array_equal(rows.token_id.to_numpy(), group["generated_ids"][()])
                assert np.array_equal(rows.logits_hash.to_numpy(), group["logits_hash"][()])
                assert np.array_equal(rows.top1_logit.to_numpy(), group["topk_logits"][:, 0])
                assert np.array_equal(rows.margin.to_numpy().view(np.uint64), group["margin"][()].view(np.uint64))
    assert table["logits_hash"].dtype == np.uint64 and table["top1_logit"].dtype == np.float32


def test_word_sigma_and_map_tables_match_the_store(campaign: Path):
    from toolkit.store.reader import Store

    with Store(campaign / "store.h5") as store:
        words, sigma = store.table("pdf.word_prediction"), store.table("exp2.lipschitz")
        modules, maps = store.table("exp5.module_lipschitz"), store.table("exp7.randomness")
    with _h5(campaign) as handle:
        group = handle["tasks"][_tasks(handle, "pdf.word_prediction")[0]]
        assert list(words.word) == [w.decode() for w in group["words"][()]]
        assert np.array_equal(words.logprob_word.to_numpy(), group["logprob_word"][()], equal_nan=True)
        assert np.array_equal(words.topk_id_2.to_numpy(), group["topk_ids"][:, 1])
        group = handle["tasks"][_tasks(handle, "exp2.lipschitz")[0]]
        assert np.array_equal(sigma.sigma.to_numpy(), group["prompts/000/sigma"][()])
        assert list(sigma.singular_index) == [1] and list(sigma.prompt) == [0]
        group = handle["tasks"][_tasks(handle, "exp5.module_lipschitz")[0]]
        s = group["prompts/000/sigma"][()]  # [L, M, K]
        assert list(modules.module) == ["mlp"] * s.shape[2] and list(modules.layer) == [0] * s.shape[2]
        assert np.array_equal(modules.sigma.to_numpy(), s[0, 0])
        assert list(modules.module_name) == ["model.layers.0.mlp"] * s.shape[2]
        group = handle["tasks"][_tasks(handle, "exp7.randomness")[0]]
        assert list(maps["map"]) == sorted(group["maps"]) and len(maps) == 2  # the heatmap's and the zoom's
        for m, row in zip(sorted(group["maps"]), maps.itertuples(index=False)):
            assert row.morans_i == group[f"maps/{m}"].attrs["morans_i"] or np.isnan(row.morans_i)
            assert (row.n1, row.n2) == group[f"maps/{m}/gap"].shape
            assert row.fraction_gap_positive == np.mean(group[f"maps/{m}/gap"][()] > 0)


def _bits_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "M":
        return a.dtype == b.dtype and np.array_equal(a.view(np.int64), b.view(np.int64))
    if a.dtype.kind == "f":
        return a.dtype == b.dtype and np.array_equal(a.view(f"u{a.dtype.itemsize}"), b.view(f"u{b.dtype.itemsize}"))
    return a.dtype == b.dtype and np.array_equal(a, b)


def test_export_writes_parquet_that_round_trips_exactly(campaign: Path, tmp_path: Path):
    from toolkit.store.reader import Store

    result = run_cli("export", str(campaign), "--out", str(tmp_path))
    assert result.code == 0, result.err
    names = sorted(Path(line).name for line in result.out.split())
    with _h5(campaign) as handle:
        present = {handle["tasks"][t].attrs["experiment"] for t in handle["tasks"]}
    assert names == sorted(f"{n}.parquet" for n in ("runs", *(e for e in TABLED if e in present)))
    assert len(names) >= 9
    with Store(campaign / "store.h5") as store:
        for name in ("runs", "exp4.generate", "exp4.compare", "pdf.word_prediction"):
            frame, back = store.table(name), pd.read_parquet(tmp_path / f"{name}.parquet")
            assert list(back.columns) == list(frame.columns)
            for col in frame.columns:
                if isinstance(frame[col].dtype, np.dtype) and frame[col].dtype.kind in "fiubM":
                    assert _bits_equal(frame[col].to_numpy(), back[col].to_numpy()), (name, col)
                else:
                    assert frame[col].dtype == back[col].dtype and frame[col].equals(back[col]), (name, col)


def test_export_refuses_bad_input_in_one_line(campaign: Path, tmp_path: Path):
    result = run_cli("export", str(campaign), "--experiment", "exp4.compar")
    assert result.code == 2
    assert result.err == (
        "error: --experiment 'exp4.compar': no such table or experiment; did you mean 'exp4.compare'? "
        "toolkit experiments lists the names\n"
    )
    result = run_cli("export", str(campaign), "--experiment", "exp4.divergence")
    assert result.code == 2 and result.err.startswith("error: exp4.divergence has no table (tables: runs, ")
    (tmp_path / "plan.json").write_text("{}")
    result = run_cli("export", str(tmp_path))
    assert result.code == 2 and "no such store; run toolkit submit or toolkit gather first" in result.err
    from toolkit.store.gather import gather

    gather(tmp_path)  # an empty store: no runs at all
    result = run_cli("export", str(tmp_path), "--experiment", "exp4.compare")
    assert result.code == 2
    assert result.err == f"error: {tmp_path / 'store.h5'}: no exp4.compare run in the store; its experiments: none\n"
    result = run_cli("export", str(campaign), "--experiment", "runs", "--format", "csv", "--out", str(tmp_path))
    assert result.code == 0 and pd.read_csv(tmp_path / "runs.csv")["task_id"].tolist() == sorted(
        pd.read_csv(tmp_path / "runs.csv")["task_id"].tolist()
    )


def test_exp4_census_table_is_one_row_per_completion(campaign: Path):
    from toolkit.store.reader import Store

    with Store(campaign / "store.h5") as store:
        table = store.table("exp4.census")
    with _h5(campaign) as handle:
        (task,) = _tasks(handle, "exp4.census")
        group = handle["tasks"][task]["prompts/000"]
        n = group["completion_ids"].shape[0]
        assert len(table) == n and list(table.completion) == list(range(n))
        for name in ("completion_length", "completion_class", "first_divergence", "batch_size", "batch_seed"):
            assert table[name].dtype == group[name].dtype and np.array_equal(table[name].to_numpy(), group[name][()])
        assert list(table.batch_fill) == [f.decode() for f in group["batch_fill"][()]]
        margins = group["margin_at_divergence"][()]
        assert _bits_equal(table.margin_at_divergence.to_numpy(), margins[:, 0])
        assert list(table.is_modal) == [i == int(group["modal_index"][()]) for i in range(n)]


def test_gpu_identity_slurm_node_and_image_digest_columns(tmp_path: Path):
    """A run as a GPU worker under Slurm in a container records it (written here by hand, no GPU
    on this machine): the run table's columns take the values from provenance."""
    from toolkit.store.gather import gather
    from toolkit.store.reader import Store
    from toolkit.store.shard import open_shard

    (tmp_path / "plan.json").write_text("{}")
    provenance = {
        "host": "login1",
        "device": "cuda:0",
        "slurm": {"slurmd_nodename": "gpu-node-07"},
        "container": {"image": "toolkit:0.1.0", "image_digest": "sha256:" + "ab" * 32},
        "device_identity": {"sku": "NVIDIA H100 80GB HBM3", "sm_count": 132, "driver": "570.86"},
    }
    attrs = {"experiment": "exp4.generate", "exp_id": "g", "target": "h100", "repeat": 1, "params": {"top_k": 5}}
    with open_shard(tmp_path, "t0", {**attrs, "numerics": {"dtype": "bfloat16"}, "provenance": provenance}):
        pass
    gather(tmp_path)
    with Store(tmp_path / "store.h5") as store:
        row = store.table("runs").iloc[0]
    assert (row.device_name, row.sm_count, row.node) == ("NVIDIA H100 80GB HBM3", 132, "gpu-node-07")
    assert (row.image, row.image_digest) == ("toolkit:0.1.0", "sha256:" + "ab" * 32)
    assert row["provenance.device_identity.driver"] == "570.86" and row["numerics.dtype"] == "bfloat16"
    assert (row["target"], row["repeat"], row["params.top_k"]) == ("h100", 1, 5)
