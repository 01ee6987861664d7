"""Helpers for the real-Slurm tests: the `slurm_cluster` fixture (starts slurm/testcluster as
root), manifests for the test cluster, and thin sacct / scontrol / slurm.json readers."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

NO_ROOT = "real Slurm tests need root to start slurm/testcluster/start.sh"


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Start (or check) the single-machine test cluster; left running at the end.

    Without root the tests are skipped, except under CI (CI=true), where they are mandatory.
    """
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(NO_ROOT)
        pytest.skip(NO_ROOT)
    try:
        proc = subprocess.run(
            ["bash", str(REPO / "slurm" / "testcluster" / "start.sh")], capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"slurm/testcluster/start.sh did not finish within 300 s:\n{err.stdout or ''}{err.stderr or ''}")
    if proc.returncode != 0:
        pytest.fail(f"slurm/testcluster/start.sh exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout.strip()


def manifest_text(
    campaign: str,
    output: Path,
    *,
    targets: str = "[a100, h100]",
    repeats: int = 2,
    tokens: int = 6,
    prompts: str = '["The capital of France is", "Numbers: 1, 2, 3,"]',
    compare: bool = True,
    resources: str = "{time_min: 10, cpus: 2, mem_gb: 2}",
) -> str:
    """A tiny-random-Llama campaign for the test cluster (generate, then optionally compare)."""
    text = f"""\
campaign: {campaign}
output: {output}
site: testcluster
model: {{source: tiny-random-llama, dtype: float32, attn_implementation: eager}}
prompts: {prompts}
targets: {targets}
resources: {resources}
experiments:
  - name: exp4.generate
    id: generate
    params: {{max_new_tokens: {tokens}, top_k: 5, stop_at_eos: false}}
    repeats: {repeats}
"""
    if compare:
        text += "  - name: exp4.compare\n    id: compare\n    needs: [generate]\n"
    return text


def submissions(folder: Path) -> list[dict[str, Any]]:
    """The submissions recorded in <campaign>/slurm.json, oldest first."""
    return json.loads((folder / "slurm.json").read_text())["submissions"]


def sacct(job_ids: list[str], fields: list[str], duplicates: bool = False) -> list[dict[str, str]]:
    """`sacct -X -n -P` rows (one per job / array element) as dicts of the given fields."""
    args = ["sacct", "-X", "-n", "-P", "-o", ",".join(fields), "-j", ",".join(job_ids)]
    if duplicates:
        args.insert(1, "--duplicates")
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


def state(job_id: str) -> str:
    """The first word of a job's (or array element's) sacct State, '' if sacct has no row yet."""
    rows = [r for r in sacct([job_id], ["JobID", "State"]) if r["JobID"] == job_id]
    return rows[-1]["State"].split()[0] if rows else ""


def scontrol_job(job_id: str) -> str:
    """`scontrol show job` text ('' once slurmctld has forgotten the job)."""
    proc = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    return proc.stdout if proc.returncode == 0 else ""


def queued(job_ids: list[str]) -> list[str]:
    """Lines of squeue (pending, running or completing) that belong to the given jobs."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, check=True, timeout=30).stdout
    return [line for line in out.splitlines() if line.split("_")[0].split()[0] in set(job_ids)]


def timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


def wait_until(check: Callable[[], Any], timeout: float, what: str, poll: float = 1.0) -> Any:
    """Poll `check` until it returns something true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def datasets(store_path: Path, experiment: str | None = None) -> dict[str, dict[str, bytes]]:
    """task_id → dataset → raw bytes, for a bitwise comparison of two stores."""
    import numpy as np

    from toolkit.store.reader import Store

    def raw(value: Any) -> bytes:
        array = np.asarray(value)
        return repr(array.tolist()).encode() if array.dtype == object else array.tobytes()

    with Store(store_path) as store:
        return {r.task_id: {k: raw(r[k]) for k in r.datasets()} for r in store.runs(experiment)}
