"""Follow a submitted Slurm campaign to its end (`toolkit submit --wait`), and report per-task
Slurm states for `toolkit status` / `toolkit cancel`.  A failed or cancelled task is reported,
never waited on forever: jobs left pending behind it can never start, so they are cancelled."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from toolkit.errors import TaskFailed
from toolkit.launch import slurm_state
from toolkit.launch.slurm import all_job_ids, task_jobs
from toolkit.progress import Progress
from toolkit.store.campaign_dir import CampaignDir, SlurmSubmission


def task_slurm_states(campaign_dir: Path) -> dict[str, tuple[str, str]]:
    """task_id → (Slurm state, node) of its latest submission ({} if never submitted to Slurm)."""
    jobs = task_jobs(campaign_dir)
    if not jobs:
        return {}
    elements: dict[str, list[int]] = {}
    for array, index in jobs.values():
        elements.setdefault(array, []).append(index)
    states = slurm_state.job_states(elements, elements)
    return {task: slurm_state.element_state(states, array, index) for task, (array, index) in jobs.items()}


#: Polling of `--wait`: every cycle asks sacct and squeue once for all jobs.  The interval starts at
#: POLL_MIN_S, grows by POLL_GROWTH while nothing changes (no job state, no finished shard), never
#: exceeds POLL_MAX_S nor POLL_SHARE of the time waited so far (so the delay it adds after the last
#: change is at most that share of the wall time), and drops back to POLL_MIN_S on any change.
POLL_MIN_S = 2.0
POLL_MAX_S = 60.0
POLL_GROWTH = 1.5
POLL_SHARE = 0.1
#: `--wait` prints a line of task states when they change (at most every QUEUE_LINE_MIN_S) and
#: at least every QUEUE_LINE_MAX_S, so a Slurm log shows the campaign is alive while it queues.
QUEUE_LINE_MIN_S = 30.0
QUEUE_LINE_MAX_S = 300.0
_STATE_ORDER = ("PENDING", "RUNNING", "COMPLETED")


def next_poll(interval: float, changed: bool, waited_s: float) -> float:
    """The seconds to sleep before the next cycle (see POLL_MIN_S): shared clusters punish polling."""
    if changed:
        return POLL_MIN_S
    return max(POLL_MIN_S, min(POLL_MAX_S, interval * POLL_GROWTH, POLL_SHARE * waited_s))


def queue_line(states: dict[str, tuple[str, str]], elements: dict[str, range]) -> str:
    """`slurm: 1998 pending, 2 running of 2000 task(s)`: the tasks' Slurm states (gathers left out),
    pending/running/completed first, then any other state (failed, requeued, ...) alphabetically."""
    from collections import Counter

    counts = Counter(
        slurm_state.element_state(states, array, index)[0] for array, indices in elements.items() for index in indices
    )
    order = [s for s in _STATE_ORDER if s in counts] + sorted(set(counts) - set(_STATE_ORDER))
    parts = ", ".join(f"{counts[s]} {s.lower()}" for s in order)
    return f"slurm: {parts} of {sum(counts.values())} task(s)"


def wait_slurm(campaign_dir: Path, record: SlurmSubmission, say: Callable[[str], None]) -> None:
    """Poll sacct (interval: `next_poll`) until the last gather completes, printing the tasks'
    states (`queue_line`) as they change; raise TaskFailed naming failed tasks."""
    tasks = [t for stage in record["stages"] for a in stage["arrays"] for t in a["task_ids"]]
    gathers = [stage["gather"] for stage in record["stages"]]
    ids = [a["job_id"] for stage in record["stages"] for a in stage["arrays"]] + gathers
    elements = {a["job_id"]: range(len(a["task_ids"])) for stage in record["stages"] for a in stage["arrays"]}
    bar = Progress(len(tasks), "tasks", every_s=15.0)
    layout = CampaignDir(campaign_dir)
    seen = 0
    start, interval, before = time.monotonic(), POLL_MIN_S, None
    said, said_at = "", start
    while True:
        states = slurm_state.job_states(ids, elements)
        done = len(set(tasks) & set(layout.completed_shards()))
        interval = next_poll(interval, (states, done) != before, time.monotonic() - start)
        before = (states, done)
        line, since = queue_line(states, elements), time.monotonic() - said_at
        if not said or (line != said and since >= QUEUE_LINE_MIN_S) or since >= QUEUE_LINE_MAX_S:
            say(line)
            said, said_at = line, time.monotonic()
        if done > seen:
            bar.update(done - seen)
            seen = done
        final = states.get(gathers[-1], ("UNKNOWN", ""))[0] if gathers else "COMPLETED"
        if final == "COMPLETED":
            return
        failed = _failed_tasks(campaign_dir, states)
        broken_gather = [g for g in gathers if states.get(g, ("", ""))[0] in slurm_state.FAILED]
        if failed or broken_gather:
            stranded = _stranded(record, states, failed)
            if _settled(states, stranded):
                _cancel_stranded(states, stranded)
                raise TaskFailed(_failure_message(failed, broken_gather, campaign_dir))
        time.sleep(interval)


def _failed_tasks(campaign_dir: Path, states: dict[str, tuple[str, str]]) -> dict[str, str]:
    out = {}
    for task, (array, index) in task_jobs(campaign_dir).items():
        state = slurm_state.element_state(states, array, index)[0]
        if state in slurm_state.FAILED:
            out[task] = state
    return out


def _stranded(record: SlurmSubmission, states: dict[str, tuple[str, str]], failed: dict[str, str]) -> set[str]:
    """Jobs that can never start: `afterok` on a failed job or on a stranded one.  Other pending
    jobs (array throttle, requeued after preemption, waiting for resources) may still run."""
    stranded: set[str] = set()
    blocked = False
    for stage in record["stages"]:
        if blocked:
            stranded.update(a["job_id"] for a in stage["arrays"])
        broken = any(t in failed for a in stage["arrays"] for t in a["task_ids"])
        if blocked or broken or states.get(stage["gather"], ("", ""))[0] in slurm_state.FAILED:
            stranded.add(stage["gather"])
            blocked = True
    return stranded


def _settled(states: dict[str, tuple[str, str]], stranded: set[str]) -> bool:
    """Nothing will change any more: every job is terminal or pending behind a failure."""
    return all(
        state in slurm_state.TERMINAL or (state == "PENDING" and job.split("_")[0] in stranded)
        for job, (state, _) in states.items()
    )


def _cancel_stranded(states: dict[str, tuple[str, str]], stranded: set[str]) -> None:
    pending = {job.split("_")[0] for job, (state, _) in states.items() if state == "PENDING"}
    if pending & stranded:
        slurm_state.cancel(pending & stranded)


def _failure_message(failed: dict[str, str], gathers: list[str], campaign_dir: Path) -> str:
    by_state: dict[str, list[str]] = {}
    for task, state in sorted(failed.items()):
        by_state.setdefault(state, []).append(task)
    parts = [f"{len(v)} task(s) {k.lower()}: {', '.join(v)}" for k, v in sorted(by_state.items())]
    if not parts:
        parts = [f"gather job(s) {', '.join(gathers)} failed"]
    return (
        f"{'; '.join(parts)}; toolkit status {campaign_dir} shows each task; "
        "rerun toolkit submit to run just the missing ones"
    )


def cancel_campaign(campaign_dir: Path) -> list[str]:
    """Cancel every queued or running job of the campaign; returns the job ids cancelled."""
    live = live_jobs(campaign_dir)
    slurm_state.cancel(live)
    return live


def live_jobs(campaign_dir: Path) -> list[str]:
    """The campaign's job ids (arrays, gathers) that Slurm still holds queued or running."""
    states = slurm_state.job_states(all_job_ids(campaign_dir))
    return sorted({job.split("_")[0] for job, (state, _) in states.items() if state not in slurm_state.TERMINAL})
