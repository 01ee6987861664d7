"""Benchmark: the toolkit's Slurm executor against bare sbatch, on a real cluster (slurm/testcluster).

1. Per-task overhead.  N tasks (default 8) of tiny work — the tiny random Llama, one prompt, one
   generated token, i.e. one forward — run as a campaign by `toolkit submit --executor slurm`
   (arrays per target through submitit, a gather job, `--wait` polling; wall time from starting
   the command to its exit), against the naive way: N bare `sbatch --wrap` jobs, each running the
   same load-and-one-forward as a plain `python -c` one-liner with the same sbatch options,
   submitted at once and waited for through sacct.  Printed: seconds per task for both and the
   ratio.  The bare jobs write nothing: the toolkit's extra time pays for shards, checksums,
   provenance, the gathered store.h5 and restartability.
2. Submitting a 2,000-task campaign: `toolkit submit --no-wait` of exp4.generate on one target
   × 20 repeats × a sweep of 100 `max_new_tokens` values = 2,000 tasks (two arrays, 1,001 + 999
   with MaxArraySize=1001, plus the gather job).  Printed: seconds, end to end.  It is cancelled at
   once with `toolkit cancel`; the script checks that none of its jobs is left in squeue.

Needs `sbatch` on PATH and a running cluster that knows the `testcluster` site profile's
targets (start it with `sudo slurm/testcluster/start.sh`); without sbatch it prints why and exits 0.
Exits 1 if a step fails.  About 1.5-3 minutes on the 2-core test VM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is"
RESOURCES = {"time_min": 10, "cpus": 2, "mem_gb": 2}
BIG_TASKS = 2_000
BIG_REPEATS = 20
BIG_TOKENS = list(range(1, 101))  # 100 sweep values


def fail(message: str) -> None:
    print(f"bench_slurm: FAIL: {message}", file=sys.stderr)
    raise SystemExit(1)


def toolkit(*args: str, timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    """Run `python -m toolkit.cli ARGS` from the repo root; (wall seconds, result)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    return time.perf_counter() - t0, proc


def small_manifest(output: Path, n: int) -> str:
    return f"""\
campaign: bench-overhead
output: {output}
site: testcluster
model: {{source: tiny-random-llama, dtype: float32, attn_implementation: eager}}
prompts: ["{PROMPT}"]
targets: [a100, h100]
resources: {{time_min: {RESOURCES["time_min"]}, cpus: {RESOURCES["cpus"]}, mem_gb: {RESOURCES["mem_gb"]}}}
experiments:
  - name: exp4.generate
    id: generate
    params: {{max_new_tokens: 1, top_k: 5, stop_at_eos: false}}
    repeats: {n // 2}
"""


def big_manifest(output: Path) -> str:
    return f"""\
campaign: bench-submit
output: {output}
site: testcluster
model: {{source: tiny-random-llama}}
prompts: ["{PROMPT}"]
targets: [a100]
resources: {{time_min: 10, cpus: 1, mem_gb: 1}}
experiments:
  - name: exp4.generate
    id: generate
    params: {{top_k: 5}}
    repeats: {BIG_REPEATS}
    sweep: {{max_new_tokens: [{", ".join(map(str, BIG_TOKENS))}]}}
"""


ONE_FORWARD = (
    "import torch; from toolkit.manifest import ModelSpec, Numerics; from toolkit.models.loading import load; "
    "m, t, d = load(ModelSpec(source='tiny-random-llama'), Numerics()); "
    f"torch.set_grad_enabled(False); print(int(m(**t({PROMPT!r}, return_tensors='pt')).logits[0, -1].argmax()))"
)


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return {line.split("|")[0]: line.split("|")[1].split()[0] for line in out.splitlines() if "|" in line}


def bare_sbatch(n: int, workdir: Path, timeout: float) -> float:
    """N `sbatch --wrap` jobs doing the same work; seconds from the first sbatch to the last end."""
    cmd = f"{sys.executable} -c {json.dumps(ONE_FORWARD)}"
    t0 = time.perf_counter()
    ids = []
    for i in range(n):
        target = "a100" if i % 2 == 0 else "h100"
        proc = subprocess.run(
            [
                "sbatch",
                "--parsable",
                "-p",
                "batch",
                f"--constraint={target}",
                f"--gres=gpu:{target}:1",
                f"--cpus-per-task={RESOURCES['cpus']}",
                f"--mem={RESOURCES['mem_gb'] * 1024}M",
                f"--time={RESOURCES['time_min']}",
                "-J",
                "bench-bare",
                "-o",
                str(workdir / "bare-%j.out"),
                f"--chdir={REPO}",
                "--wrap",
                cmd,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            fail(f"sbatch refused a bare job: {proc.stderr.strip()}")
        ids.append(proc.stdout.strip().split(";")[0])
    deadline = time.monotonic() + timeout
    while True:
        states = sacct_states(ids)
        if len(states) == n and all(
            s in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"} for s in states.values()
        ):
            break
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *ids], capture_output=True)
            fail(f"the bare jobs did not finish within {timeout:.0f} s: {states}")
        time.sleep(1.0)
    elapsed = time.perf_counter() - t0
    bad = {j: s for j, s in states.items() if s != "COMPLETED"}
    if bad:
        fail(f"bare jobs did not complete: {bad}; see {workdir}/bare-*.out")
    return elapsed


def campaign_job_ids(folder: Path) -> list[str]:
    record = json.loads((folder / "slurm.json").read_text())["submissions"]
    return [j for s in record for st in s["stages"] for j in [a["job_id"] for a in st["arrays"]] + [st["gather"]]]


def in_queue(job_ids: list[str]) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, timeout=30).stdout
    wanted = set(job_ids)
    return [line for line in out.splitlines() if line.split()[0].split("_")[0] in wanted]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8, help="tasks in the overhead comparison (even; default 8)")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="folder for campaigns (must be visible to the compute "
        "nodes; default: a temporary folder, removed at the end)",
    )
    args = parser.parse_args()
    if not shutil.which("sbatch"):
        print("bench_slurm: skipped: sbatch is not on PATH (start the test cluster: sudo slurm/testcluster/start.sh)")
        return
    n = max(2, args.tasks - args.tasks % 2)
    tmp = Path(tempfile.mkdtemp(prefix="bench_slurm_", dir=args.workdir))
    try:
        # 1. per-task overhead
        manifest = tmp / "overhead.yaml"
        manifest.write_text(small_manifest(tmp / "campaigns", n))
        toolkit_s, proc = toolkit("submit", str(manifest), "--executor", "slurm", "--no-plot", timeout=300)
        if proc.returncode != 0:
            fail(f"toolkit submit exited {proc.returncode}:\n{proc.stderr}")
        if f"{n} task(s), 0 already complete, {n} to run" not in proc.stdout:
            fail(f"unexpected toolkit submit output:\n{proc.stdout}")
        bare_s = bare_sbatch(n, tmp, timeout=300)
        print(
            f"per-task overhead, {n} tasks (tiny Llama, one forward each): toolkit submit --executor slurm "
            f"{toolkit_s:.1f} s = {toolkit_s / n:.2f} s/task (arrays + gather job + store.h5); bare sbatch --wrap "
            f"{bare_s:.1f} s = {bare_s / n:.2f} s/task; ratio {toolkit_s / bare_s:.2f}x"
        )

        # 2. submitting 2,000 tasks
        manifest = tmp / "big.yaml"
        manifest.write_text(big_manifest(tmp / "campaigns"))
        submit_s, proc = toolkit("submit", str(manifest), "--executor", "slurm", "--no-wait", timeout=300)
        folder = tmp / "campaigns" / "bench-submit"
        ids = campaign_job_ids(folder) if (folder / "slurm.json").exists() else []
        cancel_s, cancelled = toolkit("cancel", str(folder), timeout=120) if ids else (0.0, None)
        if proc.returncode != 0:
            fail(f"toolkit submit of {BIG_TASKS} tasks exited {proc.returncode}:\n{proc.stderr}")
        if f"{BIG_TASKS} task(s), 0 already complete, {BIG_TASKS} to run" not in proc.stdout:
            fail(f"unexpected toolkit submit output:\n{proc.stdout}")
        if cancelled is None or cancelled.returncode != 0:
            fail(f"toolkit cancel failed: {cancelled and cancelled.stderr}")
        record = json.loads((folder / "slurm.json").read_text())["submissions"][0]
        sizes = [len(a["task_ids"]) for a in record["stages"][0]["arrays"]]
        deadline = time.monotonic() + 60
        while (left := in_queue(ids)) and time.monotonic() < deadline:
            time.sleep(1.0)
        if left:
            fail(f"{len(left)} job(s) of the cancelled campaign are still queued: {left[:5]}")
        total_queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.splitlines()
        print(
            f"submit {BIG_TASKS} tasks (toolkit submit --no-wait): {submit_s:.2f} s "
            f"({submit_s / BIG_TASKS * 1000:.1f} ms/task; arrays of {' + '.join(map(str, sizes))} and a gather "
            f"job); toolkit cancel: {cancel_s:.2f} s ({cancelled.stdout.split(':')[0].strip()}); "
            f"left queued: 0 of its jobs ({len(total_queue)} line(s) in squeue -h)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
