"""`toolkit submit`: validate, plan, prepare the campaign folder, run what is missing, report."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.errors import UsageError
from toolkit.plan import Plan

if TYPE_CHECKING:
    from toolkit.launch.container import TaskImage
    from toolkit.store.campaign_dir import CampaignDir


def submit_campaign(
    manifest_path: Path,
    executor: str,
    root: Path | None,
    site: str | None,
    force: bool,
    wait: bool,
    plot: bool,
    say: Callable[[str], None],
) -> Path:
    """Run a manifest end to end with the chosen executor; returns the campaign folder."""
    from toolkit import campaign
    from toolkit.launch.preflight import preflight
    from toolkit.manifest import load_manifest
    from toolkit.plan import build_plan

    plan = build_plan(load_manifest(manifest_path, site=site))
    if executor == "slurm" and not shutil.which("sbatch"):
        raise UsageError("--executor slurm needs sbatch on PATH; use --executor local on this machine")
    if not wait and executor != "slurm":
        raise UsageError("--no-wait needs the slurm executor: local jobs run under this command")
    folder = campaign.campaign_dir_for(plan, root)
    image = preflight(plan, executor, folder).image  # every check of the environment, before anything is made
    if image is not None:  # a task in the image works in the bound folder: relative paths would miss
        folder = Path(image.campaign_dir)
    from toolkit.store.campaign_dir import CampaignDir

    with CampaignDir(folder).submit_lock():  # a second submit of this campaign is refused while this one lives
        return _submit_locked(plan, folder, image, executor, force, wait, plot, say)


def _submit_locked(
    plan: Plan,
    folder: Path,
    image: TaskImage | None,
    executor: str,
    force: bool,
    wait: bool,
    plot: bool,
    say: Callable[[str], None],
) -> Path:
    """Prepare the folder and run what is missing, holding the campaign's submit lock."""
    from toolkit import campaign

    layout = campaign.CampaignDir(folder)
    _refuse_live_jobs(layout)
    campaign.prepare(plan, folder)
    done = set() if force else layout.done_task_ids()
    todo = set(plan.tasks) - done
    say(
        f"campaign {plan.manifest.campaign}: {len(plan.tasks)} task(s), {len(plan.tasks) - len(todo)} already "
        f"complete, {len(todo)} to run ({executor} executor) in {folder}"
    )
    if image is not None:
        say(f"tasks run in the {image.runtime} image {image.image} ({image.digest[:19]}...)")
    if executor == "slurm":
        from toolkit.launch.slurm import submit_slurm
        from toolkit.launch.slurm_wait import wait_slurm

        record = submit_slurm(plan, folder, todo, force=force, plot=plot, say=say, image=image)
        if not wait:
            say(f"submitted; follow with: toolkit status {folder}")
            return folder
        wait_slurm(folder, record, say)
        plot = False  # the last gather job made the figures
    else:
        from toolkit.launch.local import run_local

        run_local(plan, folder, todo, force=force, debug=executor == "debug", say=say, image=image)
    if plot:
        from toolkit.figures import make_figures

        figures = make_figures(folder)
        say(f"figures: {len(figures)} in {layout.figures_dir}")
        from toolkit.report_html import write_report

        say(f"report: {write_report(folder, figures_dir=layout.figures_dir)}")
    if not plot and layout.figures_dir.is_dir():
        say(f"figures: {layout.figures_dir}")
    say(f"store: {layout.store_path}")
    _print_summaries(layout, plan, say)
    return folder


def _refuse_live_jobs(layout: CampaignDir) -> None:
    """Refuse (exit 1) while Slurm jobs of an earlier submit of this campaign are queued or running
    (e.g. after `--no-wait`): submitting their tasks again would run them twice at once."""
    if not layout.has_slurm_record() or not shutil.which("squeue"):
        return
    from toolkit.launch.slurm_wait import live_jobs
    from toolkit.store.lock import LockBusy

    folder = layout.root
    live = live_jobs(folder)
    if live:
        raise LockBusy(
            f"{folder}: Slurm job(s) {', '.join(live)} of an earlier submit are still queued or running; "
            f"follow them with toolkit status {folder} (or stop them with toolkit cancel), then rerun "
            "toolkit submit if tasks are missing"
        )


def input_files(plan: Plan) -> set[str]:
    """The files the tasks read (bound read-only into a container); see toolkit.launch.preflight."""
    from toolkit.launch import preflight

    return preflight.input_files(plan)


def _print_summaries(layout: CampaignDir, plan: Plan, say: Callable[[str], None]) -> None:
    with layout.open_store() as store:
        for run in store.runs():
            summary = run.attrs.get("summary")
            if summary and run.task_id in plan.tasks:
                say(f"{run.experiment} {run.task_id}:\n{summary}")
