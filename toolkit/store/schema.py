"""The format of store.h5: its schema version, task attributes and the check every reader and
gather makes on open (bump SCHEMA_VERSION on change).  The campaign folder's layout (store.h5,
shards, records, locks) is owned by `toolkit.store.campaign_dir`; the path helpers here ask it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from toolkit.errors import StoreError
from toolkit.store.campaign_dir import STORE_NAME, CampaignDir

__all__ = [
    "SCHEMA_VERSION",
    "STATUS_COMPLETE",
    "STORE_NAME",
    "TASK_ATTRS",
    "SchemaMismatch",
    "check_schema",
    "corrupt_path",
    "failure_path",
    "shard_path",
    "shards_dir",
    "store_path",
    "task_lock_path",
    "utc_now",
]

#: The layout version of store.h5.  Version 1 is the first; no store of another version exists
#: yet, so there is no migration: every reader and gather refuses a store of any other version
#: (`check_schema`).  A change of layout bumps this and adds a tested migration or a refusal.
SCHEMA_VERSION = 1
TASK_ATTRS = (
    "experiment",
    "exp_id",
    "target",
    "repeat",
    "params",
    "numerics",
    "model",
    "status",
    "started_utc",
    "finished_utc",
    "provenance",
    "inputs",
    "run_uid",
    "checksums",
)
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
        raise SchemaMismatch(
            f"{path}: no schema_version attribute, so not a store written by toolkit; "
            "give the store.h5 of a campaign folder"
        )
    if int(version) > SCHEMA_VERSION:
        raise SchemaMismatch(
            f"{path}: written by toolkit {wrote} with store schema {int(version)}, newer than "
            f"schema {SCHEMA_VERSION} that this toolkit {__version__} reads; upgrade toolkit to "
            f"{wrote} or later to read or gather it (the store was not changed)"
        )
    if int(version) < SCHEMA_VERSION:
        raise SchemaMismatch(
            f"{path}: written by toolkit {wrote} with store schema {int(version)}, older than "
            f"schema {SCHEMA_VERSION} that this toolkit {__version__} reads, and there is no "
            f"migration; read it with toolkit {wrote} (the store was not changed)"
        )


def shards_dir(campaign_dir: Path) -> Path:
    """Folder of the per-task shard files (`CampaignDir.shards_dir`)."""
    return CampaignDir(campaign_dir).shards_dir


def shard_path(campaign_dir: Path, task_id: str) -> Path:
    """The published shard of one task (`CampaignDir.shard_path`)."""
    return CampaignDir(campaign_dir).shard_path(task_id)


def failure_path(campaign_dir: Path, task_id: str) -> Path:
    """The JSON report a failed task leaves instead of a shard (`CampaignDir.failure_path`)."""
    return CampaignDir(campaign_dir).failure_path(task_id)


def corrupt_path(campaign_dir: Path, task_id: str) -> Path:
    """Where gather moves a shard that failed verification (`CampaignDir.corrupt_path`)."""
    return CampaignDir(campaign_dir).corrupt_path(task_id)


def task_lock_path(campaign_dir: Path, task_id: str) -> Path:
    """The lock a worker holds while it runs the task (`CampaignDir.task_lock_path`)."""
    return CampaignDir(campaign_dir).task_lock_path(task_id)


def store_path(campaign_dir: Path) -> Path:
    """The campaign store, written only by gather (`CampaignDir.store_path`)."""
    return CampaignDir(campaign_dir).store_path


def utc_now() -> str:
    """The current UTC time, ISO 8601 with microseconds, as stored in attrs."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
