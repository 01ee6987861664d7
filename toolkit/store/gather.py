"""The single writer of store.h5: copy published shards into `/tasks/<task_id>` and verify them.

The gather never edits store.h5 in place.  It copies the current store (or starts empty), adds
the new shards, re-reads every added dataset and compares its checksum with the one the worker
recorded, and only then renames the new file over store.h5.  A gather killed at any point leaves
the previous store.h5 readable and every shard in place; `rebuild=True` starts from the shards
alone.  A lock file keeps two gathers from running at once.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit import __version__, faults
from toolkit.errors import StoreError
from toolkit.store import schema
from toolkit.store.files import fsync_path, pid_alive, stale_temp, temp_name
from toolkit.store.shard import completed_shards, dataset_checksums


@dataclass
class GatherReport:
    """What one gather did."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: int = 0
    bad_shards: dict[str, str] = field(default_factory=dict)
    store: Path | None = None

    def summary(self) -> str:
        bad = f", {len(self.bad_shards)} unreadable shard(s)" if self.bad_shards else ""
        return (f"gathered {len(self.added)} new and {len(self.replaced)} rerun task(s), "
                f"{self.unchanged} already in {self.store}{bad}")


def gather(campaign_dir: Path, manifest_text: str | None = None, rebuild: bool = False) -> GatherReport:
    """Bring store.h5 up to date with the shards; returns what changed."""
    campaign_dir = Path(campaign_dir)
    if not campaign_dir.is_dir():
        raise StoreError(f"{campaign_dir}: no such campaign folder")
    with _GatherLock(campaign_dir):
        for leftover in campaign_dir.glob(f".{schema.STORE_NAME}~*.tmp"):
            if stale_temp(leftover):
                leftover.unlink()
        return _gather_locked(campaign_dir, manifest_text, rebuild)


def _gather_locked(campaign_dir: Path, manifest_text: str | None, rebuild: bool) -> GatherReport:
    import h5py

    store = schema.store_path(campaign_dir)
    report = GatherReport(store=store)
    shards = completed_shards(campaign_dir)
    existing = None if rebuild else _stored_uids(store)
    if existing is not None and all(existing.get(t) == _run_uid(p) for t, p in shards.items()):
        report.unchanged = len(shards)
        return report
    tmp = temp_name(store)
    if existing is not None:
        shutil.copyfile(store, tmp)
    else:
        tmp.unlink(missing_ok=True)
    try:
        with h5py.File(tmp, "a", locking=False) as out:
            _root_attrs(out, campaign_dir, manifest_text)
            tasks = out.require_group("tasks")
            for task_id, path in sorted(shards.items()):
                _merge_shard(tasks, task_id, path, report)
                faults.checkpoint("gather-merge")
        fsync_path(tmp)
        os.replace(tmp, store)
        fsync_path(store.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return report


def _stored_uids(path: Path) -> dict[str, str] | None:
    """task_id → run_uid of the tasks in a readable store; None if there is none."""
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as handle:
            tasks = handle["tasks"]
            return {t: str(tasks[t].attrs.get("run_uid")) for t in tasks}
    except (OSError, KeyError):
        return None


def _run_uid(path: Path) -> str | None:
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as handle:
            return str(handle.attrs.get("run_uid"))
    except OSError:
        return None


def _root_attrs(out: Any, campaign_dir: Path, manifest_text: str | None) -> None:
    import hashlib

    if manifest_text is None:
        manifest_file = campaign_dir / "manifest.yaml"
        manifest_text = manifest_file.read_text() if manifest_file.exists() else ""
    out.attrs["schema_version"] = schema.SCHEMA_VERSION
    out.attrs["campaign"] = campaign_dir.name
    out.attrs["manifest"] = manifest_text
    out.attrs["manifest_sha256"] = hashlib.sha256(manifest_text.encode()).hexdigest()
    if "created_utc" not in out.attrs:
        out.attrs["created_utc"] = schema.utc_now()
    out.attrs["updated_utc"] = schema.utc_now()
    out.attrs["toolkit_version"] = __version__


def _merge_shard(tasks: Any, task_id: str, path: Path, report: GatherReport) -> None:
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as shard:
            if shard.attrs.get("status") != schema.STATUS_COMPLETE:
                raise StoreError("shard is not marked complete")
            existing = tasks.get(task_id)
            if existing is not None and existing.attrs.get("run_uid") == shard.attrs.get("run_uid"):
                report.unchanged += 1
                return
            if existing is not None:
                del tasks[task_id]
            group = tasks.create_group(task_id)
            for key, value in shard.attrs.items():
                group.attrs[key] = value
            for name in shard:
                shard.copy(shard[name], group, name=name)
            expected = json.loads(shard.attrs["checksums"])
    except (OSError, KeyError, ValueError, StoreError) as err:
        report.bad_shards[task_id] = f"{path}: {err}"
        if task_id in tasks and tasks[task_id].attrs.get("status") != schema.STATUS_COMPLETE:
            del tasks[task_id]
        return
    if dataset_checksums(group) != expected:
        raise StoreError(f"verification failed for task {task_id}: the copy in the store differs from "
                         f"{path}; the store was left unchanged — check the disk and rerun toolkit gather")
    (report.replaced if existing is not None else report.added).append(task_id)


class _GatherLock:
    """`gather.lock` holding `host pid`; a lock of a dead process on this host is taken over."""

    def __init__(self, campaign_dir: Path) -> None:
        self.path = campaign_dir / "gather.lock"

    def __enter__(self) -> _GatherLock:
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                holder = self.path.read_text().strip() if self.path.exists() else "?"
                raise StoreError(f"another gather holds {self.path} ({holder}); wait for it, or remove the "
                                 "file if that process is gone") from None
            with os.fdopen(fd, "w") as handle:
                handle.write(me)
            return self
        raise StoreError(f"cannot take {self.path}")

    def _stale(self) -> bool:
        try:
            host, pid = self.path.read_text().split()
        except (OSError, ValueError):
            return True
        return host == socket.gethostname() and not pid_alive(int(pid))

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)
