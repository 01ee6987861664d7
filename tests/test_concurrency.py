"""Two submits of one campaign at once, and locks left by killed processes, with real processes.

The rule (README, "Resubmitting"): a second `toolkit submit` of a campaign refuses (exit 1, one
line naming the holder) while the first is alive or while Slurm jobs of an earlier `--no-wait`
submit are queued or running; every task runs under its own lock, so even a worker orphaned by
a killed submit never runs a task at the same time as another; locks of dead holders are taken
over automatically (same host: pid and its start time; Slurm: the job's state; elsewhere: lease).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY_MANIFEST, run_cli
from slurm_helpers import slurm_cluster  # noqa: F401  (a fixture)

from toolkit.store.lock import LEASE_S, FileLock, LockBusy, process_start

BUSY = (
    r"error: another toolkit submit of this campaign is running \(pid {pid} on host {host} since "
    r"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{6}}Z\); follow it with toolkit status {folder}, and rerun toolkit "
    r"submit once it has ended if tasks are missing\n"
)


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "toolkit.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _published(folder: Path) -> list[str]:
    """Task ids the workers of every submission of the campaign printed as published."""
    lines = []
    for log in sorted((folder / "jobs").rglob("*_log.out")):
        lines += re.findall(r"^task (\w+) \(.*\): published$", log.read_text(), re.MULTILINE)
    return lines


def _wait_gone(pid: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)  # our own orphaned worker, by its pid
        pytest.fail(f"worker {pid} still running after {timeout:.0f} s")


def _manifest(tmp_path: Path, campaign: str, tokens: int = 6) -> tuple[Path, Path]:
    path = tmp_path / f"{campaign}.yaml"
    path.write_text(TINY_MANIFEST.format(campaign=campaign, output=tmp_path / "campaigns", tokens=tokens))
    return path, tmp_path / "campaigns" / campaign


def test_two_local_submits_at_once_one_refuses_and_every_task_runs_once(tmp_path):
    manifest, folder = _manifest(tmp_path, "twice")
    args = ("submit", str(manifest), "--executor", "local", "--no-plot")
    first, second = _start(*args), _start(*args)
    (out1, err1), (out2, err2) = first.communicate(timeout=600), second.communicate(timeout=600)
    results = sorted([(first.returncode, first.pid, out1, err1), (second.returncode, second.pid, out2, err2)])
    (ok_code, ok_pid, ok_out, ok_err), (busy_code, _, busy_out, busy_err) = results
    assert (ok_code, busy_code) == (0, 1), (ok_err, busy_err)
    assert "5 task(s), 0 already complete, 5 to run (local executor)" in ok_out
    assert busy_out == ""
    busy = BUSY.format(pid=ok_pid, host=re.escape(socket.gethostname()), folder=re.escape(str(folder)))
    assert re.fullmatch(busy, busy_err), busy_err
    plan = json.loads((folder / "plan.json").read_text())
    assert sorted(_published(folder)) == sorted(plan["tasks"])  # each task ran exactly once
    assert not list(folder.glob("*.lock")) and not list((folder / "shards").glob(".*"))
    assert run_cli("status", str(folder)).out.splitlines()[0] == "5 task(s): 5 stored"


def test_submit_killed_while_its_worker_runs_is_recovered_and_no_task_runs_twice(tmp_path):
    manifest, folder = _manifest(tmp_path, "orphan", tokens=32)
    killed = _start("submit", str(manifest), "--executor", "local", "--no-plot")
    shards = folder / "shards"
    deadline = time.monotonic() + 300
    while not list(shards.glob("*.h5")) if shards.is_dir() else True:
        assert killed.poll() is None and time.monotonic() < deadline, "the first task never finished"
        time.sleep(0.1)
    os.kill(killed.pid, signal.SIGKILL)  # holding submit.lock; its stage job lives on as an orphan
    killed.wait()
    assert json.loads((folder / "submit.lock").read_text())["pid"] == killed.pid
    [log] = (folder / "jobs").rglob("*_log.out")
    orphan = int(log.name.split("_")[0])  # a local job's id is its process id
    try:
        resumed = run_cli("submit", str(manifest), "--executor", "local", "--no-plot")
        assert resumed.code == 0, resumed.err
        assert re.search(r"5 task\(s\), [1-4] already complete, [1-4] to run \(local executor\)", resumed.out)
    finally:
        _wait_gone(orphan)
    plan = json.loads((folder / "plan.json").read_text())
    assert sorted(_published(folder)) == sorted(plan["tasks"])  # no task ran twice, nor at the same time
    assert not list(folder.glob("*.lock")) and not list(shards.glob(".*"))
    assert run_cli("status", str(folder)).out.splitlines()[0] == "5 task(s): 5 stored"


def test_submit_killed_inside_its_gather_leaves_locks_that_the_next_submit_takes_over(tmp_path):
    manifest, folder = _manifest(tmp_path, "killedgather", tokens=3)
    crashed = run_cli(
        "submit", str(manifest), "--executor", "local", "--no-plot", env={"TOOLKIT_FAULT": "gather-merge:1"}
    )
    assert crashed.code == -9
    assert (folder / "submit.lock").exists() and (folder / "gather.lock").exists()
    resumed = run_cli("submit", str(manifest), "--executor", "local", "--no-plot")
    assert resumed.code == 0, resumed.err
    assert "5 task(s), 4 already complete, 1 to run (local executor)" in resumed.out
    assert not list(folder.glob("*.lock"))
    assert run_cli("status", str(folder)).out.splitlines()[0] == "5 task(s): 5 stored"


def _lock_file(path: Path, **fields: object) -> None:
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": process_start(os.getpid()),
        "slurm_job_id": "",
        "utc": "2026-01-01T00:00:00.000000Z",
        **fields,
    }
    path.write_text(json.dumps(record))


def test_stale_lock_rules(tmp_path):
    lock = tmp_path / "gather.lock"
    busy = "held: {holder}"
    _lock_file(lock)  # this very process: alive
    with pytest.raises(LockBusy) as refused:
        FileLock(lock, busy).__enter__()
    assert str(refused.value) == (
        f"held: pid {os.getpid()} on host {socket.gethostname()} since 2026-01-01T00:00:00.000000Z"
    )
    _lock_file(lock, start="1")  # the pid now belongs to another process (reused): stale
    with FileLock(lock, busy):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    _lock_file(lock, host="elsewhere", pid=1)  # another host, refreshed recently: alive
    with pytest.raises(LockBusy, match=r"^held: pid 1 on host elsewhere since "):
        FileLock(lock, busy).__enter__()
    old = time.time() - LEASE_S - 60  # ... not refreshed for longer than the lease: stale
    os.utime(lock, (old, old))
    with FileLock(lock, busy):
        assert json.loads(lock.read_text())["host"] == socket.gethostname()
    holder = FileLock(lock, busy).__enter__()  # a live holder that lets go after a while
    threading.Timer(1.0, holder.__exit__, (None, None, None)).start()
    with FileLock(lock, busy, wait=True, poll_s=0.05) as waiter:
        assert waiter.waited is True
    assert not lock.exists()


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_lock_of_a_finished_slurm_job_on_another_node_is_taken_over(tmp_path):
    def sbatch(command: str) -> str:
        return subprocess.run(
            ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()

    lock = tmp_path / "gather.lock"
    running = sbatch("sleep 120")
    try:
        _lock_file(lock, host="computenode7", pid=4242, slurm_job_id=running)
        with pytest.raises(LockBusy, match=rf"Slurm job {running}$"):
            FileLock(lock, "held: {holder}").__enter__()
        subprocess.run(["scancel", running], check=True, timeout=30)
        deadline = time.monotonic() + 60
        while subprocess.run(
            ["squeue", "-h", "-j", running], capture_output=True, text=True, check=False
        ).stdout.strip():
            assert time.monotonic() < deadline, f"job {running} still queued"
            time.sleep(0.5)
        with FileLock(lock, "held: {holder}"):  # the job that held it ended (killed): taken over
            assert json.loads(lock.read_text())["host"] == socket.gethostname()
    finally:
        subprocess.run(["scancel", running], capture_output=True, timeout=30, check=False)


LIVE = (
    r"error: {folder}: Slurm job\(s\) ([\d, ]+) of an earlier submit are still queued or running; follow them "
    r"with toolkit status {folder} \(or stop them with toolkit cancel\), then rerun toolkit submit if tasks are "
    r"missing\n"
)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_two_slurm_submits_at_once_then_one_while_its_jobs_are_queued(tmp_path):
    from slurm_helpers import manifest_text, state, submissions

    campaign = f"concurrent-{os.getpid()}"
    manifest = tmp_path / "concurrent.yaml"
    manifest.write_text(manifest_text(campaign, tmp_path / "campaigns"))
    folder = tmp_path / "campaigns" / campaign
    args = ("submit", str(manifest), "--executor", "slurm", "--no-wait", "--no-plot")
    first, second = _start(*args), _start(*args)
    (out1, err1), (out2, err2) = first.communicate(timeout=300), second.communicate(timeout=300)
    results = sorted([(first.returncode, first.pid, out1, err1), (second.returncode, second.pid, out2, err2)])
    (ok_code, ok_pid, _, ok_err), (busy_code, _, busy_out, busy_err) = results
    assert (ok_code, busy_code) == (0, 1), (ok_err, busy_err)
    [record] = submissions(folder)  # one submission: the refused one queued nothing
    jobs = [a["job_id"] for s in record["stages"] for a in s["arrays"]] + [s["gather"] for s in record["stages"]]
    last_gather = record["stages"][-1]["gather"]
    subprocess.run(["scontrol", "hold", last_gather], check=True, capture_output=True, timeout=30)
    try:
        by_lock = re.fullmatch(
            BUSY.format(pid=ok_pid, host=re.escape(socket.gethostname()), folder=re.escape(str(folder))), busy_err
        )
        by_jobs = re.fullmatch(LIVE.format(folder=re.escape(str(folder))), busy_err)
        assert busy_out == "" and (by_lock or by_jobs), busy_err
        assert by_lock or set(by_jobs.group(1).split(", ")) <= set(jobs)

        third = run_cli(*args, timeout=120)  # the first submit has returned; its jobs are queued
        assert third.code == 1 and third.out == ""
        listed = re.fullmatch(LIVE.format(folder=re.escape(str(folder))), third.err)
        assert listed, third.err
        assert last_gather in listed.group(1).split(", ") and set(listed.group(1).split(", ")) <= set(jobs)
        assert len(submissions(folder)) == 1
    finally:
        subprocess.run(["scontrol", "release", last_gather], capture_output=True, timeout=30, check=False)
    deadline = time.monotonic() + 300
    while state(last_gather) != "COMPLETED":
        assert state(last_gather) not in {"FAILED", "CANCELLED", "TIMEOUT"} and time.monotonic() < deadline
        time.sleep(1)
    plan = json.loads((folder / "plan.json").read_text())
    assert sorted(_published(folder)) == sorted(plan["tasks"])  # every task ran exactly once
    assert run_cli("status", str(folder)).out.splitlines()[0] == "5 task(s): 5 stored"
    assert not list(folder.glob("*.lock"))
