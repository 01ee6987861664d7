"""Exit codes through the real CLI: bad input is 2 for every command (with one `error:` line and
nothing created), bare `toolkit` prints the help and exits 0, and Ctrl-C during a submit exits 130
with one line and leaves no half-written shard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli

INTERRUPTED = "error: interrupted; finished tasks are kept, rerun the same command to continue"


def _no_campaign(path: Path) -> str:
    return f"error: {path}: no such campaign folder; give the folder toolkit submit made (<output>/<campaign>)"


def _not_campaign(path: Path) -> str:
    return f"error: {path}: not a campaign folder (no plan.json); submit a manifest first"


def _bad_paths(tmp_path: Path) -> list[tuple[tuple[str, ...], str]]:
    """(command, its one error line) for every command given a path that is not what it needs."""
    missing, plain, campaign = tmp_path / "missing", tmp_path / "plain", tmp_path / "campaign"
    plain.mkdir()
    campaign.mkdir()
    (campaign / "plan.json").write_text("{}")
    (plain / "notes.h5").write_text("not hdf5")
    manifest = tmp_path / "missing.yaml"
    cases: list[tuple[tuple[str, ...], str]] = [
        (("validate", str(manifest)), f"error: {manifest}: no such file"),
        (("plan", str(manifest)), f"error: {manifest}: no such file"),
        (("submit", str(manifest), "--executor", "local"), f"error: {manifest}: no such file"),
        (("show", str(missing)), f"error: {missing}: no such store; give a campaign folder or its store.h5"),
        (
            ("show", str(plain)),
            f"error: {plain / 'store.h5'}: no such store; run toolkit submit or toolkit gather first",
        ),
        (
            ("show", str(plain / "notes.h5"), "--json"),
            f"error: {plain / 'notes.h5'}: not an HDF5 store; give a campaign folder or its store.h5",
        ),
        (
            ("plot", str(campaign)),
            f"error: {campaign / 'store.h5'}: no such store; run toolkit submit or toolkit gather first",
        ),
        (("cancel", str(campaign)), f"error: {campaign}: no Slurm submission recorded (slurm.json); nothing to cancel"),
        (
            ("experiments", "zzzz"),
            "error: unknown experiment 'zzzz'; known experiments: "
            + ", ".join(sorted(__import__("toolkit.experiments", fromlist=["names"]).names())),
        ),
        (
            ("model", "prepare", "gpt-9"),
            "error: 'gpt-9' is not a packaged model; choose one of "
            + ", ".join(__import__("toolkit.models.packaged", fromlist=["PACKAGED"]).PACKAGED),
        ),
        (("frobnicate",), "error: No such command 'frobnicate'."),
        (("status",), "error: Missing argument 'CAMPAIGN_DIR'."),
        (("gather", str(campaign), "--rebiuld"), "error: No such option '--rebiuld'. Did you mean '--rebuild'?"),
    ]
    for command in ("status", "gather", "plot", "cancel"):
        cases += [((command, str(missing)), _no_campaign(missing)), ((command, str(plain)), _not_campaign(plain))]
    return cases


def test_every_command_exits_2_on_a_bad_path_and_creates_nothing(tmp_path: Path) -> None:
    cases = _bad_paths(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for command, line in cases:
        result = run_cli(*command)
        assert (result.code, result.out, result.err) == (2, "", line + "\n"), command
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no store, no figures folder


def test_bare_toolkit_prints_the_help_and_exits_0() -> None:
    bare = run_cli()
    helped = run_cli("--help")
    assert (bare.code, bare.err) == (0, "")
    assert bare.out == helped.out and bare.out.startswith("Usage: ")
    assert "  submit " in bare.out and "  status " in bare.out


INTERRUPT_MANIFEST = """\
campaign: interrupted
output: {output}
model: {{source: tiny-random-llama, dtype: float32, attn_implementation: eager}}
prompts: ["The capital of France is", "Numbers: 1, 2, 3,"]
targets: [a100]
experiments:
  - name: exp4.generate
    id: generate
    params: {{max_new_tokens: 400, top_k: 5, stop_at_eos: false}}
"""


def _shard_files(shards: Path) -> tuple[list[str], list[str]]:
    """(names in shards/ other than checkpoint folders, names inside the checkpoint folders).

    A prompt that finished before the interrupt stays in `<task>.ckpt/` by design (a resubmit
    resumes from it, README "Preemption"); whether one finished first depends on timing."""
    names = sorted(p.name for p in shards.iterdir())
    saved = sorted(f.name for p in shards.glob("*.ckpt") for f in p.iterdir())
    return [n for n in names if not n.endswith(".ckpt")], saved


def _wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return value


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_during_submit_exits_130_and_leaves_no_half_written_shard(tmp_path: Path) -> None:
    manifest = tmp_path / "interrupted.yaml"
    manifest.write_text(INTERRUPT_MANIFEST.format(output=tmp_path / "campaigns"))
    shards = tmp_path / "campaigns" / "interrupted" / "shards"
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    # Ctrl-C in a terminal sends SIGINT to the whole foreground process group: here the submit's own
    # session, so it reaches the submit, submitit's controller and the worker, as it would for a user.
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "toolkit.cli", "submit", str(manifest), "--executor", "local", "--no-plot"],
            cwd=REPO,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        _wait_for(lambda: shards.is_dir() and list(shards.glob(".*.h5~*.tmp")), 300, "the worker to write its shard")
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
        leftovers, saved = _shard_files(shards)  # when the command has returned
        _wait_for(lambda: not _group_alive(proc.pid), 60, "the campaign's job processes to end")  # none left behind
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    lines = err.read_text().splitlines()
    assert code == 130
    assert [x for x in lines if x.startswith("error")] == [INTERRUPTED] and lines[-1] == INTERRUPTED
    assert leftovers == []  # no temporary, partial or published shard
    assert all(name.endswith(".h5") for name in saved)  # finished prompts kept for a resubmit, nothing partial
    status = run_cli("status", str(tmp_path / "campaigns" / "interrupted"))
    assert status.code == 0 and status.out.startswith("1 task(s): 1 pending")


def test_an_interrupted_worker_finishes_its_cleanup_despite_a_second_sigint() -> None:
    """Unit test of the worker's SIGINT policy with real signals: the first SIGINT interrupts the
    task, the second one (submitit's controller forwards its own) does not cut the cleanup short."""
    from toolkit.worker import _interrupt_once

    previous = signal.getsignal(signal.SIGINT)
    cleaned: list[str] = []

    @_interrupt_once
    def task() -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the task runs
            time.sleep(60)
        except KeyboardInterrupt:
            os.kill(os.getpid(), signal.SIGINT)  # the second SIGINT, while removing the half-written shard
            cleaned.append("temporary shard removed")
            raise

    with pytest.raises(KeyboardInterrupt):
        task()
    assert cleaned == ["temporary shard removed"]
    assert signal.getsignal(signal.SIGINT) is previous  # the process's own handling is back


def test_sigint_to_the_submit_alone_stops_its_job_too(tmp_path: Path) -> None:
    """`kill -INT <toolkit pid>` (no terminal: the job's processes get no signal of their own): the
    command cancels its stage's job and returns only when no worker of it is left running."""
    manifest = tmp_path / "interrupted.yaml"
    prompts = ", ".join(f'"Prompt number {k} is"' for k in range(12))  # minutes of work if left running
    manifest.write_text(
        INTERRUPT_MANIFEST.format(output=tmp_path / "campaigns").replace(
            'prompts: ["The capital of France is", "Numbers: 1, 2, 3,"]', f"prompts: [{prompts}]"
        )
    )
    shards = tmp_path / "campaigns" / "interrupted" / "shards"
    err = tmp_path / "stderr"
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "toolkit.cli", "submit", str(manifest), "--executor", "local", "--no-plot"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        _wait_for(lambda: shards.is_dir() and list(shards.glob(".*.h5~*.tmp")), 300, "the worker to write its shard")
        os.kill(proc.pid, signal.SIGINT)  # the submit process only
        code = proc.wait(timeout=120)
        time.sleep(2.0)  # the last processes are reaped
        alive = _group_alive(proc.pid)
        leftovers, saved = _shard_files(shards)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 130
    assert err.read_text().splitlines()[-1] == INTERRUPTED
    assert not alive, "a worker of the interrupted submit is still running"
    assert leftovers == []
    assert all(name.endswith(".h5") for name in saved)
