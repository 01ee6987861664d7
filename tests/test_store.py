"""Shards, gather and the reader on real HDF5 files (no model)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SHARD_ATTRS

from toolkit.errors import StoreError
from toolkit.store import schema
from toolkit.store.campaign_dir import CampaignDir
from toolkit.store.gather import gather
from toolkit.store.reader import Store
from toolkit.store.shard import open_shard


def write_shard(folder: Path, task_id: str, value: float) -> None:
    with open_shard(folder, task_id, SHARD_ATTRS) as out:
        out.create_dataset("x", data=np.full((4, 3), value, np.float32))
        out.create_dataset("g/ids", data=np.arange(5))


def test_shard_is_published_only_when_complete(tmp_path):
    with open_shard(tmp_path, "t1", SHARD_ATTRS) as out:
        out.create_dataset("x", data=np.ones(3))
        assert not CampaignDir(tmp_path).shard_path("t1").exists()
        hidden = [p.name for p in CampaignDir(tmp_path).shards_dir.iterdir()]
        assert len(hidden) == 1 and hidden[0].startswith(".t1.h5~") and hidden[0].endswith(".tmp")
    with h5py.File(CampaignDir(tmp_path).shard_path("t1"), "r") as shard:
        assert shard.attrs["status"] == "complete"
        assert "x" in shard.attrs["checksums"]
        assert shard.attrs["params"] == '{"max_new_tokens": 3}'
    assert [p.name for p in CampaignDir(tmp_path).shards_dir.iterdir()] == ["t1.h5"]


def test_failed_task_leaves_report_and_no_shard_until_success(tmp_path):
    with pytest.raises(ValueError, match="boom"):
        with open_shard(tmp_path, "t1", SHARD_ATTRS):
            raise ValueError("boom")
    assert CampaignDir(tmp_path).completed_shards() == {}
    assert CampaignDir(tmp_path).failed_tasks()["t1"]["error"] == "ValueError: boom"
    write_shard(tmp_path, "t1", 1.0)
    assert CampaignDir(tmp_path).failed_tasks() == {} and set(CampaignDir(tmp_path).completed_shards()) == {"t1"}


def test_gather_copies_verifies_and_is_idempotent(tmp_path):
    write_shard(tmp_path, "a", 1.0)
    write_shard(tmp_path, "b", 2.0)
    report = gather(tmp_path, manifest_text="campaign: x\n")
    assert sorted(report.added) == ["a", "b"] and report.unchanged == 0
    with Store(CampaignDir(tmp_path).store_path) as store:
        assert store.task_ids() == ["a", "b"]
        assert store.attrs["schema_version"] == schema.SCHEMA_VERSION
        assert store.attrs["manifest"] == "campaign: x\n"
        run = store.run("b")
        assert np.array_equal(run["x"], np.full((4, 3), 2.0, np.float32))
        assert run.params == {"max_new_tokens": 3} and run.target == "a100"
    mtime = CampaignDir(tmp_path).store_path.stat().st_mtime_ns
    again = gather(tmp_path)
    assert again.added == [] and again.unchanged == 2
    assert CampaignDir(tmp_path).store_path.stat().st_mtime_ns == mtime  # nothing new: file not rewritten


def test_rerun_shard_replaces_store_group(tmp_path):
    write_shard(tmp_path, "a", 1.0)
    gather(tmp_path)
    write_shard(tmp_path, "a", 5.0)
    report = gather(tmp_path)
    assert report.replaced == ["a"]
    with Store(CampaignDir(tmp_path).store_path) as store:
        assert store.run("a")["x"][0, 0] == 5.0


def test_rebuild_from_shards_alone(tmp_path):
    for i in range(3):
        write_shard(tmp_path, f"t{i}", float(i))
    gather(tmp_path)
    CampaignDir(tmp_path).store_path.write_bytes(b"not hdf5 at all")
    report = gather(tmp_path, rebuild=True)
    assert sorted(report.added) == ["t0", "t1", "t2"]
    with Store(CampaignDir(tmp_path).store_path) as store:
        assert store.run("t2")["x"][3, 2] == 2.0


def test_unreadable_store_is_rebuilt_and_corrupt_shard_reported(tmp_path):
    write_shard(tmp_path, "good", 1.0)
    (CampaignDir(tmp_path).shards_dir / "bad.h5").write_bytes(b"\x89HDF garbage")
    CampaignDir(tmp_path).store_path.write_bytes(b"garbage")
    report = gather(tmp_path)
    assert report.added == ["good"] and list(report.bad_shards) == ["bad"]
    with Store(CampaignDir(tmp_path).store_path) as store:
        assert store.task_ids() == ["good"]


def test_gather_lock_of_live_process_blocks_and_stale_lock_is_taken(tmp_path):
    write_shard(tmp_path, "a", 1.0)
    lock = tmp_path / "gather.lock"
    lock.write_text(f"{socket.gethostname()} {os.getpid()}")
    with pytest.raises(StoreError, match="another gather holds"):
        gather(tmp_path)
    lock.write_text(f"{socket.gethostname()} 999999999")
    assert gather(tmp_path).added == ["a"]
    assert not lock.exists()


def test_store_errors_are_clear(tmp_path):
    with pytest.raises(StoreError, match="no store yet"):
        Store(tmp_path / "store.h5")
    with pytest.raises(StoreError, match="no such campaign folder"):
        gather(tmp_path / "missing")


def test_variable_length_strings_are_checksummed_by_value(tmp_path):
    words = ["naïve", "", "word with spaces", "ünïcödé"]
    with open_shard(tmp_path, "s", SHARD_ATTRS) as out:
        out.create_dataset("words", data=words, dtype=h5py.string_dtype("utf-8"))
    report = gather(tmp_path)  # re-reads the copy: a checksum of object pointers would not match
    assert report.added == ["s"]
    with Store(CampaignDir(tmp_path).store_path) as store:
        assert [w.decode() for w in store.run("s")["words"]] == words
    with open_shard(tmp_path, "t", SHARD_ATTRS) as out:
        out.create_dataset("words", data=["other", "", "word with spaces", "ünïcödé"], dtype=h5py.string_dtype("utf-8"))
    sums = {
        task: json.loads(h5py.File(CampaignDir(tmp_path).shard_path(task), "r").attrs["checksums"])["words"]
        for task in ("s", "t")
    }
    assert sums["s"] != sums["t"]
