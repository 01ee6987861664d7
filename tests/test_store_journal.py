"""In-place appends to store.h5 (toolkit.store.journal): the journaled file against a plain file,
and gathers SIGKILLed at each step of the commit, with real processes and real HDF5.  The known
answers come from plain bytearrays, plain h5py and the shards themselves."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from toolkit.errors import StoreError
from toolkit.store import gather as gather_module
from toolkit.store import journal
from toolkit.store.campaign_dir import CampaignDir
from toolkit.store.gather import gather
from toolkit.store.journal import PAGE, JournaledFile, journal_path, recover
from toolkit.store.lock import holder_gone, process_start
from toolkit.store.reader import Store
from toolkit.store.shard import open_shard


def _random_ops(handle: JournaledFile, model: bytearray, rng: np.random.Generator, count: int) -> None:
    """Writes (some across the original end), cuts (some below it) and reads, mirrored on `model`."""
    base = len(model)
    for _ in range(count):
        op = rng.integers(0, 4)
        if op == 0 or op == 1:
            start = int(rng.integers(0, len(model) + 3 * PAGE))
            data = rng.integers(0, 256, int(rng.integers(1, 3 * PAGE)), dtype=np.uint8).tobytes()
            handle.seek(start)
            assert handle.write(data) == len(data)
            if start > len(model):
                model.extend(bytes(start - len(model)))
            model[start : start + len(data)] = data
        elif op == 2 and rng.random() < 0.3:
            size = int(rng.integers(base // 2, base + 2 * PAGE))
            handle.truncate(size)
            del model[size:]
            model.extend(bytes(size - len(model)))
        else:
            start = int(rng.integers(0, len(model) + PAGE))
            length = int(rng.integers(0, 2 * PAGE))
            handle.seek(start)
            assert handle.read(length) == bytes(model[start : start + length])
    handle.seek(0, 2)
    assert handle.tell() == len(model)


def _journaled_copy(tmp_path: Path, seed: int) -> tuple[Path, bytes]:
    path = tmp_path / "store.h5"
    original = np.random.default_rng(seed).integers(0, 256, 5 * PAGE + 123, dtype=np.uint8).tobytes()
    path.write_bytes(original)
    return path, original


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_journaled_file_reads_and_writes_like_a_plain_file_and_leaves_the_original_until_commit(tmp_path, seed):
    path, original = _journaled_copy(tmp_path, seed)
    model = bytearray(original)
    handle = JournaledFile(path)
    assert journal_path(path).read_bytes().startswith(journal.MAGIC + journal.PENDING)
    _random_ops(handle, model, np.random.default_rng(seed + 10), 300)
    assert path.read_bytes()[: len(original)] == original  # nothing below the old end is touched yet
    handle.commit()
    assert path.read_bytes() == bytes(model)
    assert not journal_path(path).exists()


def test_a_crash_while_applying_the_commit_is_finished_by_recover(tmp_path, monkeypatch):
    path, original = _journaled_copy(tmp_path, 5)
    model = bytearray(original)
    handle = JournaledFile(path)
    _random_ops(handle, model, np.random.default_rng(6), 200)
    real_apply = journal._apply

    def half_then_die(path: Path, base: int, size: int, zero_from: int, pages: dict) -> None:
        with open(path, "r+b") as store:  # half the pages written into the store, then the "crash"
            for page, data in sorted(pages.items())[: len(pages) // 2]:
                store.seek(page * PAGE)
                store.write(bytes(data[: max(0, min(PAGE, base - page * PAGE))]))
        raise KeyboardInterrupt

    monkeypatch.setattr(journal, "_apply", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        handle.commit()
    handle.abandon()  # the commit journal stands: abandoning must not undo it
    assert journal_path(path).read_bytes().startswith(journal.MAGIC + journal.COMMIT)
    monkeypatch.setattr(journal, "_apply", real_apply)
    assert recover(path) == f"finished the interrupted gather's commit into {path}"
    assert path.read_bytes() == bytes(model)
    assert recover(path) == ""


def test_abandon_restores_the_original_bytes(tmp_path):
    path, original = _journaled_copy(tmp_path, 7)
    handle = JournaledFile(path)
    _random_ops(handle, bytearray(original), np.random.default_rng(8), 100)
    handle.abandon()
    assert path.read_bytes() == original and not journal_path(path).exists()


def _tree(handle: h5py.Group) -> dict[str, object]:
    out: dict[str, object] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in handle.attrs.items()}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()].tobytes()
        for key, value in obj.attrs.items():  # type: ignore[attr-defined]
            out[f"{name}@{key}"] = value

    handle.visititems(visit)
    return out


def _edit(handle: h5py.File) -> None:
    handle.attrs["manifest"] = "m" * 5000  # grows the root's attributes: edits inside the old file
    tasks = handle["tasks"]
    del tasks["t07"]
    for i in (7, *range(20, 26)):
        group = tasks.create_group(f"t{i:02d}")
        group.attrs["i"] = i
        group.create_dataset("d", data=np.arange(30_000, dtype=np.float32) * i)


def test_hdf5_append_through_the_journal_equals_plain_h5py(tmp_path):
    path = tmp_path / "store.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as handle:
        tasks = handle.create_group("tasks")
        for i in range(20):
            tasks.create_group(f"t{i:02d}").create_dataset("d", data=rng.standard_normal(10_000))
    original = path.read_bytes()
    plain = tmp_path / "plain.h5"
    plain.write_bytes(original)
    with h5py.File(plain, "r+") as handle:
        _edit(handle)

    journaled = JournaledFile(path)
    with h5py.File(journaled, "r+") as handle:
        _edit(handle)
    assert journaled.edited_pages > 0  # HDF5 did edit inside the old file, and it was held back
    assert path.read_bytes()[: len(original)] == original
    with h5py.File(path, "r") as handle:  # a reader meanwhile sees the old store
        assert sorted(handle["tasks"]) == [f"t{i:02d}" for i in range(20)]
    journaled.commit()
    with h5py.File(path, "r") as got, h5py.File(plain, "r") as want:
        assert _tree(got) == _tree(want)


# -- gathers killed inside the commit -----------------------------------------------------------

SHARD_ATTRS = {"experiment": "bench", "exp_id": "bench", "target": "cpu", "params": {}, "numerics": {}}


def _shards(folder: Path, first: int, count: int) -> None:
    rng = np.random.default_rng(first)
    for i in range(first, first + count):
        with open_shard(folder, f"{i:016x}", {**SHARD_ATTRS, "repeat": i}) as root:
            root.create_dataset("data/x", data=rng.standard_normal(50_000).astype(np.float32))


def _stored(store: Path) -> dict[str, bytes]:
    with h5py.File(store, "r") as handle:
        return {t: handle["tasks"][t]["data/x"][()].tobytes() for t in handle["tasks"]}


def _from_shards(folder: Path) -> dict[str, bytes]:
    out = {}
    for shard in sorted(CampaignDir(folder).shards_dir.glob("*.h5")):
        with h5py.File(shard, "r") as handle:
            out[shard.stem] = handle["data/x"][()].tobytes()
    return out


def _gathered(tmp_path: Path, count: int) -> Path:
    """A campaign folder with `count` shards, gathered into a new store.h5."""
    folder = tmp_path / "campaign"
    folder.mkdir()
    (folder / "manifest.yaml").write_text("campaign: campaign\n")
    _shards(folder, 0, count)
    time.sleep(0.05)  # past the filesystem clock's tick, so the shards' ctimes are older than the gather's lock
    gather(folder)
    return folder


def _killed_gather(folder: Path, fault: str) -> None:
    code = f"from pathlib import Path; from toolkit.store.gather import gather; gather(Path({str(folder)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "TOOLKIT_FAULT": fault}, capture_output=True, text=True
    )
    assert done.returncode == -9, done.stderr


@pytest.mark.parametrize(
    ("fault", "state", "message"),
    [
        ("gather-merge:2", journal.PENDING, "undid the interrupted gather's unfinished append to {store}"),
        ("gather-commit:1", journal.COMMIT, "finished the interrupted gather's commit into {store}"),
        ("gather-apply:1", journal.COMMIT, "finished the interrupted gather's commit into {store}"),
    ],
)
def test_gather_killed_inside_an_append(tmp_path, monkeypatch, fault, state, message):
    folder = _gathered(tmp_path, 3)
    store = CampaignDir(folder).store_path
    old = store.read_bytes()
    _shards(folder, 3, 3)

    _killed_gather(folder, fault)
    assert journal_path(store).read_bytes().startswith(journal.MAGIC + state)
    monkeypatch.setattr(journal, "SETTLE_SECONDS", 0.2)
    if state == journal.PENDING:
        assert store.read_bytes()[: len(old)] == old
        with Store(store) as opened:  # the old store, readable while the journal is pending
            assert opened.task_ids() == [f"{i:016x}" for i in range(3)]
    else:
        with pytest.raises(StoreError) as refused:
            Store(store)
        assert str(refused.value) == (
            f"{store}: a gather was interrupted while committing ({journal_path(store)} remains); run toolkit "
            "gather to finish it, then read the store again"
        )

    report = gather(folder)
    assert report.recovered == message.format(store=store)
    assert not journal_path(store).exists() and not list(folder.glob(".store.h5*"))
    assert _stored(store) == _from_shards(folder)
    if state == journal.PENDING:
        assert sorted(report.added) == [f"{i:016x}" for i in range(3, 6)]
    else:  # the killed gather had finished its work: nothing is left to add
        assert report.added == [] and report.unchanged == 6
    assert gather(folder).unchanged == 6


def test_a_damaged_journal_is_refused_and_rebuild_starts_over(tmp_path):
    folder = _gathered(tmp_path, 2)
    store = CampaignDir(folder).store_path
    journal_path(store).write_bytes(journal.MAGIC + b"C" + bytes(10))
    with pytest.raises(StoreError) as refused:
        gather(folder)
    assert str(refused.value) == (
        f"{journal_path(store)}: not a complete toolkit journal; the store may be damaged — move "
        f"{journal_path(store)} aside and run toolkit gather --rebuild to rebuild store.h5 from the shards"
    )
    report = gather(folder, rebuild=True)
    assert sorted(report.added) == [f"{i:016x}" for i in range(2)]
    assert not journal_path(store).exists()
    assert _stored(store) == _from_shards(folder)


def test_a_gather_opens_only_the_shards_that_changed_since_the_last_one(tmp_path, monkeypatch):
    folder = _gathered(tmp_path, 3)
    opened: list[str] = []
    real = gather_module._run_uid
    monkeypatch.setattr(gather_module, "_run_uid", lambda path: opened.append(path.stem) or real(path))

    _shards(folder, 3, 2)
    time.sleep(0.05)
    assert sorted(gather(folder).added) == [f"{i:016x}" for i in (3, 4)]
    assert opened == []  # the three stored shards are older than the last gather: not opened
    assert gather(folder).unchanged == 5 and opened == []

    rerun = f"{0:016x}"
    _shards(folder, 0, 1)  # task 0 rerun: a new shard, a new run_uid
    report = gather(folder)
    assert report.replaced == [rerun] and report.unchanged == 4 and opened == [rerun]
    assert _stored(CampaignDir(folder).store_path) == _from_shards(folder)


def test_a_reader_stops_waiting_at_once_when_no_live_gather_holds_the_lock(tmp_path):
    lock = tmp_path / "gather.lock"
    assert holder_gone(lock)  # no lock: no gather
    record = {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid())}
    lock.write_text(json.dumps(record))
    assert not holder_gone(lock)  # this live process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({**record, "pid": int(dead.stdout), "start": ""}))
    assert holder_gone(lock)  # a process of this host that has ended
    lock.write_text(json.dumps({**record, "host": "another-node"}))
    assert not holder_gone(lock)  # another host's holder: a reader cannot tell, so it waits


def test_short_reads_and_writes_are_completed(tmp_path, monkeypatch):
    """One pwrite/preadv may move fewer bytes than asked (Linux: at most 0x7ffff000 a call, so any
    dataset over 2 GiB); the helpers loop.  Here each call moves at most 1000 bytes."""
    real_pwrite, real_preadv = os.pwrite, os.preadv
    monkeypatch.setattr(journal.os, "pwrite", lambda fd, data, at: real_pwrite(fd, bytes(data[:1000]), at))
    monkeypatch.setattr(
        journal.os, "preadv", lambda fd, views, at: real_preadv(fd, [views[0][: min(1000, len(views[0]))]], at)
    )
    data = np.random.default_rng(3).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)
    try:
        journal._pwrite_all(fd, memoryview(data), 7)
        back = bytearray(10_050)
        journal._pread_into(fd, memoryview(back), 7)
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(7) + data
    assert bytes(back) == data + bytes(50)  # zeros past the end of the file
