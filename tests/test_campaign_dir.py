"""`toolkit.store.campaign_dir.CampaignDir`, the one owner of a campaign folder's layout: its paths,
plan.json and slurm.json (bytes as before the owner existed), task states from real files, its
locks and its store handle; and a scan of the package that no other module spells the layout."""

from __future__ import annotations

import ast
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SHARD_ATTRS

from toolkit import campaign
from toolkit.errors import StoreError
from toolkit.manifest import load_manifest
from toolkit.plan import build_plan, canonical_json, model_identity
from toolkit.store.campaign_dir import CampaignDir, SlurmSubmission
from toolkit.store.files import temp_name
from toolkit.store.gather import gather
from toolkit.store.lock import LockBusy
from toolkit.store.shard import open_shard


def _shard(folder: Path, task_id: str) -> None:
    with open_shard(folder, task_id, SHARD_ATTRS) as out:
        out.create_dataset("x", data=np.arange(3, dtype=np.float32))


def test_every_path_of_the_layout(tmp_path):
    layout = CampaignDir(tmp_path / "c")
    root = tmp_path / "c"
    assert [
        layout.store_path,
        layout.plan_path,
        layout.slurm_record_path,
        layout.manifest_path,
        layout.shards_dir,
        layout.jobs_dir,
        layout.figures_dir,
        layout.gather_lock_path,
        layout.submit_lock_path,
    ] == [
        root / "store.h5",
        root / "plan.json",
        root / "slurm.json",
        root / "manifest.yaml",
        root / "shards",
        root / "jobs",
        root / "figures",
        root / "gather.lock",
        root / "submit.lock",
    ]
    assert [
        layout.shard_path("t1"),
        layout.failure_path("t1"),
        layout.corrupt_path("t1"),
        layout.task_lock_path("t1"),
        layout.checkpoint_dir("t1"),
    ] == [
        root / "shards" / "t1.h5",
        root / "shards" / "t1.failed.json",
        root / "shards" / "t1.h5.corrupt",
        root / "shards" / ".t1.lock",
        root / "shards" / "t1.ckpt",
    ]
    fresh = layout.new_jobs_dir()
    assert fresh.parent == root / "jobs" and len(fresh.name) == len("20261206-081500-123456")
    assert not root.exists()  # naming paths creates nothing


def test_prepare_writes_plan_and_manifest_byte_for_byte_as_before(tiny_manifest, tmp_path):
    path = tiny_manifest()
    plan = build_plan(load_manifest(path))
    folder = tmp_path / "camp"
    campaign.prepare(plan, folder)
    m = plan.manifest
    payload = {
        "campaign": m.campaign,
        "model": m.model.to_dict(),
        "model_identity": model_identity(m),
        "prompts": list(m.prompts),
        "tasks": {tid: t.to_json() for tid, t in plan.tasks.items()},
        "stages": [[g.task_ids for g in s.groups] for s in plan.stages],
    }
    before = json.dumps(json.loads(canonical_json(payload)), indent=1)  # the writer before CampaignDir
    layout = CampaignDir(folder)
    assert layout.plan_path.read_text() == before
    assert layout.manifest_path.read_text() == path.read_text() == layout.manifest_text()
    assert layout.shards_dir.is_dir() and layout.has_plan()
    read = layout.read_plan()
    assert read == json.loads(before)
    assert sorted(read["tasks"]) == sorted(plan.tasks) and read["prompts"] == list(m.prompts)
    assert CampaignDir(tmp_path / "none").manifest_text() == ""


def test_slurm_record_appends_submissions_and_keeps_the_file_format(tmp_path):
    layout = CampaignDir(tmp_path)
    assert layout.slurm_submissions() == [] and not layout.has_slurm_record()
    first: SlurmSubmission = {
        "folder": "/j/1",
        "stages": [
            {"index": 1, "arrays": [{"job_id": "11", "target": "a100", "task_ids": ["t1", "t2"]}], "gather": "12"}
        ],
    }
    second: SlurmSubmission = {"folder": "/j/2", "stages": [], "container": {"image": "x"}}
    layout.append_slurm_submission(first)
    assert layout.slurm_record_path.read_text() == json.dumps({"submissions": [first]}, indent=1)
    layout.append_slurm_submission(second)
    assert layout.slurm_record_path.read_text() == json.dumps({"submissions": [first, second]}, indent=1)
    assert layout.slurm_submissions() == [first, second] and layout.has_slurm_record()


def test_task_states_come_from_the_files(tmp_path):
    layout = CampaignDir(tmp_path)
    assert (layout.completed_shards(), layout.failed_tasks(), layout.running_task_ids(), layout.stored_task_ids()) == (
        {},
        {},
        set(),
        set(),
    )
    _shard(tmp_path, "a")
    gather(tmp_path, manifest_text="campaign: x\n")
    _shard(tmp_path, "b")
    with pytest.raises(ValueError, match="boom"), open_shard(tmp_path, "c", SHARD_ATTRS):
        raise ValueError("boom")
    live = temp_name(layout.shard_path("d"))  # this process writes d's shard
    live.write_bytes(b"")
    dead = layout.shards_dir / f".e.h5~{socket.gethostname()}~{2**22 + 7}.tmp"  # a pid above pid_max: gone
    dead.write_bytes(b"")
    layout.corrupt_path("f").write_bytes(b"refused")
    assert live.name == f".d.h5~{socket.gethostname()}~{os.getpid()}.tmp"
    assert layout.completed_shards() == {"a": layout.shard_path("a"), "b": layout.shard_path("b")}
    assert list(layout.failed_tasks()) == ["c"] and layout.failed_tasks()["c"]["error"] == "ValueError: boom"
    assert layout.running_task_ids() == {"d"}
    assert layout.stored_task_ids() == {"a"} and layout.done_task_ids() == {"a", "b"}
    layout.remove_stale_shard_temps()
    assert live.exists() and not dead.exists()
    layout.failure_path("g").write_text("{not json")
    assert layout.failed_tasks()["g"] == {"error": "unreadable failure report"}


def test_locks_are_the_layouts_files_and_refuse_a_second_holder(tmp_path):
    layout = CampaignDir(tmp_path / "new")
    with layout.submit_lock():
        assert layout.submit_lock_path.is_file()
        with pytest.raises(LockBusy) as busy:
            layout.submit_lock().__enter__()
    assert str(busy.value).startswith(
        f"another toolkit submit of this campaign is running (pid {os.getpid()} on host {socket.gethostname()} since "
    )
    assert str(busy.value).endswith(
        f"); follow it with toolkit status {layout.root}, and rerun toolkit submit once "
        "it has ended if tasks are missing"
    )
    assert not layout.submit_lock_path.exists()
    with layout.gather_lock(), pytest.raises(LockBusy, match=r"^another gather holds .*gather\.lock \(pid "):
        gather(layout.root)
    layout.shards_dir.mkdir()
    with layout.task_lock("t1") as lock:
        assert layout.task_lock_path("t1").is_file() and not lock.waited
    assert not layout.task_lock_path("t1").exists()


def test_the_store_handle(tmp_path):
    layout = CampaignDir(tmp_path)
    with pytest.raises(StoreError) as missing:
        layout.open_store()
    assert str(missing.value) == f"{tmp_path / 'store.h5'}: no store yet; run toolkit submit or toolkit gather first"
    _shard(tmp_path, "a")
    gather(tmp_path, manifest_text="campaign: x\n")
    with layout.open_store() as store:
        assert store.task_ids() == ["a"] and store.attrs["manifest"] == "campaign: x\n"
        assert store.run("a")["x"].tolist() == [0.0, 1.0, 2.0]


LAYOUT_NAMES = {
    "plan.json",
    "slurm.json",
    "manifest.yaml",
    "gather.lock",
    "submit.lock",
    "store.h5",
    "shards",
    "jobs",
    "figures",
    ".ckpt",
    ".corrupt",
    "failed.json",
    ".failed.json",
    ".h5.corrupt",
    ".lock",
}


def test_no_module_but_the_owner_spells_the_layout_or_opens_hdf5_raw():
    spelled, raw_h5 = [], []
    for path in sorted((REPO / "toolkit").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if isinstance(node, ast.Constant) and node.value in LAYOUT_NAMES and rel != "toolkit/store/campaign_dir.py":
                spelled.append(f"{rel}:{node.lineno} {node.value!r}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("File", "is_hdf5")
                and isinstance(node.value, ast.Name)
                and node.value.id == "h5py"
                and not rel.startswith("toolkit/store/")
            ):
                raw_h5.append(f"{rel}:{node.lineno}")
    assert spelled == [] and raw_h5 == []
