"""The one owner of a campaign folder's layout: every path in it, its JSON records, task states
from the files, its locks and its store handle.  Every other module asks a `CampaignDir`.

```
<campaign>/manifest.yaml   the submitted manifest text     <campaign>/plan.json  tasks to run
<campaign>/slurm.json      the Slurm job ids of every submission (status, cancel)
<campaign>/shards/<task_id>.h5          one complete task (atomic rename)
<campaign>/shards/<task_id>.failed.json why a task failed (removed when it later succeeds)
<campaign>/shards/<task_id>.h5.corrupt  a shard whose data no longer matched its checksums (kept aside)
<campaign>/shards/<task_id>.ckpt/       progress checkpoints of a running task (removed once published)
<campaign>/shards/.<task_id>.lock       held by the worker running the task
<campaign>/submit.lock  <campaign>/gather.lock   held by toolkit submit / by the gather
<campaign>/store.h5        /tasks/<task_id> groups gathered from the shards
<campaign>/store.h5.journal  while a gather appends to store.h5 (toolkit.store.journal)
<campaign>/jobs/<submission>/           submitit logs    <campaign>/figures/  plots
```

It lives in the store layer because the store's writers (shards, gather, checkpoints, locks) need
the layout and may not import upward; the campaign unit (`toolkit.campaign`) builds on it.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from toolkit.store.files import atomic_write_text, stale_temp

if TYPE_CHECKING:
    from toolkit.store.lock import FileLock
    from toolkit.store.reader import Store

STORE_NAME = "store.h5"
PLAN_NAME = "plan.json"
SLURM_RECORD_NAME = "slurm.json"
MANIFEST_NAME = "manifest.yaml"
SHARDS_NAME = "shards"
JOBS_NAME = "jobs"
FIGURES_NAME = "figures"
GATHER_LOCK_NAME = "gather.lock"
SUBMIT_LOCK_NAME = "submit.lock"
SHARD_SUFFIX = ".h5"
FAILURE_SUFFIX = ".failed.json"
CORRUPT_SUFFIX = ".h5.corrupt"
CHECKPOINT_SUFFIX = ".ckpt"
LOCK_SUFFIX = ".lock"


class PlanFile(TypedDict):
    """plan.json: what `toolkit submit` planned (written by `toolkit.campaign.prepare`)."""

    campaign: str
    model: dict[str, Any]
    model_identity: dict[str, Any]
    prompts: list[str]
    tasks: dict[str, dict[str, Any]]  # task_id -> `Task.to_json()`
    stages: list[list[list[str]]]  # stage -> array group -> task ids


class SlurmArray(TypedDict):
    """One array job of a submission and the tasks of its elements, in index order."""

    job_id: str
    target: str
    task_ids: list[str]


class SlurmStage(TypedDict):
    """One stage of a submission: its arrays and the gather job after them."""

    index: int
    arrays: list[SlurmArray]
    gather: str


class SlurmSubmission(TypedDict):
    """One `toolkit submit --executor slurm`: its submitit folder, stages and container (if any)."""

    folder: str
    stages: list[SlurmStage]
    container: NotRequired[dict[str, Any]]


class CampaignDir:
    """A campaign folder (`<output>/<campaign>`); it need not exist yet."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"CampaignDir({str(self.root)!r})"

    # -- paths -----------------------------------------------------------------------------------

    @property
    def store_path(self) -> Path:
        """The campaign store, written only by gather."""
        return self.root / STORE_NAME

    @property
    def plan_path(self) -> Path:
        """plan.json, the tasks of the last submission; its presence marks a campaign folder."""
        return self.root / PLAN_NAME

    @property
    def slurm_record_path(self) -> Path:
        """slurm.json, the job ids of every Slurm submission."""
        return self.root / SLURM_RECORD_NAME

    @property
    def manifest_path(self) -> Path:
        """The submitted manifest's text (copied into store.h5 by the gather)."""
        return self.root / MANIFEST_NAME

    @property
    def shards_dir(self) -> Path:
        """Folder of the per-task shard files (the durable results until gathered)."""
        return self.root / SHARDS_NAME

    @property
    def jobs_dir(self) -> Path:
        """Folder of the submitit folders (job logs), one per submission."""
        return self.root / JOBS_NAME

    @property
    def figures_dir(self) -> Path:
        """Where `toolkit plot` and `submit --plot` put figures by default."""
        return self.root / FIGURES_NAME

    @property
    def gather_lock_path(self) -> Path:
        """Held by the gather (one gather at a time)."""
        return self.root / GATHER_LOCK_NAME

    @property
    def submit_lock_path(self) -> Path:
        """Held by `toolkit submit` (one submit of a campaign at a time)."""
        return self.root / SUBMIT_LOCK_NAME

    def shard_path(self, task_id: str) -> Path:
        """The published shard of one task (present only when the task completed)."""
        return self.shards_dir / f"{task_id}{SHARD_SUFFIX}"

    def failure_path(self, task_id: str) -> Path:
        """The JSON report a failed task leaves instead of a shard."""
        return self.shards_dir / f"{task_id}{FAILURE_SUFFIX}"

    def corrupt_path(self, task_id: str) -> Path:
        """Where gather moves a shard whose data no longer matches its checksums (kept, not gathered)."""
        return self.shards_dir / f"{task_id}{CORRUPT_SUFFIX}"

    def task_lock_path(self, task_id: str) -> Path:
        """The lock a worker holds while it runs the task (no task runs twice at once)."""
        return self.shards_dir / f".{task_id}{LOCK_SUFFIX}"

    def checkpoint_dir(self, task_id: str) -> Path:
        """The progress checkpoints of a running task (`toolkit.store.checkpoint`)."""
        return self.shards_dir / f"{task_id}{CHECKPOINT_SUFFIX}"

    def new_jobs_dir(self) -> Path:
        """A fresh submitit folder for one submission (`jobs/<timestamp>`), so stale job results
        never come back."""
        return self.jobs_dir / datetime.now().strftime("%Y%m%d-%H%M%S-%f")

    # -- records ---------------------------------------------------------------------------------

    def has_plan(self) -> bool:
        """Whether this is a campaign folder made by `toolkit submit` (it holds plan.json)."""
        return self.plan_path.is_file()

    def read_plan(self) -> PlanFile:
        """plan.json as written (json's errors propagate: callers say what to do)."""
        data: PlanFile = json.loads(self.plan_path.read_text())
        return data

    def write_plan(self, plan: PlanFile) -> None:
        """Write plan.json atomically (one space of indent, keys in the order given)."""
        atomic_write_text(self.plan_path, json.dumps(plan, indent=1))

    def write_manifest(self, text: str) -> None:
        """Keep the submitted manifest's text (atomically)."""
        atomic_write_text(self.manifest_path, text)

    def manifest_text(self) -> str:
        """The submitted manifest's text; '' if there is none."""
        return self.manifest_path.read_text() if self.manifest_path.exists() else ""

    def has_slurm_record(self) -> bool:
        """Whether a Slurm submission was ever recorded here (slurm.json)."""
        return self.slurm_record_path.exists()

    def slurm_submissions(self) -> list[SlurmSubmission]:
        """All Slurm submissions of the campaign, oldest first ([] if none)."""
        if not self.slurm_record_path.exists():
            return []
        submissions: list[SlurmSubmission] = json.loads(self.slurm_record_path.read_text())["submissions"]
        return submissions

    def append_slurm_submission(self, record: SlurmSubmission) -> None:
        """Add one submission to slurm.json (atomically)."""
        path = self.slurm_record_path
        history: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"submissions": []}
        history["submissions"].append(record)
        atomic_write_text(self.slurm_record_path, json.dumps(history, indent=1))

    # -- task states -----------------------------------------------------------------------------

    def completed_shards(self) -> dict[str, Path]:
        """task_id → path of every published shard."""
        folder = self.shards_dir
        if not folder.is_dir():
            return {}
        return {p.name[: -len(SHARD_SUFFIX)]: p for p in folder.glob(f"*{SHARD_SUFFIX}") if not p.name.startswith(".")}

    def failed_tasks(self) -> dict[str, dict[str, Any]]:
        """task_id → failure report of every task whose last attempt failed."""
        folder = self.shards_dir
        out: dict[str, dict[str, Any]] = {}
        for path in sorted(folder.glob(f"*{FAILURE_SUFFIX}")) if folder.is_dir() else []:
            try:
                out[path.name.split(".")[0]] = json.loads(path.read_text())
            except (OSError, ValueError):
                out[path.name.split(".")[0]] = {"error": "unreadable failure report"}
        return out

    def running_task_ids(self) -> set[str]:
        """Tasks with a temporary file of a live writer in shards/ (a worker is running them)."""
        return {p.name[1:].split(f"{SHARD_SUFFIX}~")[0] for p in self._shard_temps() if not stale_temp(p)}

    def stored_task_ids(self) -> set[str]:
        """Ids of complete tasks in store.h5 (empty if there is no readable store yet); a store of
        another schema is refused (`SchemaMismatch`)."""
        import h5py

        from toolkit.store import schema
        from toolkit.store.journal import wait_settled

        path = self.store_path
        if not path.exists():
            return set()
        wait_settled(path)
        try:
            with h5py.File(path, "r", locking=False) as handle:
                schema.check_schema(path, handle.attrs)
                tasks = handle.get("tasks", {})
                return {t for t in tasks if tasks[t].attrs.get("status") == schema.STATUS_COMPLETE}
        except OSError:
            return set()

    def done_task_ids(self) -> set[str]:
        """Tasks whose results exist: in the store or as a published shard."""
        return self.stored_task_ids() | set(self.completed_shards())

    # -- housekeeping ----------------------------------------------------------------------------

    def _shard_temps(self) -> list[Path]:
        return list(self.shards_dir.glob(".*.tmp")) if self.shards_dir.is_dir() else []

    def remove_stale_shard_temps(self) -> None:
        """Remove temporary files in shards/ left by dead processes on this host."""
        for leftover in self._shard_temps():
            if stale_temp(leftover):
                leftover.unlink()

    def remove_stale_store_temps(self) -> None:
        """Remove temporary store files left by gathers killed on this host."""
        for leftover in [*self.root.glob(f".{STORE_NAME}~*.tmp"), *self.root.glob(f".{STORE_NAME}.journal~*.tmp")]:
            if stale_temp(leftover):
                leftover.unlink()

    # -- locks and the store ---------------------------------------------------------------------

    def task_lock(self, task_id: str) -> FileLock:
        """Held by the worker running a task; a second worker waits for it (no task runs twice at once)."""
        from toolkit.store.lock import FileLock

        return FileLock(self.task_lock_path(task_id), "", wait=True)

    def submit_lock(self) -> FileLock:
        """Held by `toolkit submit` from preparing the folder to its end: a second submit of the same
        campaign is refused (LockBusy, exit 1) while the first is alive.  Creates the folder."""
        from toolkit.store.lock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(
            self.submit_lock_path,
            "another toolkit submit of this campaign is running ({holder}); follow it with toolkit "
            f"status {self.root}, and rerun toolkit submit once it has ended if tasks are missing",
        )

    def gather_lock(self) -> FileLock:
        """Held by the gather: a second gather is refused (LockBusy, exit 1) while the first is alive."""
        from toolkit.store.lock import FileLock

        return FileLock(
            self.gather_lock_path,
            "another gather holds {path} ({holder}); wait for it to end, then rerun toolkit gather",
        )

    def open_store(self) -> Store:
        """store.h5, read-only (StoreError if there is none yet or it is not this toolkit's)."""
        from toolkit.store.reader import Store

        return Store(self.store_path)
