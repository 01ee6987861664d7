"""End to end on a real Slurm cluster: slurm/testcluster (Slurm 22.05 on this machine, two nodes
with fake GPUs, accounting, a preempting `high` partition), through the real CLI and submitit.

Needs root (start.sh installs and starts the daemons); skipped without it, except under CI=true.
Every campaign uses the tiny random Llama on the CPU, so a Slurm run must equal a local one bit
for bit: task ids are identical by construction, whichever executor ran them.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import run_cli
from slurm_helpers import (  # noqa: F401  (slurm_cluster is a fixture)
    datasets,
    manifest_text,
    queued,
    sacct,
    scontrol_job,
    slurm_cluster,
    state,
    submissions,
    timestamp,
    wait_until,
)

from toolkit.store.reader import Store

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

# ~20 s of generation on the idle 2-core test VM (the tiny model makes ~30 tokens/s there; a loaded
# machine is slower), well past the tiny config's max_position_embeddings=512, which RoPE handles.
# The task is preempted ~1 s after it starts writing its shard, so a faster machine is fine too.
PREEMPT_TOKENS = 600
ENDED = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "COMPLETED"}


def _job_ids(record: dict) -> list[str]:
    return [a["job_id"] for s in record["stages"] for a in s["arrays"]] + [s["gather"] for s in record["stages"]]


def _throttled(tmp_path: Path, campaign: str) -> tuple[Path, Path]:
    """3 a100 generate tasks in one array running one element at a time, then compare."""
    manifest = tmp_path / f"{campaign}.yaml"
    manifest.write_text(
        manifest_text(
            campaign,
            tmp_path / "campaigns",
            targets="[a100]",
            repeats=3,
            tokens=4,
            prompts='["The capital of France is"]',
            resources="{time_min: 10, cpus: 2, mem_gb: 2, array_parallelism: 1}",
        )
    )
    return manifest, tmp_path / "campaigns" / campaign


def _wait_for_job(job_id: str, timeout: float) -> None:
    """Until sacct says the job ended; fail at once if it did not complete."""

    def ended() -> bool:
        now = state(job_id)
        if now in ENDED - {"COMPLETED"}:
            pytest.fail(f"job {job_id} ended {now}")
        return now == "COMPLETED"

    wait_until(ended, timeout, f"job {job_id} to complete", poll=2)


def test_campaign_through_slurm_matches_local_run(tmp_path):
    manifest = tmp_path / "main.yaml"
    manifest.write_text(manifest_text("slurm-main", tmp_path / "campaigns"))
    with ThreadPoolExecutor(1) as pool:  # the local reference runs meanwhile, on the same CPUs
        local = pool.submit(
            run_cli,
            "submit",
            str(manifest),
            "--executor",
            "local",
            "--no-plot",
            "--root",
            str(tmp_path / "local"),
            timeout=300,
        )
        result = run_cli("submit", str(manifest), "--executor", "slurm", timeout=300)
        local_result = local.result()
    assert result.code == 0, result.err
    assert local_result.code == 0, local_result.err
    folder = tmp_path / "campaigns" / "slurm-main"
    assert "5 task(s), 0 already complete, 5 to run (slurm executor)" in result.out
    # --wait printed the tasks' Slurm states at least once (first look), each line naming all 5 tasks
    queue_lines = [x for x in result.out.splitlines() if x.startswith("slurm: ")]
    assert queue_lines and all(x.endswith(" of 5 task(s)") for x in queue_lines), result.out
    [record] = submissions(folder)
    stage1, stage2 = record["stages"]
    assert [a["target"] for a in stage1["arrays"]] == ["a100", "h100"]
    assert (
        f"stage 1: 4 task(s) in arrays {', '.join(a['job_id'] for a in stage1['arrays'])}; "
        f"gather job {stage1['gather']}" in result.out
    )
    [compare_array] = stage2["arrays"]
    assert compare_array["target"] == "any" and len(compare_array["task_ids"]) == 1

    # where each task ran, from its provenance
    where = {t: (a["target"], a["job_id"], i) for a in stage1["arrays"] for i, t in enumerate(a["task_ids"])}
    with Store(folder / "store.h5") as store:
        runs = {r.task_id: r for r in store.runs()}
        assert sorted(runs) == sorted([*where, *compare_array["task_ids"]])
        for task_id, (target, array, index) in where.items():
            assert runs[task_id].target == target
            slurm = runs[task_id].attrs["provenance"]["slurm"]
            assert slurm["slurmd_nodename"] == f"{target}-node", slurm
            assert (slurm["slurm_array_job_id"], slurm["slurm_array_task_id"]) == (array, str(index)), slurm
            assert slurm["slurm_job_partition"] == "batch" and slurm["slurm_cluster_name"] == "toolkit-test"
            assert re.fullmatch(r"[0-3]", slurm["cuda_visible_devices"]), slurm  # one of the node's 4 fake GPUs
            assert slurm.get("slurm_restart_count", "0") == "0"
        runs_repeat = {t: r.repeat for t, r in runs.items()}
        compare_slurm = runs[compare_array["task_ids"][0]].attrs["provenance"]["slurm"]
        assert compare_slurm["slurm_job_id"] == compare_array["job_id"]
        assert compare_slurm["slurmd_nodename"] in ("a100-node", "h100-node")

    # ... and from sacct
    fields = ["JobID", "NodeList", "State", "Start", "End"]
    elements = {r["JobID"]: r for r in sacct([a["job_id"] for a in stage1["arrays"]], fields)}
    assert sorted(elements) == sorted(f"{array}_{index}" for _, array, index in where.values())
    for target, array, index in where.values():
        row = elements[f"{array}_{index}"]
        assert (row["NodeList"], row["State"]) == (f"{target}-node", "COMPLETED"), row
    [gather1] = sacct([stage1["gather"]], fields)
    [compare_job] = sacct([compare_array["job_id"]], fields)
    [gather2] = sacct([stage2["gather"]], fields)
    assert gather1["State"] == compare_job["State"] == gather2["State"] == "COMPLETED"
    # afterok honoured: the gather after every element, the compare stage after that gather
    for row in elements.values():
        assert timestamp(gather1["Start"]) >= timestamp(row["End"]), (gather1, row)
    assert timestamp(compare_job["Start"]) >= timestamp(gather1["End"]), (compare_job, gather1)
    assert timestamp(gather2["Start"]) >= timestamp(compare_job["End"]), (gather2, compare_job)
    assert (folder / "figures").is_dir() and any((folder / "figures").iterdir())  # made by the last gather job

    # bitwise equal to the local executor's run (same task ids by construction)
    slurm_data = datasets(folder / "store.h5")
    local_data = datasets(tmp_path / "local" / "slurm-main" / "store.h5")
    assert sorted(slurm_data) == sorted(local_data)
    assert slurm_data == local_data

    status = run_cli("status", str(folder))
    assert status.code == 0 and status.out.startswith("5 task(s): 5 stored")
    for task_id, (target, _, _) in where.items():
        line = next(x for x in status.out.splitlines() if task_id in x)
        assert line.endswith(f"generate {target} r{runs_repeat[task_id]}  slurm COMPLETED on {target}-node"), line


def test_preempted_task_is_requeued_and_matches_local_run(tmp_path):
    manifest = tmp_path / "preempt.yaml"
    # time_min 20: submitit counts a USR2 in the first 10 min as a preemption, not a timeout
    manifest.write_text(
        manifest_text(
            "preempt",
            tmp_path / "campaigns",
            targets="[h100]",
            repeats=1,
            tokens=PREEMPT_TOKENS,
            prompts='["The capital of France is"]',
            compare=False,
            resources="{time_min: 20, cpus: 2, mem_gb: 2}",
        )
    )
    folder = tmp_path / "campaigns" / "preempt"
    submitted = run_cli("submit", str(manifest), "--executor", "slurm", "--no-wait", timeout=120)
    assert submitted.code == 0, submitted.err
    [stage] = submissions(folder)[0]["stages"]
    [array] = stage["arrays"]
    job, gather, [task_id] = array["job_id"], stage["gather"], array["task_ids"]
    pool = ThreadPoolExecutor(1)  # the reference runs meanwhile (mostly while the requeued job waits)
    local = pool.submit(
        run_cli,
        "submit",
        str(manifest),
        "--executor",
        "local",
        "--no-plot",
        "--root",
        str(tmp_path / "local"),
        timeout=300,
    )
    try:
        wait_until(
            lambda: state(job) == "RUNNING" and list((folder / "shards").glob(f".{task_id}.h5~*.tmp")),
            120,
            f"job {job} running and writing its shard",
            poll=0.5,
        )
        assert state(job) == "RUNNING", "the task finished before it could be preempted; raise PREEMPT_TOKENS"
        high = subprocess.run(
            [
                "sbatch",
                "--parsable",
                "-p",
                "high",
                "-w",
                "h100-node",
                "--exclusive",
                "-o",
                "/dev/null",
                "--wrap",
                "sleep 5",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        restarts = wait_until(
            lambda: int((re.findall(r"Restarts=(\d+)", scontrol_job(job)) or ["0"])[0]), 60, f"job {job} to be requeued"
        )
        assert restarts >= 1
        _wait_for_job(gather, 240)
    finally:
        subprocess.run(["scancel", job, gather], capture_output=True, timeout=30)
        local_result = local.result()
        pool.shutdown()
    assert local_result.code == 0, local_result.err

    rows = sacct([job], ["JobID", "State", "NodeList", "Start", "End"], duplicates=True)
    states = [r["State"].split()[0] for r in rows if r["JobID"] == job]
    assert len(states) >= 2 and states[-1] == "COMPLETED", rows
    assert set(states[:-1]) & {"PREEMPTED", "REQUEUED"}, rows
    assert state(high) == "COMPLETED"
    with Store(folder / "store.h5") as store:
        [run] = store.runs()
        slurm = run.attrs["provenance"]["slurm"]
        assert int(slurm["slurm_restart_count"]) >= 1, slurm
        assert slurm["slurmd_nodename"] == "h100-node" and slurm["slurm_job_id"] == job
        assert len(run["prompts/000/generated_ids"]) == PREEMPT_TOKENS  # past 512 positions, no error
    assert datasets(folder / "store.h5") == datasets(tmp_path / "local" / "preempt" / "store.h5")
    status = run_cli("status", str(folder))
    assert status.out.startswith("1 task(s): 1 stored") and "slurm COMPLETED on h100-node" in status.out


def test_status_shows_a_cancelled_task(tmp_path):
    manifest, folder = _throttled(tmp_path, "cancel-status")
    submitted = run_cli("submit", str(manifest), "--executor", "slurm", "--no-wait", timeout=120)
    assert submitted.code == 0, submitted.err
    array = submissions(folder)[0]["stages"][0]["arrays"][0]
    last = len(array["task_ids"]) - 1
    cancelled = array["task_ids"][last]
    try:
        subprocess.run(["scancel", f"{array['job_id']}_{last}"], check=True, timeout=30)

        def shows_cancelled() -> str:
            out = run_cli("status", str(folder)).out
            line = next(x for x in out.splitlines() if cancelled in x)
            return out if "slurm CANCELLED" in line else ""

        out = wait_until(shows_cancelled, 30, f"toolkit status to show {cancelled} cancelled")
        others = [x for x in out.splitlines()[1:] if cancelled not in x]
        assert len(others) == 3 and not any("CANCELLED" in x for x in others), out
    finally:
        run_cli("cancel", str(folder))


def test_submit_wait_reports_a_cancelled_task_then_resubmits_only_the_missing(tmp_path):
    manifest, folder = _throttled(tmp_path, "cancel-wait")

    def cancel_last_element() -> str:
        wait_until(lambda: (folder / "slurm.json").exists(), 60, "slurm.json", poll=0.2)
        array = submissions(folder)[0]["stages"][0]["arrays"][0]
        last = len(array["task_ids"]) - 1
        subprocess.run(["scancel", f"{array['job_id']}_{last}"], check=True, timeout=30)
        return array["task_ids"][last]

    with ThreadPoolExecutor(1) as pool:
        canceller = pool.submit(cancel_last_element)
        started = time.monotonic()
        result = run_cli("submit", str(manifest), "--executor", "slurm", "--no-plot", timeout=180)
        cancelled = canceller.result()
    assert result.code == 1, (result.out, result.err)
    errors = [x for x in result.err.splitlines() if x.startswith("error:")]
    assert any(cancelled in x and "cancelled" in x for x in errors), result.err
    [first] = submissions(folder)
    wait_until(lambda: not queued(_job_ids(first)), 30, "the stranded jobs to leave the queue")
    print(f"submit --wait returned after {time.monotonic() - started:.0f} s")

    # the wait cancelled only what could never start: the other two elements (pending behind
    # the %1 throttle, not behind a failure) still ran
    from toolkit.campaign import done_task_ids

    plan_tasks = set(json.loads((folder / "plan.json").read_text())["tasks"])
    done = done_task_ids(folder)
    assert done == set(first["stages"][0]["arrays"][0]["task_ids"]) - {cancelled}
    missing = plan_tasks - done
    assert len(missing) == 2  # the cancelled task and the compare task after it

    again = run_cli("submit", str(manifest), "--executor", "slurm", "--no-plot", timeout=180)
    assert again.code == 0, again.err
    assert f"4 task(s), 2 already complete, {len(missing)} to run (slurm executor)" in again.out
    latest = submissions(folder)[-1]
    assert sorted(t for s in latest["stages"] for a in s["arrays"] for t in a["task_ids"]) == sorted(missing)
    assert done_task_ids(folder) == plan_tasks


def test_toolkit_cancel(tmp_path):
    manifest, folder = _throttled(tmp_path, "cancel-all")
    submitted = run_cli("submit", str(manifest), "--executor", "slurm", "--no-wait", timeout=120)
    assert submitted.code == 0, submitted.err
    ids = _job_ids(submissions(folder)[0])
    cancelled = run_cli("cancel", str(folder))
    assert cancelled.code == 0, cancelled.err
    match = re.fullmatch(r"cancelled (\d+) job\(s\): (.+)", cancelled.out.strip())
    assert match, cancelled.out
    assert int(match.group(1)) == len(ids) and sorted(match.group(2).split(", ")) == sorted(ids)
    wait_until(lambda: not queued(ids), 30, "the cancelled jobs to leave the queue")
    status = run_cli("status", str(folder))
    assert status.out.count("slurm CANCELLED") == 4, status.out

    again = run_cli("cancel", str(folder))
    assert again.code == 0 and again.out.strip() == "cancelled 0 job(s)"

    nothing = tmp_path / "not-slurm"  # a campaign folder (its plan) that was never submitted to Slurm
    nothing.mkdir()
    shutil.copy(folder / "plan.json", nothing / "plan.json")
    refused = run_cli("cancel", str(nothing))
    assert refused.code == 2
    assert refused.err.strip() == f"error: {nothing}: no Slurm submission recorded (slurm.json); nothing to cancel"
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = run_cli("cancel", str(empty))
    assert refused.code == 2
    assert refused.err.strip() == f"error: {empty}: not a campaign folder (no plan.json); submit a manifest first"


def test_arrays_split_past_max_array_size(tmp_path, monkeypatch):
    """5 tasks of one group with MaxArraySize 2: arrays of 2 + 2 + 1, all run to completion."""
    from toolkit.launch import slurm_state
    from toolkit.submit import submit_campaign

    monkeypatch.setattr(slurm_state, "max_array_size", lambda: 2)
    manifest = tmp_path / "split.yaml"
    manifest.write_text(
        manifest_text(
            "split",
            tmp_path / "campaigns",
            targets="[h100]",
            repeats=5,
            tokens=3,
            prompts='["Numbers: 1, 2, 3,"]',
            compare=False,
            resources="{time_min: 10, cpus: 1, mem_gb: 1}",
        )
    )  # all 5 fit on the node

    def too_long(*_):
        raise TimeoutError("the in-process campaign did not finish within 240 s")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(240)
    lines: list[str] = []
    try:
        folder = submit_campaign(
            manifest, executor="slurm", root=None, site=None, force=False, wait=True, plot=False, say=lines.append
        )
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    [record] = submissions(folder)
    [stage] = record["stages"]
    arrays = stage["arrays"]
    assert [len(a["task_ids"]) for a in arrays] == [2, 2, 1]
    assert {a["target"] for a in arrays} == {"h100"} and len({a["job_id"] for a in arrays}) == 3
    assert (
        f"stage 1: 5 task(s) in arrays {', '.join(a['job_id'] for a in arrays)}; gather job {stage['gather']}" in lines
    )
    elements = {r["JobID"]: r["State"] for r in sacct([a["job_id"] for a in arrays], ["JobID", "State"])}
    a, b, c = (x["job_id"] for x in arrays)
    assert elements == {
        f"{a}_0": "COMPLETED",
        f"{a}_1": "COMPLETED",
        f"{b}_0": "COMPLETED",
        f"{b}_1": "COMPLETED",
        c: "COMPLETED",
    }  # a chunk of one is a plain job
    with Store(folder / "store.h5") as store:
        runs = {r.task_id: r.attrs["provenance"]["slurm"] for r in store.runs()}
    assert sorted(runs) == sorted(t for x in arrays for t in x["task_ids"])
    for array in arrays[:2]:
        for index, task_id in enumerate(array["task_ids"]):
            assert (runs[task_id]["slurm_array_job_id"], runs[task_id]["slurm_array_task_id"]) == (
                array["job_id"],
                str(index),
            )
    assert runs[arrays[2]["task_ids"][0]]["slurm_job_id"] == c
