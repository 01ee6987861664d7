"""The per-task shard: one HDF5 file written by exactly one worker, published by atomic rename.

A worker writes into a hidden temporary file; only when the experiment returned and every
dataset's checksum is recorded is the file fsynced and renamed to `<task_id>.h5`.  A worker killed
at any moment therefore leaves either no shard or a complete one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolkit import faults
from toolkit.store import dims, schema
from toolkit.store.campaign_dir import CampaignDir
from toolkit.store.files import atomic_write_text, fsync_path, temp_name

#: Bytes read per slice when a dataset is hashed (`_dataset_sha256`): small enough to stay in a core's L2.
HASH_SLICE_BYTES = 1 << 20


def dataset_checksums(group: Any) -> dict[str, str]:
    """sha256 of the raw bytes of every dataset under `group`, keyed by relative path.

    The names are listed first and each dataset is hashed slice by slice after each read returned:
    h5py holds its global lock through `visititems` and a read, and the gather hashes on a second
    thread while the first copies the next shard (`toolkit.store.shard_copy`)."""
    import h5py

    names: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            names.append(name)

    group.visititems(visit)
    return {name: _dataset_sha256(group[name]) for name in sorted(names)}


def _dataset_sha256(dataset: Any) -> str:
    """`_content_sha256(dataset[()])`, read in slices of whole rows (whole chunks along the first
    axis, so each chunk is decoded once) into one reused buffer of about `HASH_SLICE_BYTES`: the
    bytes are hashed while still in cache, and no array of the dataset's size is allocated.  The
    slices' bytes, in order, are the array's C-order bytes, so the digest is the same."""
    import numpy as np

    shape = dataset.shape
    if shape is None or len(shape) == 0 or dataset.size == 0 or dataset.dtype.hasobject:
        return _content_sha256(dataset[()])
    row = dataset.dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    step = max(1, HASH_SLICE_BYTES // row)  # row > 0: the dataset is not empty
    if dataset.chunks is not None:
        step = max(1, step // dataset.chunks[0]) * dataset.chunks[0]
    buffer = np.empty((min(step, shape[0]), *shape[1:]), dtype=dataset.dtype)
    digest = hashlib.sha256()
    for start in range(0, shape[0], step):
        rows = min(step, shape[0] - start)
        dataset.read_direct(buffer, np.s_[start : start + rows], np.s_[0:rows])
        _feed(digest, buffer[:rows])
    return digest.hexdigest()


def _content_sha256(data: Any) -> str:
    """sha256 of a dataset's values: raw bytes for fixed-size types; for variable-length strings
    or bytes (object arrays, whose raw bytes are pointers) each element length-prefixed."""
    digest = hashlib.sha256()
    _feed(digest, data)
    return digest.hexdigest()


def _feed(digest: Any, data: Any) -> None:
    """Add `data`'s bytes to `digest` (see `_content_sha256`)."""
    if getattr(data, "dtype", None) is not None and data.dtype.kind == "O":
        for item in data.reshape(-1):
            raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
            digest.update(len(raw).to_bytes(8, "little") + raw)
    elif hasattr(data, "tobytes"):
        try:  # the array's own memory when it is contiguous: no copy
            digest.update(memoryview(data).cast("B") if data.flags.c_contiguous else data.tobytes())
        except (TypeError, ValueError, AttributeError):  # a dtype the buffer protocol cannot express
            digest.update(data.tobytes())
    else:
        digest.update(data if isinstance(data, bytes) else str(data).encode("utf-8"))


@contextlib.contextmanager
def open_shard(campaign_dir: Path, task_id: str, attrs: dict[str, Any]) -> Iterator[Any]:
    """Yield the root group of a new shard; publish it atomically when the block succeeds.

    `attrs` are written as task attributes (dicts and lists as JSON).  On an exception the
    temporary file is removed and a `<task_id>.failed.json` records the error.
    """
    import h5py

    final = CampaignDir(campaign_dir).shard_path(task_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    handle = h5py.File(tmp, "w", locking=False)
    try:
        _write_attrs(
            handle, {**attrs, "status": "running", "run_uid": uuid.uuid4().hex, "started_utc": schema.utc_now()}
        )
        yield handle
        dims.attach(handle)  # before the checksums: the index coordinates it makes are data too
        handle.attrs["finished_utc"] = schema.utc_now()
        handle.attrs["checksums"] = json.dumps(dataset_checksums(handle))
        handle.attrs["status"] = schema.STATUS_COMPLETE
        handle.flush()
        faults.checkpoint("shard-publish")
        handle.close()
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(final.parent)
        CampaignDir(campaign_dir).failure_path(task_id).unlink(missing_ok=True)
    except BaseException as err:
        handle.close()
        tmp.unlink(missing_ok=True)
        if not isinstance(err, (KeyboardInterrupt, SystemExit)):
            record_failure(campaign_dir, task_id, err)
        raise


def record_failure(campaign_dir: Path, task_id: str, err: BaseException) -> None:
    """Write `<task_id>.failed.json` with the error and its traceback."""
    import traceback

    report = {
        "task_id": task_id,
        "error": f"{type(err).__name__}: {err}",
        "utc": schema.utc_now(),
        "traceback": "".join(traceback.format_exception(err)),
    }
    atomic_write_text(CampaignDir(campaign_dir).failure_path(task_id), json.dumps(report, indent=2))


def _write_attrs(handle: Any, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        handle.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value, sort_keys=True)
