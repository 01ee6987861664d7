"""Gather under faults, with real processes and real HDF5: a full disk (a small tmpfs) and a shard
whose data no longer matches the checksums its worker recorded (one byte flipped on disk)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import pytest
from conftest import run_cli

from toolkit.plan import Task
from toolkit.store.campaign_dir import CampaignDir
from toolkit.store.gather import SPACE_MARGIN, gather
from toolkit.store.reader import Store

GENERATE_ONLY = """\
campaign: {campaign}
output: {output}
model: {{source: tiny-random-llama, dtype: float32, attn_implementation: eager}}
prompts: ["The capital of France is", "Numbers: 1, 2, 3,"]
targets: [a100, h100]
experiments:
  - name: exp4.generate
    id: generate
    params: {{max_new_tokens: 3, top_k: 5, stop_at_eos: false}}
    repeats: 2
"""
DATASET = "prompts/000/topk_logits"


def _sha256s(folder: Path) -> dict[str, str]:
    """sha256 of store.h5 and of every shard (the files a gather must never damage)."""
    files = [CampaignDir(folder).store_path, *sorted(CampaignDir(folder).shards_dir.glob("*.h5"))]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.exists()}


def _shards_only(tmp_path: Path, campaign: str) -> Path:
    """A 4-task campaign whose gather was SIGKILLed: 4 published shards, no store yet."""
    manifest = tmp_path / f"{campaign}.yaml"
    manifest.write_text(GENERATE_ONLY.format(campaign=campaign, output=tmp_path / "campaigns"))
    killed = run_cli(
        "submit", str(manifest), "--executor", "local", "--no-plot", env={"TOOLKIT_FAULT": "gather-merge:1"}
    )
    assert killed.code == -9, killed.err
    folder = tmp_path / "campaigns" / campaign
    assert len(list(CampaignDir(folder).shards_dir.glob("*.h5"))) == 4 and not CampaignDir(folder).store_path.exists()
    return folder


def _labels(folder: Path) -> dict[str, str]:
    plan = json.loads((folder / "plan.json").read_text())
    return {t: Task.from_json(data).label() for t, data in plan["tasks"].items()}


def _published(folder: Path) -> list[str]:
    """Task ids the workers of every submission printed as published, in log order."""
    lines = []
    for log in sorted((folder / "jobs").rglob("*_log.out")):
        lines += re.findall(r"^task (\w+) \(.*\): published$", log.read_text(), re.MULTILINE)
    return lines


def test_shard_that_no_longer_matches_its_checksums_is_refused_and_rerun(tmp_path):
    folder = _shards_only(tmp_path, "flipped")
    manifest = tmp_path / "flipped.yaml"
    labels = _labels(folder)
    bad = sorted(labels)[0]
    shard = CampaignDir(folder).shard_path(bad)
    with h5py.File(shard, "r") as handle:
        offset = handle[DATASET].id.get_offset()
        run_uid = handle.attrs["run_uid"]
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0x01  # the lowest mantissa bit of one float32 logit
    shard.write_bytes(bytes(data))

    gathered = run_cli("gather", str(folder))
    store = CampaignDir(folder).store_path
    why = f"the shard's data no longer matches the checksums its worker recorded (dataset(s) {DATASET})"
    assert gathered.code == 1
    assert gathered.out == (
        f"gathered 3 new and 0 rerun task(s), 0 already in {store}; refused 1 shard(s): {bad} "
        "(toolkit status says why; toolkit submit reruns them)\n"
    )
    assert gathered.err == (
        f"error: refused 1 shard(s), the other tasks are in {store} — task {bad}: {why}; "
        "rerun toolkit submit to rerun just those\n"
    )
    with Store(store) as opened:  # readable, with the three good tasks
        assert opened.task_ids() == sorted(set(labels) - {bad})
    aside = CampaignDir(folder).corrupt_path(bad)
    assert not shard.exists() and aside.read_bytes() == bytes(data)  # kept aside, byte for byte

    status = run_cli("status", str(folder))
    assert status.code == 0
    assert status.out.splitlines()[0] == "4 task(s): 1 failed, 3 stored"
    [line] = [x for x in status.out.splitlines() if x.startswith(f"  {bad}")]
    assert line == (
        f"  {bad}  stage 1  failed   {labels[bad]}  ShardCorrupt: needs a rerun: {why}; gather refused "
        f"it and kept it as {aside}; rerun toolkit submit"
    )

    with Store(store) as opened:
        before = {t: opened.run(t).attrs["run_uid"] for t in opened.task_ids()}
    resumed = run_cli("submit", str(manifest), "--executor", "local", "--no-plot")
    assert resumed.code == 0, resumed.err
    assert "4 task(s), 3 already complete, 1 to run" in resumed.out
    assert _published(folder) == sorted(labels) + [bad]  # the first submit ran all four, the resubmit just one
    with Store(store) as opened:
        after = {t: opened.run(t).attrs["run_uid"] for t in opened.task_ids()}
    assert set(after) == set(labels)
    assert {t: after[t] for t in before} == before  # the three good tasks were not rerun
    assert after[bad] != run_uid
    assert run_cli("status", str(folder)).out.splitlines()[0] == "4 task(s): 4 stored"


@pytest.fixture
def tmpfs(tmp_path):
    """A folder with a tmpfs mounted on it (the tests run as root); unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, check=False)


def _mount(mount: Path, size: int, remount: bool = False) -> None:
    options = f"{'remount,' if remount else ''}size={size}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True, capture_output=True)


def test_full_disk_during_gather_keeps_store_and_shards_and_a_later_gather_succeeds(tmp_path, tmpfs):
    source = _shards_only(tmp_path, "full")
    shards = sorted(CampaignDir(source).shards_dir.glob("*.h5"))
    older = tmp_path / "older"  # the previous store: a gather of the first two shards
    (older / "shards").mkdir(parents=True)
    for path in shards[:2]:
        shutil.copy(path, older / "shards")
    gather(older, manifest_text=(source / "manifest.yaml").read_text())

    _mount(tmpfs, 1024 * 1024)
    folder = tmpfs / "full"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("jobs", "*.lock"))
    shutil.copy(CampaignDir(older).store_path, CampaignDir(folder).store_path)
    used = shutil.disk_usage(tmpfs).used
    _mount(tmpfs, used + 8192, remount=True)  # two pages free: the lock fits, a new store does not
    before = _sha256s(folder)
    need = sum(p.stat().st_size for p in shards[2:]) + SPACE_MARGIN  # appended in place: the new tasks only

    full = run_cli("gather", str(folder))
    free_while_locked = shutil.disk_usage(tmpfs).free - 4096  # gather.lock took one page of tmpfs
    assert full.code == 1 and full.out == ""
    pattern = (
        rf"error: {re.escape(str(folder))}/store\.h5: no space to add the new tasks: they "
        rf"need {need} bytes \({need / 1024:.1f} KiB\), {free_while_locked} bytes "
        rf"\({free_while_locked / 1024:.1f} KiB\) are free; store\.h5 and the shards are unchanged — free "
        r"space there or move the campaign folder, then rerun toolkit gather\n"
    )
    assert re.fullmatch(pattern, full.err), full.err
    assert _sha256s(folder) == before
    assert not list(folder.glob(".store.h5*")) and not (folder / "gather.lock").exists()
    assert not (folder / "store.h5.journal").exists()

    _mount(tmpfs, 1024 * 1024, remount=True)
    roomy = run_cli("gather", str(folder))
    assert roomy.code == 0, roomy.err
    assert roomy.out.startswith("gathered 2 new and 0 rerun task(s), 2 already in")
    with Store(CampaignDir(folder).store_path) as store:
        assert store.task_ids() == sorted(p.name[:-3] for p in shards)
