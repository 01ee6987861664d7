"""The single writer of store.h5: add published shards as `/tasks/<task_id>` and verify them.

The gather refuses a store of another schema, checks that the disk has room for the new tasks,
copies every new shard in and re-reads every added dataset to compare its checksum with the one
the shard's worker recorded: each shard is read once.  Where a copy differs, the shard itself is
verified: a shard that no longer matches (or is incomplete, or unreadable) makes the gather
abandon that write and redo it with every new shard verified first; such a shard is moved aside
to `<task_id>.h5.corrupt` with a failure report, so status shows the task as needing a rerun and
submit reruns it.  The first gather (and `rebuild=True`, which starts from
the shards alone) writes a new file and renames it over store.h5; later gathers append in place
through a redo journal (`toolkit.store.journal`), so their cost follows the new shards, not the
store's size.  A gather killed at any point, or stopped by a full disk, leaves the previous
store.h5 readable and every shard in place; the next gather finishes or undoes what a killed one
left.  `gather.lock` keeps two gathers from running at once; a lock left by a killed gather is
taken over (`toolkit.store.lock`).
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit import __version__, faults
from toolkit.errors import StoreError
from toolkit.store import schema
from toolkit.store.campaign_dir import CampaignDir
from toolkit.store.files import fsync_path, temp_name
from toolkit.store.journal import JournaledFile, journal_path, recover
from toolkit.store.shard import record_failure
from toolkit.store.shard_copy import ShardRefused, check_copy, copy_shard, hashing, verify_shard, writing_back

#: Room kept free beyond the store and the new shards (HDF5 metadata, the lock file).
SPACE_MARGIN = 64 * 1024


class ShardCorrupt(StoreError):
    """A published shard failed verification; its task must be rerun."""


@dataclass
class GatherReport:
    """What one gather did."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: int = 0
    bad_shards: dict[str, str] = field(default_factory=dict)
    store: Path | None = None
    recovered: str = ""

    def summary(self) -> str:
        """One line: counts, and every refused shard by task id."""
        bad = (
            f"; refused {len(self.bad_shards)} shard(s): {', '.join(sorted(self.bad_shards))} (toolkit status "
            "says why; toolkit submit reruns them)"
            if self.bad_shards
            else ""
        )
        first = f"{self.recovered}\n" if self.recovered else ""
        return (
            f"{first}gathered {len(self.added)} new and {len(self.replaced)} rerun task(s), "
            f"{self.unchanged} already in {self.store}{bad}"
        )

    def raise_refused(self) -> None:
        """Raise ShardCorrupt (exit 1) naming every refused shard's task and why, if any."""
        if self.bad_shards:
            reasons = "; ".join(f"task {t}: {why}" for t, why in sorted(self.bad_shards.items()))
            raise ShardCorrupt(
                f"refused {len(self.bad_shards)} shard(s), the other tasks are in {self.store} — "
                f"{reasons}; rerun toolkit submit to rerun just those"
            )


def gather(campaign_dir: Path, manifest_text: str | None = None, rebuild: bool = False) -> GatherReport:
    """Bring store.h5 up to date with the shards; returns what changed."""
    campaign_dir = Path(campaign_dir)
    if not campaign_dir.is_dir():
        raise StoreError(f"{campaign_dir}: no such campaign folder")
    folder = CampaignDir(campaign_dir)
    with folder.gather_lock():
        folder.remove_stale_store_temps()
        try:
            recovered = recover(folder.store_path)
        except StoreError:
            if not rebuild:
                raise
            journal_path(folder.store_path).unlink()
            recovered = ""
        seen = folder.gather_lock_path.stat().st_ctime_ns  # the filesystem's clock, as the shards' ctimes
        report = _gather_locked(folder, manifest_text, rebuild, seen)
        report.recovered = recovered
        return report


def _gather_locked(folder: CampaignDir, manifest_text: str | None, rebuild: bool, seen: int) -> GatherReport:
    store = folder.store_path
    report = GatherReport(store=store)
    shards = folder.completed_shards()
    stored = _stored_uids(store, shards)  # refuses a store of another schema, also before a rebuild
    existing = None if rebuild else stored
    new = {t: p for t, p in shards.items() if existing is None or _is_new(existing, t, p)}
    if existing is not None and not new:
        report.unchanged = len(shards)
        return report
    report.unchanged = len(shards) - len(new)
    try:  # one read of each shard: its copy's checksums are compared with those its worker recorded
        _write_store(folder, store, new, existing is not None, manifest_text, seen, report)
    except ShardRefused:  # the write was abandoned; verify every new shard first, then add the good ones
        report.added.clear()
        report.replaced.clear()
        verified = {}
        for task_id, path in sorted(new.items()):
            problem = verify_shard(path)
            if problem:
                report.bad_shards[task_id] = problem
            else:
                verified[task_id] = path
        if verified or existing is None:
            _write_store(folder, store, verified, existing is not None, manifest_text, seen, report)
    for task_id, problem in report.bad_shards.items():
        _quarantine(folder, task_id, problem)
    return report


def _write_store(
    folder: CampaignDir,
    store: Path,
    shards: dict[str, Path],
    append: bool,
    manifest_text: str | None,
    seen: int,
    report: GatherReport,
) -> None:
    """Add the shards, each checked through its copy (`toolkit.store.shard_copy`): appended in place
    to an existing store (`toolkit.store.journal`), or written to a new file renamed over store.h5."""
    import h5py

    campaign_dir = folder.root
    target = store if append else temp_name(store)
    _check_space(campaign_dir, target, sum(p.stat().st_size for p in shards.values()))
    try:
        journaled = JournaledFile(store) if append else None
    except OSError as err:
        if _no_space(err):
            raise _space_error(campaign_dir, target, shards) from None
        raise
    try:
        if journaled is None:
            target.unlink(missing_ok=True)
        with h5py.File(journaled or target, "r+" if journaled else "w", locking=False) as out, hashing() as pool:
            _root_attrs(out, folder, manifest_text, seen)
            tasks = out.require_group("tasks")
            copies = []
            for task_id, path in sorted(shards.items()):
                copies.append(copy_shard(tasks, task_id, path, pool))
                faults.checkpoint("gather-merge")
            with writing_back(None if journaled else target):
                for copy in copies:
                    check_copy(copy)
                    (report.replaced if copy.replaced else report.added).append(copy.task_id)
        if journaled is not None:
            journaled.commit()
        else:
            fsync_path(target)
            os.replace(target, store)
            fsync_path(store.parent)
    except BaseException as err:
        if journaled is not None:
            journaled.abandon()
        else:
            target.unlink(missing_ok=True)
        if isinstance(err, OSError) and _no_space(err):
            raise _space_error(campaign_dir, target, shards) from None
        raise


def _no_space(err: OSError) -> bool:
    text = str(err)
    return err.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or "errno = 28" in text


def _space_error(campaign_dir: Path, target: Path, shards: dict[str, Path]) -> StoreError:
    need = sum(p.stat().st_size for p in shards.values()) + SPACE_MARGIN
    return StoreError(_space_message(target, need, shutil.disk_usage(campaign_dir).free))


def _check_space(campaign_dir: Path, tmp: Path, size: int) -> None:
    """Refuse before writing when the filesystem cannot hold the new tasks."""
    free = shutil.disk_usage(campaign_dir).free
    if size + SPACE_MARGIN > free:
        raise StoreError(_space_message(tmp, size + SPACE_MARGIN, free))


def _space_message(tmp: Path, need: int, free: int) -> str:
    return (
        f"{tmp}: no space to add the new tasks: they need {need} bytes ({_kib(need)}), {free} bytes "
        f"({_kib(free)}) are free; store.h5 and the shards are unchanged — free space there or move the "
        "campaign folder, then rerun toolkit gather"
    )


def _kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size < 10 * 2**20 else f"{size / 2**20:.1f} MiB"


def _stored_uids(path: Path, shards: dict[str, Path]) -> dict[str, str] | None:
    """task_id → run_uid of the tasks in a readable store, '' where the task's shard has not changed
    since the last gather that wrote the store listed the shards (its ctime is older than the
    `shards_seen_ctime_ns` that gather recorded), so it needs no comparison: a gather reads what is
    new, not every shard.  None if there is no store.  A readable store of another schema is
    refused (SchemaMismatch) and left untouched."""
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as handle:
            schema.check_schema(path, handle.attrs)
            tasks = handle["tasks"]
            seen = handle.attrs.get("shards_seen_ctime_ns")
            out = {}
            for task_id in tasks:
                shard = shards.get(task_id)
                settled = seen is not None and shard is not None and _ctime_ns(shard) < int(seen)
                out[task_id] = "" if settled else str(tasks[task_id].attrs.get("run_uid"))
            return out
    except (OSError, KeyError):
        return None


def _is_new(stored: dict[str, str], task_id: str, shard: Path) -> bool:
    """Not in the store, or its shard changed since the last gather and holds another run."""
    if task_id not in stored:
        return True
    return stored[task_id] != "" and stored[task_id] != _run_uid(shard)


def _ctime_ns(path: Path) -> int:
    try:
        return path.stat().st_ctime_ns
    except OSError:
        return 1 << 62  # gone or unreadable: compare it


def _run_uid(path: Path) -> str | None:
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as handle:
            return str(handle.attrs.get("run_uid"))
    except OSError:
        return None


def _quarantine(folder: CampaignDir, task_id: str, problem: str) -> None:
    """Move a refused shard aside (kept for inspection) and record why, so the task is rerun."""
    aside = folder.corrupt_path(task_id)
    os.replace(folder.shard_path(task_id), aside)
    fsync_path(aside.parent)
    record_failure(
        folder.root,
        task_id,
        ShardCorrupt(f"needs a rerun: {problem}; gather refused it and kept it as {aside}; rerun toolkit submit"),
    )


def _root_attrs(out: Any, folder: CampaignDir, manifest_text: str | None, seen: int) -> None:
    """Campaign attrs; `schema_version` and `created_utc` only when the store is new (an existing
    store was checked to have this schema and is never re-stamped); `shards_seen_ctime_ns`: when
    this gather listed the shards (see `_stored_uids`)."""
    import hashlib

    if manifest_text is None:
        manifest_text = folder.manifest_text()
    if "schema_version" not in out.attrs:
        out.attrs["schema_version"] = schema.SCHEMA_VERSION
        out.attrs["created_utc"] = schema.utc_now()
    out.attrs["campaign"] = folder.root.name
    out.attrs["manifest"] = manifest_text
    out.attrs["manifest_sha256"] = hashlib.sha256(manifest_text.encode()).hexdigest()
    out.attrs["updated_utc"] = schema.utc_now()
    out.attrs["shards_seen_ctime_ns"] = seen
    out.attrs["toolkit_version"] = __version__
