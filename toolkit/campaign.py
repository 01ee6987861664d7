"""A campaign folder on disk: prepare it for a plan, and report which tasks are done.  Its layout
(every path, plan.json, task states, locks, the store handle) is `toolkit.store.campaign_dir.CampaignDir`.

Task state comes from the files alone (store.h5, shards, failure reports, temporary shards of
running workers), so status works from any machine that sees the folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import StoreError, UsageError
from toolkit.plan import Plan, Task, canonical_json, model_identity
from toolkit.store.campaign_dir import CampaignDir, PlanFile

__all__ = ["CampaignDir", "TaskState", "campaign_dir_for", "done_task_ids", "prepare", "stored_task_ids", "task_states"]


def campaign_dir_for(plan: Plan, root: Path | None) -> Path:
    """`<root>/<campaign>`; root defaults to the manifest's `output`, relative to the CWD."""
    return Path(root if root is not None else plan.manifest.output) / plan.manifest.campaign


def prepare(plan: Plan, campaign_dir: Path) -> None:
    """Create the folder and write manifest.yaml and plan.json (atomically)."""
    folder = CampaignDir(campaign_dir)
    folder.root.mkdir(parents=True, exist_ok=True)
    folder.shards_dir.mkdir(exist_ok=True)
    manifest = plan.manifest
    payload = {
        "campaign": manifest.campaign,
        "model": manifest.model.to_dict(),
        "model_identity": model_identity(manifest),
        "prompts": list(manifest.prompts),
        "tasks": {tid: t.to_json() for tid, t in plan.tasks.items()},
        "stages": [[g.task_ids for g in s.groups] for s in plan.stages],
    }
    folder.write_manifest(manifest.text)
    plan_file: PlanFile = json.loads(canonical_json(payload))  # plain JSON values, keys sorted
    folder.write_plan(plan_file)
    folder.remove_stale_shard_temps()


def stored_task_ids(campaign_dir: Path) -> set[str]:
    """Ids of complete tasks in store.h5 (empty if there is no readable store yet)."""
    return CampaignDir(campaign_dir).stored_task_ids()


def done_task_ids(campaign_dir: Path) -> set[str]:
    """Tasks whose results exist: in the store or as a published shard."""
    return CampaignDir(campaign_dir).done_task_ids()


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
    folder = CampaignDir(campaign_dir)
    if not folder.plan_path.exists():
        raise UsageError(f"{campaign_dir}: not a campaign folder (no plan.json); submit a manifest first")
    try:
        plan = folder.read_plan()
    except ValueError as err:
        raise StoreError(f"{folder.plan_path}: unreadable ({err})") from None
    stored, shards, failed = folder.stored_task_ids(), folder.completed_shards(), folder.failed_tasks()
    running = folder.running_task_ids()
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
