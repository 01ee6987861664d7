"""The format of store.h5: its schema version, task attributes and the check every reader and
gather makes on open (bump SCHEMA_VERSION on change).  The campaign folder's layout (store.h5,
shards, records, locks) is owned by `toolkit.store.campaign_dir`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from toolkit.errors import StoreError
from toolkit.store.campaign_dir import STORE_NAME

__all__ = [
    "SCHEMA_VERSION",
    "STATUS_COMPLETE",
    "STORE_NAME",
    "TASK_ATTRS",
    "SchemaMismatch",
    "check_schema",
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


def utc_now() -> str:
    """The current UTC time, ISO 8601 with microseconds, as stored in attrs."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
