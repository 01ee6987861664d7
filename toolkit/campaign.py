"""A campaign folder on disk: prepare it for a plan, and report which tasks are done.

Task state comes from the files alone (store.h5, shards, failure reports, temporary shards of
running workers), so status works from any machine that sees the folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import StoreError, UsageError
from toolkit.plan import Plan, Task, canonical_json, model_identity
from toolkit.store import schema
from toolkit.store.files import atomic_write_text, stale_temp
from toolkit.store.shard import completed_shards, failed_tasks


def campaign_dir_for(plan: Plan, root: Path | None) -> Path:
    """`<root>/<campaign>`; root defaults to the manifest's `output`, relative to the CWD."""
    return Path(root if root is not None else plan.manifest.output) / plan.manifest.campaign


def prepare(plan: Plan, campaign_dir: Path) -> None:
    """Create the folder and write manifest.yaml and plan.json (atomically)."""
    campaign_dir.mkdir(parents=True, exist_ok=True)
    schema.shards_dir(campaign_dir).mkdir(exist_ok=True)
    manifest = plan.manifest
    payload = {
        "campaign": manifest.campaign, "model": manifest.model.to_dict(), "model_identity": model_identity(manifest),
        "prompts": list(manifest.prompts), "tasks": {tid: t.to_json() for tid, t in plan.tasks.items()},
        "stages": [[g.task_ids for g in s.groups] for s in plan.stages],
    }
    atomic_write_text(campaign_dir / "manifest.yaml", manifest.text)
    atomic_write_text(campaign_dir / "plan.json", json.dumps(json.loads(canonical_json(payload)), indent=1))
    for leftover in schema.shards_dir(campaign_dir).glob(".*.tmp"):
        if stale_temp(leftover):
            leftover.unlink()


def stored_task_ids(campaign_dir: Path) -> set[str]:
    """Ids of complete tasks in store.h5 (empty if there is no readable store yet)."""
    import h5py

    path = schema.store_path(campaign_dir)
    if not path.exists():
        return set()
    try:
        with h5py.File(path, "r", locking=False) as handle:
            schema.check_schema(path, handle.attrs)
            tasks = handle.get("tasks", {})
            return {t for t in tasks if tasks[t].attrs.get("status") == schema.STATUS_COMPLETE}
    except OSError:
        return set()


def done_task_ids(campaign_dir: Path) -> set[str]:
    """Tasks whose results exist: in the store or as a published shard."""
    return stored_task_ids(campaign_dir) | set(completed_shards(campaign_dir))


@dataclass
class TaskState:
    """One row of `toolkit status`."""

    task_id: str
    label: str
    stage: int
    state: str  # stored | shard | failed | running | pending
    detail: str = ""


def task_states(campaign_dir: Path) -> list[TaskState]:
    """The state of every task of the last submitted plan."""
    plan_file = campaign_dir / "plan.json"
    if not plan_file.exists():
        raise UsageError(f"{campaign_dir}: not a campaign folder (no plan.json); submit a manifest first")
    try:
        plan = json.loads(plan_file.read_text())
    except ValueError as err:
        raise StoreError(f"{plan_file}: unreadable ({err})") from None
    stored, shards, failed = stored_task_ids(campaign_dir), completed_shards(campaign_dir), failed_tasks(campaign_dir)
    running = {p.name[1:].split(".h5~")[0] for p in schema.shards_dir(campaign_dir).glob(".*.tmp")
               if not stale_temp(p)}
    rows = []
    for task_id, data in plan["tasks"].items():
        label = Task.from_json(data).label()
        if task_id in stored:
            state, detail = "stored", ""
        elif task_id in shards:
            state, detail = "shard", "complete, not yet gathered (run toolkit gather)"
        elif task_id in running:
            state, detail = "running", ""
        elif task_id in failed:
            state, detail = "failed", failed[task_id].get("error", "")
        else:
            state, detail = "pending", ""
        rows.append(TaskState(task_id, label, data["stage"], state, detail))
    return sorted(rows, key=lambda r: (r.stage, r.label))

