"""Gather reads each shard once and checks its copy (toolkit.store.shard_copy), on real HDF5 files:
large shards (hashed on a second thread) land bit for bit, a shard whose bytes changed on disk is
refused in a first gather and in an append, and a copy that differs from a sound shard stops the
gather with the store as it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SHARD_ATTRS

from toolkit.errors import StoreError
from toolkit.store import shard_copy
from toolkit.store.campaign_dir import CampaignDir
from toolkit.store.gather import gather
from toolkit.store.reader import Store
from toolkit.store.shard import open_shard

BIG = 1_500_000  # float32 values: 6 MB, above HASH_ON_THREAD_BYTES, so the copy is hashed on the thread


def write_shard(folder: Path, task_id: str, seed: int, size: int = BIG) -> dict[str, np.ndarray]:
    """A shard with one large random dataset and a small one; returns what it holds."""
    rng = np.random.default_rng(seed)
    data = {"x": rng.standard_normal(size, dtype=np.float32), "g/ids": np.arange(7, dtype=np.int64) + seed}
    with open_shard(folder, task_id, {**SHARD_ATTRS, "repeat": seed}) as out:
        for name, values in data.items():
            out.create_dataset(name, data=values)  # contiguous: its bytes sit at one offset in the file
    return data


def flip_one_bit(shard: Path, dataset: str) -> None:
    """Change the lowest bit of the first byte of `dataset` in the file, as a failing disk would."""
    with h5py.File(shard, "r") as handle:
        offset = handle[dataset].id.get_offset()
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0x01
    shard.write_bytes(bytes(data))


def test_large_shards_are_stored_bit_for_bit(tmp_path):
    assert BIG * 4 >= shard_copy.HASH_ON_THREAD_BYTES
    written = {f"t{i}": write_shard(tmp_path, f"t{i}", i) for i in range(3)}
    report = gather(tmp_path)
    assert report.added == ["t0", "t1", "t2"] and not report.bad_shards
    with h5py.File(CampaignDir(tmp_path).store_path, "r") as store:
        for task_id, data in written.items():
            recorded = json.loads(store[f"tasks/{task_id}"].attrs["checksums"])
            for name, values in data.items():
                copy = store[f"tasks/{task_id}/{name}"][()]
                assert copy.dtype == values.dtype and copy.tobytes() == values.tobytes()
                assert recorded[name] == hashlib.sha256(values.tobytes()).hexdigest()


def test_changed_large_shard_is_refused_in_a_first_gather(tmp_path):
    good = {t: write_shard(tmp_path, t, i) for i, t in enumerate(["a", "c"])}
    write_shard(tmp_path, "b", 5)
    shard = CampaignDir(tmp_path).shard_path("b")
    flip_one_bit(shard, "x")
    changed = shard.read_bytes()

    report = gather(tmp_path)
    assert report.added == ["a", "c"] and report.replaced == []
    assert report.bad_shards == {
        "b": "the shard's data no longer matches the checksums its worker recorded (dataset(s) x)"
    }
    with Store(CampaignDir(tmp_path).store_path) as store:
        assert store.task_ids() == ["a", "c"]
        for task_id, data in good.items():
            assert store.run(task_id)["x"][()].tobytes() == data["x"].tobytes()
    assert not shard.exists() and CampaignDir(tmp_path).corrupt_path("b").read_bytes() == changed


def test_changed_large_shard_is_refused_in_an_append(tmp_path):
    first = write_shard(tmp_path, "a", 0)
    assert gather(tmp_path).added == ["a"]
    added = write_shard(tmp_path, "c", 2)
    write_shard(tmp_path, "b", 1)
    flip_one_bit(CampaignDir(tmp_path).shard_path("b"), "g/ids")

    report = gather(tmp_path)
    assert report.added == ["c"] and report.unchanged == 1
    assert list(report.bad_shards) == ["b"] and "(dataset(s) g/ids)" in report.bad_shards["b"]
    with Store(CampaignDir(tmp_path).store_path) as store:
        assert store.task_ids() == ["a", "c"]
        assert store.run("a")["x"][()].tobytes() == first["x"].tobytes()
        assert store.run("c")["x"][()].tobytes() == added["x"].tobytes()
    assert CampaignDir(tmp_path).failed_tasks()["b"]["error"].startswith("ShardCorrupt: needs a rerun:")


@pytest.mark.parametrize("size", [BIG, 10], ids=["hashed-on-thread", "hashed-inline"])
def test_copy_that_differs_from_a_sound_shard_stops_the_gather(tmp_path, monkeypatch, size):
    write_shard(tmp_path, "a", 0)
    assert gather(tmp_path).added == ["a"]
    write_shard(tmp_path, "b", 1, size)
    store = CampaignDir(tmp_path).store_path
    before = store.read_bytes()
    shards = {p.name: p.read_bytes() for p in CampaignDir(tmp_path).shards_dir.glob("*.h5")}
    real = shard_copy.dataset_checksums

    def copy_read_back_wrong(group: h5py.Group) -> dict[str, str]:  # a fault of the store's disk only
        sums = real(group)
        return {**sums, "x": "0" * 64} if group.name == "/tasks/b" else sums

    monkeypatch.setattr(shard_copy, "dataset_checksums", copy_read_back_wrong)
    with pytest.raises(StoreError) as raised:
        gather(tmp_path)
    assert str(raised.value) == (
        f"verification failed for task b: the copy in the store differs from "
        f"{CampaignDir(tmp_path).shard_path('b')}; the store was left unchanged — check the disk and "
        "rerun toolkit gather"
    )
    assert store.read_bytes() == before
    assert {p.name: p.read_bytes() for p in CampaignDir(tmp_path).shards_dir.glob("*.h5")} == shards
    monkeypatch.undo()
    assert gather(tmp_path).added == ["b"]
