"""Submit a plan to Slurm through submitit as one DAG: per stage, one array per (target, resources)
group (split past MaxArraySize), then a small CPU gather job `afterok` on those arrays; the next
stage's arrays depend on that gather.  Everything is submitted at once, so nothing on the login
node has to stay alive.  Job ids are recorded in `<campaign>/slurm.json` for status and cancel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit.errors import LaunchError
from toolkit.launch.container import TaskImage
from toolkit.launch.sites import gpu_target, sbatch_options
from toolkit.plan import Plan
from toolkit.store.campaign_dir import CampaignDir, SlurmArray, SlurmSubmission


class TaskRunner:
    """The submitted callable: runs its tasks; on preemption or timeout submitit requeues it.

    Tasks are idempotent (a published shard is skipped), so a requeued element simply reruns
    what did not finish, and its results equal those of an uninterrupted run.

    In a container (`in_container`) there is no in-job requeue: an image has no `scontrol` and no
    munge socket, so the preemption signal is ignored there; a preempted job is requeued by Slurm
    itself (PreemptMode=REQUEUE) and a timed-out one ends TIMEOUT (rerun `toolkit submit`).
    """

    def __init__(self, in_container: bool = False) -> None:
        self.in_container = in_container

    def __call__(self, campaign_dir: str, task_ids: list[str], force: bool) -> list[str]:
        from toolkit.worker import run_tasks

        if getattr(self, "in_container", False):
            _ignore_requeue_signal()
        return run_tasks(campaign_dir, task_ids, force=force)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _ignore_requeue_signal() -> None:
    """Replace submitit's checkpoint-and-requeue handler (it would call scontrol, which the image
    lacks, and fail the task mid-way) by one that only logs."""
    import os
    import signal
    import sys

    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    number = getattr(signal, name, signal.SIGUSR2)

    def log(signum: int, frame: Any) -> None:
        print(
            f"toolkit: {signal.Signals(signum).name} ignored in the container (no in-job requeue; "
            f"Slurm requeues a preempted job itself)",
            file=sys.stderr,
            flush=True,
        )

    signal.signal(number, log)


def gather_job(campaign_dir: str, expected: list[str], plot: bool) -> str:
    """The gather step of a stage: fails (so dependents never start) if a task is missing."""
    from toolkit.store.gather import gather

    report = gather(Path(campaign_dir))
    missing = sorted(set(expected) - set(CampaignDir(campaign_dir).completed_shards()))
    if missing:
        raise RuntimeError(f"{len(missing)} task(s) of this stage did not complete: {', '.join(missing)}")
    if plot:
        from toolkit.figures import make_figures
        from toolkit.report_html import write_report

        make_figures(Path(campaign_dir))
        write_report(Path(campaign_dir), figures_dir=CampaignDir(campaign_dir).figures_dir)
    return report.summary()


def submit_slurm(
    plan: Plan,
    campaign_dir: Path,
    todo: set[str],
    force: bool,
    plot: bool,
    say: Callable[[str], None],
    image: TaskImage | None = None,
) -> SlurmSubmission:
    """Submit the whole DAG; returns the submission record (also appended to slurm.json).

    With `image` the task arrays run in it (GPUs exposed to GPU targets only); the gather jobs
    run bare on the nodes (they only merge HDF5 shards and draw figures)."""
    import submitit

    from toolkit.launch.slurm_state import cancel, max_array_size

    folder = CampaignDir(campaign_dir).new_jobs_dir()  # fresh per submission: no stale results
    limit = max_array_size()
    record: SlurmSubmission = {"folder": str(folder), "stages": []}
    if image is not None:
        record["container"] = image.record()
    submitted: list[str] = []
    previous_gather: str | None = None
    try:
        for stage in plan.stages:
            arrays: list[SlurmArray] = []
            for group in stage.groups:
                ids = [t for t in group.task_ids if t in todo]
                for start in range(0, len(ids), limit):
                    chunk = ids[start : start + limit]
                    executor = _executor(
                        submitit,
                        folder,
                        plan,
                        group.target,
                        group.resources,
                        f"{plan.manifest.campaign}-{group.name}",
                        [previous_gather] if previous_gather else [],
                        image,
                    )
                    jobs = executor.map_array(
                        TaskRunner(image is not None),
                        [str(campaign_dir)] * len(chunk),
                        [[t] for t in chunk],
                        [force] * len(chunk),
                    )
                    array_id = jobs[0].job_id.split("_")[0]
                    submitted.append(array_id)
                    arrays.append({"job_id": array_id, "target": group.target, "task_ids": chunk})
            expected = [t for g in stage.groups for t in g.task_ids]
            after = [a["job_id"] for a in arrays] + ([previous_gather] if previous_gather else [])
            gather_exec = _executor(
                submitit, folder, plan, "any", None, f"{plan.manifest.campaign}-gather{stage.index}", after
            )
            last = stage.index == len(plan.stages)
            job = gather_exec.submit(gather_job, str(campaign_dir), expected, plot and last)
            previous_gather = job.job_id
            submitted.append(job.job_id)
            record["stages"].append({"index": stage.index, "arrays": arrays, "gather": job.job_id})
            say(
                f"stage {stage.index}: {sum(len(a['task_ids']) for a in arrays)} task(s) in arrays "
                f"{', '.join(a['job_id'] for a in arrays) or '(none)'}; gather job {job.job_id}"
            )
    except Exception as err:
        try:
            cancel(submitted)
        except LaunchError:
            pass
        raise LaunchError(f"sbatch refused the campaign ({_first_line(err)}); nothing was left queued") from None
    CampaignDir(campaign_dir).append_slurm_submission(record)
    return record


def _executor(
    submitit: Any,
    folder: Path,
    plan: Plan,
    target: str,
    resources: Any,
    name: str,
    after: list[str],
    image: TaskImage | None = None,
) -> Any:
    """A SlurmExecutor for one array (resources given; in `image` if any) or one gather job
    (resources None; always bare)."""
    from toolkit.manifest import Resources

    options = sbatch_options(plan.manifest.site, target, resources or Resources(), gather=resources is None)
    params: dict[str, Any] = {
        "job_name": name,
        "time": options["time"],
        "cpus_per_task": options["cpus-per-task"],
        "mem": options["mem"],
        "signal_delay_s": 30,
    }
    for key in ("partition", "account", "qos", "constraint", "gres"):
        if key in options:
            params[key] = options[key]
    additional: dict[str, Any] = {}
    if "gpus" in options:
        additional["gpus"] = options["gpus"]
    if after:
        additional["dependency"] = "afterok:" + ":".join(after)
    for line in options["extra"]:
        key, sep, value = line.lstrip("-").partition("=")
        additional[key] = value if sep else True
    if resources is not None:  # null: no throttle (submitit's default would add %256)
        params["array_parallelism"] = resources.array_parallelism or 2**31 - 1
    if image is not None and resources is not None:
        gpu = gpu_target(plan.manifest.site, target, resources) if target in plan.manifest.site.targets else False
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0, python=image.python(gpu))
    else:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
    executor.update_parameters(additional_parameters=additional, **params)
    return executor


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    for line in text.splitlines():
        if "error" in line.lower():
            return line.strip()
    return text.splitlines()[-1] if text else type(err).__name__


def task_jobs(campaign_dir: Path) -> dict[str, tuple[str, int]]:
    """task_id → (array job id, index) of its latest submission."""
    out: dict[str, tuple[str, int]] = {}
    for submission in CampaignDir(campaign_dir).slurm_submissions():
        for stage in submission["stages"]:
            for array in stage["arrays"]:
                for index, task_id in enumerate(array["task_ids"]):
                    out[task_id] = (array["job_id"], index)
    return out


def all_job_ids(campaign_dir: Path) -> list[str]:
    """Every array and gather job id ever submitted for the campaign."""
    ids = []
    for submission in CampaignDir(campaign_dir).slurm_submissions():
        for stage in submission["stages"]:
            ids += [a["job_id"] for a in stage["arrays"]] + [stage["gather"]]
    return ids
