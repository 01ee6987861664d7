"""Benchmark: planning a 10,000-task campaign (load_manifest + build_plan, and `toolkit plan`).

A manifest is written into a temporary folder.  It expands to exactly 10,000 tasks in two stages:

* stage 1, `exp4.generate`: 3 targets (a100, h100, h200) × 11 repeats × a sweep of 101
  `max_new_tokens` values × 3 dtypes (float32, bfloat16, float16) = 9,999 tasks;
* stage 2, `exp4.compare`: 1 task (not per target) whose inputs are the 9,999 generate tasks.

Measured: the in-process time of `load_manifest` + `build_plan` (best of `--repeats`, default 3),
and the wall time of the `toolkit plan` command in a subprocess, end to end (interpreter start,
imports, planning, and printing one line per task).  There is no naive way of planning to compare
with, so only seconds (and tasks per second) are printed, and a line says so.  Nothing is run and no model is needed.

Exits 1 if the plan does not have exactly 10,000 tasks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXPECTED_TASKS = 10_000
TARGETS = ("a100", "h100", "h200")
REPEATS = 11
MAX_NEW_TOKENS = list(range(16, 16 + 101))  # 101 values
DTYPES = ("float32", "bfloat16", "float16")
GENERATE_TASKS = len(TARGETS) * REPEATS * len(MAX_NEW_TOKENS) * len(DTYPES)  # 9,999
COMPARE_TASKS = 1


def manifest_text(output: Path) -> str:
    """A valid manifest expanding to GENERATE_TASKS + COMPARE_TASKS tasks."""
    return f"""\
# Written by benchmarks/bench_plan.py: {GENERATE_TASKS} generate tasks + {COMPARE_TASKS} compare task.
campaign: bench-plan
output: {output}
model:
  source: smollm2-135m
  dtype: float32
  attn_implementation: eager
  kv_cache: true
prompts:
  - "The capital of France is"
  - "Once upon a time, in a small village by the sea,"
targets: [{", ".join(TARGETS)}]
experiments:
  - name: exp4.generate
    id: generate
    params: {{max_new_tokens: 48, top_k: 20}}
    repeats: {REPEATS}
    sweep:
      max_new_tokens: [{", ".join(str(n) for n in MAX_NEW_TOKENS)}]
      dtype: [{", ".join(DTYPES)}]
  - name: exp4.compare
    id: compare
    needs: [generate]
resources: {{time_min: 60, cpus: 4, mem_gb: 32, gpus: 1}}
container: {{runtime: none}}
"""


def toolkit_command() -> list[str]:
    """The `toolkit` console script of this interpreter's environment (or `python -m toolkit.cli`)."""
    script = Path(sys.executable).parent / "toolkit"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "toolkit.cli"]


def time_in_process(manifest: Path, repeats: int) -> tuple[float, float, float, Any]:
    """Best-of-`repeats` seconds of load_manifest, build_plan and both; the last plan built."""
    from toolkit.manifest import load_manifest
    from toolkit.plan import build_plan

    best_load = best_build = best_total = float("inf")
    plan = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        loaded = load_manifest(manifest)
        t1 = time.perf_counter()
        plan = build_plan(loaded)
        t2 = time.perf_counter()
        best_load, best_build, best_total = min(best_load, t1 - t0), min(best_build, t2 - t1), min(best_total, t2 - t0)
    return best_load, best_build, best_total, plan


def time_cli(manifest: Path, root: Path) -> tuple[float, int, str]:
    """Wall seconds of `toolkit plan MANIFEST --root ROOT`, its output line count and first line."""
    cmd = toolkit_command() + ["plan", str(manifest), "--root", str(root)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"bench_plan: `{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stderr}", file=sys.stderr)
        raise SystemExit(1)
    lines = proc.stdout.splitlines()
    return elapsed, len(lines), lines[0] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="in-process timings; the best is kept (default 3)")
    parser.add_argument("--no-cli", action="store_true", help="skip the `toolkit plan` subprocess timing")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_plan_"))
    try:
        manifest = tmp / "bench_plan.yaml"
        manifest.write_text(manifest_text(tmp / "campaigns"))
        load_s, build_s, total_s, plan = time_in_process(manifest, max(1, args.repeats))
        n_tasks = len(plan.tasks)
        per_exp = {e.id: len(plan.tasks_of(e.id)) for e in plan.manifest.experiments}
        print(
            f"manifest: generate = {len(TARGETS)} targets x {REPEATS} repeats x {len(MAX_NEW_TOKENS)} "
            f"max_new_tokens x {len(DTYPES)} dtypes, then compare; counted in the plan: "
            + " + ".join(f"{n} {k}" for k, n in per_exp.items())
            + f" = {n_tasks} tasks in {len(plan.stages)} stage(s)"
        )
        if n_tasks != EXPECTED_TASKS:
            print(f"bench_plan: FAIL: the plan has {n_tasks} tasks, expected {EXPECTED_TASKS}", file=sys.stderr)
            raise SystemExit(1)
        line = (
            f"plan: {n_tasks} tasks in {total_s:.2f} s ({n_tasks / total_s:,.0f} tasks/s; "
            f"load_manifest {load_s:.2f} s + build_plan {build_s:.2f} s, best of {max(1, args.repeats)})"
        )
        if not args.no_cli:
            cli_s, n_lines, first = time_cli(manifest, tmp / "campaigns")
            if f"{EXPECTED_TASKS} task(s)" not in first:
                print(f"bench_plan: FAIL: `toolkit plan` reported: {first}", file=sys.stderr)
                raise SystemExit(1)
            line += f"; CLI toolkit plan: {cli_s:.2f} s ({n_lines} lines of output)"
        print(line)
        print("baseline: none (the upstream research had no planner: it ran one script per experiment by hand)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
