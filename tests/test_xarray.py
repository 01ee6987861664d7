"""The store opens in xarray (`engine="h5netcdf"`) with named dimensions and coordinates
(`toolkit.store.dims`), after a real campaign's gather, and the names follow STORES and DIMS.

Every group of every task of the shared contract campaign (tests/test_experiment_contract.py, every
registered experiment) is opened there, one test per experiment, with `assert_opens_in_xarray`:
each variable's dimension names and values against a plain h5py read of the same dataset.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from test_experiment_contract import contract_campaign

xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return contract_campaign(tmp_path_factory) / "store.h5"


def _groups_with_datasets(path: Path) -> list[tuple[str, str]]:
    import h5py

    found: list[tuple[str, str]] = []
    with h5py.File(path, "r") as handle:
        for task in handle["tasks"]:
            experiment = handle["tasks"][task].attrs["experiment"]

            def visit(name: str, obj, task=task, experiment=experiment) -> None:
                if isinstance(obj, h5py.Group) and any(isinstance(v, h5py.Dataset) for v in obj.values()):
                    found.append((experiment, f"/tasks/{task}/{name}"))

            visit("", handle["tasks"][task])
            handle["tasks"][task].visititems(visit)
    return [(e, g.rstrip("/")) for e, g in found]


def assert_opens_in_xarray(store: Path, group: str) -> None:
    """Group `group` of `store` opens in xarray with no warning; every dataset has the dimension
    names the writer recorded (a clash-renamed one: `<name>_<length>`) and its h5py values."""
    import h5py

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a duplicate dimension name is only a warning in xarray
        ds = xr.open_dataset(store, group=group, engine="h5netcdf")
    with ds, h5py.File(store, "r") as handle:
        for name, obj in handle[group].items():
            if not isinstance(obj, h5py.Dataset):
                continue
            var = ds[name]
            if obj.attrs.get("toolkit_index_coordinate", False):  # an index made to name a dimension
                assert var.dims == (name,) and np.array_equal(var.values, np.arange(obj.shape[0]))
                continue
            recorded = str(obj.attrs.get("dimension_names", "")).split()
            assert len(var.dims) == obj.ndim == len(recorded), (group, name, var.dims, recorded)
            for got, want, size in zip(var.dims, recorded, obj.shape):
                assert got in (want, f"{want}_{size}"), (group, name, var.dims, recorded)
            if obj.dtype.kind in "biuf":
                assert np.array_equal(var.values, obj[()], equal_nan=obj.dtype.kind == "f"), (group, name)


def groups_with_datasets(path: Path) -> list[tuple[str, str]]:
    """(experiment, group path) of every group of every task that holds a dataset."""
    return _groups_with_datasets(path)


def test_named_dimensions_and_coordinates_of_generate_and_heatmap(store: Path):
    import h5py

    with h5py.File(store, "r") as handle:
        generate = next(g for e, g in _groups_with_datasets(store) if e == "exp4.generate" and g.endswith("000"))
        with xr.open_dataset(store, group=generate, engine="h5netcdf") as ds:
            assert ds["topk_logits"].dims == ("step", "k") and ds["prompt_ids"].dims == ("token",)
            assert ds["final_hidden"].dims == ("step", "hidden")
            assert list(ds["step"].values) == [0, 1]
        heatmap = next(g for e, g in _groups_with_datasets(store) if e == "exp7.heatmap" and g.endswith("maps/000"))
        with xr.open_dataset(store, group=heatmap, engine="h5netcdf") as ds:
            assert ds["gap"].dims == ("e1", "e2") and ds["logits_ab"].dims == ("e1", "e2", "n2")
            e1 = handle[heatmap]["e1"][()]
            assert np.array_equal(ds["e1"].values.view(np.uint64), e1.view(np.uint64))  # the grid itself
            picked = ds["gap"].sel(e1=e1[1]).values
            assert np.array_equal(picked, handle[heatmap]["gap"][1])
        compare = min((g for e, g in _groups_with_datasets(store) if e == "exp4.compare"), key=len)  # the task root
        with xr.open_dataset(store, group=compare, engine="h5netcdf") as ds:
            assert ds["first_divergence"].dims == ("run_i", "run_j", "prompt")
            assert ds["margin_at_divergence"].dims == ("run_i", "run_j", "prompt", "side")


def test_shapes_and_names_from_stores_declarations():
    from toolkit.store.dims import names_for, shapes

    assert shapes("[K|R,E] int64 changed", 2) == [[["K", "E"]], [["R", "E"]]]
    assert shapes("[L] / [T] int64 ids", 2) == [[["L"]], [["T"]]]
    assert shapes("[R,D] or [R,T,D] float64", 1) == [[["R", "D"], ["R", "T", "D"]]]
    assert shapes("scalars: no shape", 3) == [[], [], []]
    assert names_for([["R", "D"], ["R", "T", "D"]], 3, "v", {}) == ["direction", "token", "hidden"]
    assert names_for([["N", "N", "P", "2"]], 4, "m", {"2": "side"}) == ["run_i", "run_j", "prompt", "side"]
    assert names_for([["n1−w+1", "n2−w+1"]], 2, "h", {}) == ["window_e1", "window_e2"]
    assert names_for([["K"]], 2, "odd", {}) == ["odd_dim0", "odd_dim1"]  # stated rank differs
    assert names_for([["T", "K"]], 2, "x", {"T": "step"}) == ["step", "k"]


def test_scales_survive_gather_and_a_clash_gets_its_own_name(tmp_path: Path):
    """Two datasets in one group naming `eps` with different lengths, and a dataset called `k` that
    is not a coordinate: each axis still gets a scale of its own length, in the shard and in the store."""
    import h5py

    from toolkit.store.gather import gather
    from toolkit.store.shard import open_shard
    from toolkit.store.writer import CheckedGroup

    (tmp_path / "plan.json").write_text("{}")
    (tmp_path / "manifest.yaml").write_text("campaign: t\n")
    stores = {"g/eps": "[E] grid", "g/a": "[K,E] values", "g/b": "[E] other grid", "g/k": "[T,T] matrix"}
    attrs = {"experiment": "exp0.demo", "exp_id": "d", "target": "cpu", "repeat": 0, "params": {}, "numerics": {}}
    for task in ("t0", "t1"):  # t1 is appended to the store in place (toolkit.store.journal)
        with open_shard(tmp_path, task, attrs) as root:
            out = CheckedGroup.for_experiment(root, "exp0.demo", stores, {"T": "k"})
            group = out.create_group("g")
            group.create_dataset("eps", data=np.array([0.1, 0.2, 0.3]))
            group.create_dataset("a", data=np.arange(6.0).reshape(2, 3))
            group.create_dataset("b", data=np.arange(5.0))
            group.create_dataset("k", data=np.zeros((4, 4)))
        assert gather(tmp_path).added == [task]
    stored = [(tmp_path / "store.h5", f"/tasks/{t}/g") for t in ("t0", "t1")]
    for path, where in ((tmp_path / "shards" / "t0.h5", "/g"), *stored):
        with xr.open_dataset(path, group=where, engine="h5netcdf") as ds:
            assert ds["a"].dims == ("k_2", "eps") and ds["b"].dims == ("eps_5",)
            assert ds["k"].dims == ("k_i", "k_j")
            assert list(ds["eps"].values) == [0.1, 0.2, 0.3]
        with h5py.File(path, "r") as handle:
            assert handle[where]["a"].dims[1][0].name.endswith("/g/eps")
