"""Names and layout of the campaign folder and of store.h5 (bump SCHEMA_VERSION on change).

```
<campaign>/manifest.yaml   the submitted manifest text     <campaign>/plan.json  tasks to run
<campaign>/shards/<task_id>.h5          one complete task (atomic rename)
<campaign>/shards/<task_id>.failed.json why a task failed (removed when it later succeeds)
<campaign>/store.h5        /tasks/<task_id> groups gathered from the shards
<campaign>/jobs/<submission>/           submitit logs    <campaign>/figures/  plots
```
"""

from __future__ import annotations

from pathlib import Path

SCHEMA_VERSION = 1
STORE_NAME = "store.h5"
TASK_ATTRS = ("experiment", "exp_id", "target", "repeat", "params", "numerics", "model", "status",
              "started_utc", "finished_utc", "provenance", "inputs", "run_uid", "checksums")
STATUS_COMPLETE = "complete"


def shards_dir(campaign_dir: Path) -> Path:
    """Folder of the per-task shard files (the durable results until gathered)."""
    return campaign_dir / "shards"


def shard_path(campaign_dir: Path, task_id: str) -> Path:
    """The published shard of one task (present only when the task completed)."""
    return shards_dir(campaign_dir) / f"{task_id}.h5"


def failure_path(campaign_dir: Path, task_id: str) -> Path:
    """The JSON report a failed task leaves instead of a shard."""
    return shards_dir(campaign_dir) / f"{task_id}.failed.json"


def store_path(campaign_dir: Path) -> Path:
    """The campaign store, written only by gather."""
    return campaign_dir / STORE_NAME


def utc_now() -> str:
    """The current UTC time, ISO 8601 with microseconds, as stored in attrs."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
