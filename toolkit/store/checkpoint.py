"""Progress checkpoints of a running task, so a preempted or timed-out task resumes where it was.

Each finished unit of work (e.g. one prompt) is saved as its own small HDF5 file in
`shards/<task_id>.ckpt/`, published by atomic rename.  A requeued task with the same id (hence
the same inputs and settings) loads the saved units instead of recomputing them, so its results
equal those of an uninterrupted run.  The folder is removed once the shard is published.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from toolkit.store.campaign_dir import CampaignDir
from toolkit.store.files import fsync_path, temp_name


class Checkpoint:
    """Save and load named units of a task's work."""

    def __init__(self, campaign_dir: Path, task_id: str) -> None:
        self.folder = CampaignDir(campaign_dir).checkpoint_dir(task_id)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.h5"

    def has(self, key: str) -> bool:
        return self._path(key).is_file()

    def save(self, key: str, arrays: dict[str, Any], attrs: dict[str, Any]) -> None:
        """Atomically store one unit: arrays (numpy) and scalar/string attrs."""
        import h5py

        self.folder.mkdir(parents=True, exist_ok=True)
        final = self._path(key)
        tmp = temp_name(final)
        with h5py.File(tmp, "w", locking=False) as handle:
            for name, value in arrays.items():
                handle.create_dataset(name, data=value)
            for name, value in attrs.items():
                handle.attrs[name] = value
        fsync_path(tmp)
        os.replace(tmp, final)

    def load(self, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(arrays, attrs) of a saved unit."""
        import h5py

        with h5py.File(self._path(key), "r", locking=False) as handle:
            return {n: handle[n][()] for n in handle}, dict(handle.attrs)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
