"""Names and layout of the campaign folder and of store.h5 (bump SCHEMA_VERSION on change).

```
<campaign>/manifest.yaml   the submitted manifest text     <campaign>/plan.json  tasks to run
<campaign>/shards/<task_id>.h5          one complete task (atomic rename)
<campaign>/shards/<task_id>.failed.json why a task failed (removed when it later succeeds)
<campaign>/shards/<task_id>.h5.corrupt  a shard whose data no longer matched its checksums (kept aside)
<campaign>/shards/.<task_id>.lock       held by the worker running the task     <campaign>/*.lock
<campaign>/store.h5        /tasks/<task_id> groups gathered from the shards
<campaign>/jobs/<submission>/           submitit logs    <campaign>/figures/  plots
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from toolkit.errors import StoreError

#: The layout version of store.h5.  Version 1 is the first; no store of another version exists
#: yet, so there is no migration: every reader and gather refuses a store of any other version
#: (`check_schema`).  A change of layout bumps this and adds a tested migration or a refusal.
SCHEMA_VERSION = 1
STORE_NAME = "store.h5"
TASK_ATTRS = ("experiment", "exp_id", "target", "repeat", "params", "numerics", "model", "status",
              "started_utc", "finished_utc", "provenance", "inputs", "run_uid", "checksums")
STATUS_COMPLETE = "complete"


class SchemaMismatch(StoreError):
    """A store written with another store schema than this toolkit reads (exit 2: use a toolkit
    that reads it; the store is left untouched)."""

    exit_code = 2


def check_schema(path: Path, attrs: Mapping[str, Any]) -> None:
    """Refuse a store whose `schema_version` is not SCHEMA_VERSION: the one check every reader
    (`Store`, status) and gather makes on open, before reading or writing anything else."""
    from toolkit import __version__

    version = attrs.get("schema_version")
    wrote = attrs.get("toolkit_version", "an unknown version")
    wrote = wrote.decode() if isinstance(wrote, bytes) else wrote
    if version is None:
        raise SchemaMismatch(f"{path}: no schema_version attribute, so not a store written by toolkit; "
                             "give the store.h5 of a campaign folder")
    if int(version) > SCHEMA_VERSION:
        raise SchemaMismatch(f"{path}: written by toolkit {wrote} with store schema {int(version)}, newer than "
                             f"schema {SCHEMA_VERSION} that this toolkit {__version__} reads; upgrade toolkit to "
                             f"{wrote} or later to read or gather it (the store was not changed)")
    if int(version) < SCHEMA_VERSION:
        raise SchemaMismatch(f"{path}: written by toolkit {wrote} with store schema {int(version)}, older than "
                             f"schema {SCHEMA_VERSION} that this toolkit {__version__} reads, and there is no "
                             f"migration; read it with toolkit {wrote} (the store was not changed)")


def shards_dir(campaign_dir: Path) -> Path:
    """Folder of the per-task shard files (the durable results until gathered)."""
    return campaign_dir / "shards"


def shard_path(campaign_dir: Path, task_id: str) -> Path:
    """The published shard of one task (present only when the task completed)."""
    return shards_dir(campaign_dir) / f"{task_id}.h5"


def failure_path(campaign_dir: Path, task_id: str) -> Path:
    """The JSON report a failed task leaves instead of a shard."""
    return shards_dir(campaign_dir) / f"{task_id}.failed.json"


def corrupt_path(campaign_dir: Path, task_id: str) -> Path:
    """Where gather moves a shard whose data no longer matches its checksums (kept, not gathered)."""
    return shards_dir(campaign_dir) / f"{task_id}.h5.corrupt"


def task_lock_path(campaign_dir: Path, task_id: str) -> Path:
    """The lock a worker holds while it runs the task (no task runs twice at once)."""
    return shards_dir(campaign_dir) / f".{task_id}.lock"


def store_path(campaign_dir: Path) -> Path:
    """The campaign store, written only by gather."""
    return campaign_dir / STORE_NAME


def utc_now() -> str:
    """The current UTC time, ISO 8601 with microseconds, as stored in attrs."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
