"""Run a plan on this machine: one submitit job per stage (a subprocess with the local executor,
in-process with the debug executor), then the gather, stage after stage."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit.errors import TaskFailed
from toolkit.launch.container import TaskImage
from toolkit.plan import Plan
from toolkit.progress import Progress
from toolkit.store.campaign_dir import CampaignDir
from toolkit.store.gather import gather


def run_local(
    plan: Plan,
    campaign_dir: Path,
    todo: set[str],
    force: bool,
    debug: bool,
    say: Callable[[str], None],
    image: TaskImage | None = None,
) -> None:
    """Run every stage's pending tasks, gathering after each stage; raise TaskFailed on failures.

    With `image` (a manifest `container:`) each stage's job runs in it; the gather stays here."""
    import submitit

    from toolkit.worker import run_tasks

    folder = CampaignDir(campaign_dir).new_jobs_dir()  # fresh per submission: no stale results
    executor: Any = submitit.DebugExecutor(folder) if debug else submitit.LocalExecutor(folder)
    if image is not None and debug:
        say(f"note: the debug executor runs tasks in this process, not in the {image.runtime} image")
    for stage in plan.stages:
        job_error = ""
        ids = sorted((t for g in stage.groups for t in g.task_ids if t in todo), key=lambda t: _load_order(plan, t))
        label = f"stage {stage.index}/{len(plan.stages)} ({', '.join(stage.exp_ids)})"
        if ids:
            minutes = sum(plan.manifest.experiment(plan.tasks[t].exp_id).resources.time_min for t in ids)
            if image is not None and not debug:
                executor = submitit.LocalExecutor(folder, python=image.python(_gpu_stage(plan, ids)))
            if not debug:
                executor.update_parameters(timeout_min=minutes)
            say(f"{label}: running {len(ids)} task(s){_where(image, debug)}; logs in {folder}")
            job = executor.submit(run_tasks, str(campaign_dir), ids, force)
            job_error = _wait(job, campaign_dir, ids, label, debug)
        report = gather(campaign_dir)
        say(f"{label}: {report.summary()}")
        layout = CampaignDir(campaign_dir)
        failed = {t: r for t, r in layout.failed_tasks().items() if t in ids}
        if failed or (ids and not set(ids) <= set(layout.completed_shards())):
            missing = [t for t in ids if t not in layout.completed_shards()]
            first = next(iter(failed.values()), {}).get("error", job_error or "the job died (see its log)")
            raise TaskFailed(
                f"{label}: {len(missing)} task(s) did not complete ({first}); "
                f"logs in {folder}; fix and rerun toolkit submit to run just those"
            )


def _gpu_stage(plan: Plan, ids: list[str]) -> bool:
    """GPUs for a stage's job: one of its tasks has a GPU target and this machine has an NVIDIA
    GPU (a local job runs here, whatever its target is called; see docs/containers.md)."""
    from toolkit.launch.sites import gpu_target

    site = plan.manifest.site
    wanted = any(
        gpu_target(site, plan.tasks[t].target, plan.manifest.experiment(plan.tasks[t].exp_id).resources)
        for t in ids
        if plan.tasks[t].target in site.targets
    )
    return wanted and Path("/dev/nvidiactl").exists()


def _where(image: TaskImage | None, debug: bool) -> str:
    return f" in {image.runtime} image {image.image}" if image is not None and not debug else ""


def _load_order(plan: Plan, task_id: str) -> tuple[str, str, str]:
    task = plan.tasks[task_id]
    return (task.numerics.dtype, task.numerics.attn_implementation, task_id)


def _wait(job: Any, campaign_dir: Path, ids: list[str], label: str, debug: bool) -> str:
    if debug:
        return _result(job)
    bar = Progress(len(ids), f"{label} tasks", every_s=15.0)
    layout = CampaignDir(campaign_dir)
    seen = 0
    try:
        while not job.done():
            time.sleep(0.2)  # a stage ends within 0.2 s of its job; a listing of shards/ per poll
            now = len(set(ids) & set(layout.completed_shards()))
            if now > seen:
                bar.update(now - seen)
                seen = now
    except KeyboardInterrupt:
        _stop(job)
        raise
    now = len(set(ids) & set(layout.completed_shards()))
    if now > seen:
        bar.update(now - seen)
    return _result(job)


def _stop(job: Any, grace_s: float = 2.0, limit_s: float = 30.0) -> None:
    """Interrupted: end the stage's job before returning, so no worker is left running.

    A terminal's Ctrl-C reaches the job's processes too, and they stop by themselves within
    `grace_s`; when only this process was interrupted (`kill -INT`), the job is cancelled
    (SIGINT to submitit's controller, which interrupts the worker: it removes its half-written
    shard) and waited for, at most `limit_s`."""
    deadline = time.monotonic() + grace_s
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.1)
    if job.done():
        return
    job.cancel(check=False)
    deadline = time.monotonic() + limit_s
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.1)


def _result(job: Any) -> str:
    """'' if the job succeeded, else the last line of its error (details: failure reports, log)."""
    try:
        job.result()
    except Exception as err:
        lines = str(err).strip().splitlines()
        return lines[-1] if lines else type(err).__name__
    return ""
