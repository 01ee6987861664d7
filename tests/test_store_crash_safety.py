"""Crash safety with real processes: a worker SIGKILLed while publishing its shard, and a gather
SIGKILLed mid-write.  TOOLKIT_FAULT makes the process kill itself at a chosen point, so the
crash lands exactly there every time."""

from __future__ import annotations

import socket
from pathlib import Path

import h5py
import numpy as np
from conftest import run_cli

from toolkit.store.reader import Store


def _tasks(store_path: Path) -> dict[str, str]:
    with h5py.File(store_path, "r") as handle:
        return {t: handle["tasks"][t].attrs["run_uid"] for t in handle["tasks"]}


def _generate_data(store_path: Path) -> dict[str, dict[str, bytes]]:
    with Store(store_path) as store:
        return {r.task_id: {k: r[k].tobytes() for k in r.datasets()} for r in store.runs("exp4.generate")}


def test_worker_killed_mid_shard_loses_nothing(tiny_manifest, tmp_path):
    manifest = tiny_manifest(campaign="killed", tokens=4)
    folder = tmp_path / "campaigns" / "killed"
    crashed = run_cli(
        "submit", str(manifest), "--executor", "local", "--no-plot", env={"TOOLKIT_FAULT": "shard-publish:2"}
    )
    assert crashed.code == 1
    err_lines = crashed.err.strip().splitlines()
    assert err_lines[-1].startswith("error: stage 1/2 (generate): 3 task(s) did not complete")
    leftovers = [p.name for p in (folder / "shards").glob(".*.tmp")]
    assert len(leftovers) == 1 and f"~{socket.gethostname()}~" in leftovers[0]  # the half-written shard
    assert len(_tasks(folder / "store.h5")) == 1  # the first shard was published and gathered
    status = run_cli("status", str(folder))
    assert status.out.startswith("5 task(s): 4 pending, 1 stored")

    resumed = run_cli("submit", str(manifest), "--executor", "local", "--no-plot")
    assert resumed.code == 0, resumed.err
    assert "1 already complete, 4 to run" in resumed.out
    assert len(_tasks(folder / "store.h5")) == 5
    assert not list((folder / "shards").glob(".*.tmp"))  # the dead worker's temp file was cleaned

    clean = tiny_manifest(campaign="clean", tokens=4)
    assert run_cli("submit", str(clean), "--executor", "local", "--no-plot").code == 0
    assert _generate_data(folder / "store.h5") == _generate_data(tmp_path / "campaigns" / "clean" / "store.h5")


def test_gather_killed_mid_write_keeps_old_store_and_shards(tiny_manifest, tmp_path):
    manifest = tiny_manifest(campaign="gathered", tokens=3)
    folder = tmp_path / "campaigns" / "gathered"
    assert run_cli("submit", str(manifest), "--executor", "local", "--no-plot").code == 0
    before = _tasks(folder / "store.h5")

    crashed = run_cli(
        "submit", str(manifest), "--executor", "local", "--no-plot", "--force", env={"TOOLKIT_FAULT": "gather-merge:2"}
    )
    assert crashed.code == -9  # the submitting process itself was killed inside gather
    assert _tasks(folder / "store.h5") == before  # the old store is intact and readable
    assert (folder / "store.h5.journal").read_bytes().startswith(b"toolkit store journal 1\nP")  # pending
    assert (folder / "gather.lock").exists()

    gathered = run_cli("gather", str(folder))
    assert gathered.code == 0, gathered.err
    assert gathered.out.startswith(
        f"undid the interrupted gather's unfinished append to {folder / 'store.h5'}\n"
        "gathered 0 new and 4 rerun task(s), 1 already in"
    )
    after = _tasks(folder / "store.h5")
    assert set(after) == set(before)
    assert sum(after[t] != before[t] for t in after) == 4  # the reruns replaced the old groups
    assert not list(folder.glob(".store.h5*")) and not (folder / "gather.lock").exists()
    assert not (folder / "store.h5.journal").exists()

    rebuilt = run_cli("gather", str(folder), "--rebuild")
    assert rebuilt.code == 0 and "gathered 5 new" in rebuilt.out
    assert _tasks(folder / "store.h5") == after
    finished = run_cli("submit", str(manifest), "--executor", "local", "--no-plot")
    assert finished.code == 0 and "5 already complete, 0 to run" in finished.out
    with Store(folder / "store.h5") as store:
        table = store.runs("exp4.compare")[0]
        assert np.all(table["first_divergence"] == -1)
