"""Benchmark: the start overhead of a task inside the container against the bare venv.

Each task of a campaign is a fresh python process; inside a container it is started through the
prefix of `toolkit.launch.container` (``podman run --rm --network none -v ... IMAGE python``).
Measured, N times each (default 5, after one untimed warm-up run each), wall time end to end:

* bare:      ``<venv python> -c "import toolkit, torch"``
* container: ``<container prefix> -c "import toolkit, torch"`` (the exact argv a job uses, with
  the campaign folder bound, the job's variables passed and the image run by its digest)
* and, to split the overhead, the same two with ``-c pass`` (interpreter start only).

Prints the median and mean of each, the ratio container/bare and the overhead in seconds.

Then per TASK through the real campaign path (skip with --campaign-runs 0): a one-task campaign
(the tiny random Llama, one prompt, one generated token, target cpu: one forward) submitted with
``toolkit submit --executor local --no-plot`` as a user would, bare and with ``container:
{runtime: <runtime>, image: <image>}``, a fresh campaign folder each run (default 3 runs each).
The command's wall time includes validation, planning, the submitit job (in the image, or not)
and the gather; the difference is what the container adds to a task.

Needs podman (or --runtime docker, with DOCKER_HOST) and the image (containers/build.sh);
without them it says why and exits 0, or 1 with --require.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import toolkit  # noqa: E402
from toolkit.launch.container import ContainerError, check_runtime, container_argv, image_digest  # noqa: E402


def timed(argv: list[str], n: int, cwd: str) -> list[float]:
    """Wall seconds of n runs of argv (after one untimed warm-up); fails loudly on an error."""
    times = []
    for i in range(n + 1):
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"bench_container: {argv[0]} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
        if i:
            times.append(elapsed)
    return times


def line(label: str, times: list[float]) -> str:
    return (
        f"  {label:<34} median {statistics.median(times):6.3f} s   mean {statistics.mean(times):6.3f} s   "
        f"min {min(times):6.3f} s   max {max(times):6.3f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=f"localhost/toolkit:{toolkit.__version__}")
    parser.add_argument("--runtime", default="podman", choices=("podman", "docker"))
    parser.add_argument("-n", "--runs", type=int, default=5)
    parser.add_argument("--campaign-runs", type=int, default=3, help="one-task campaigns per variant (0: skip)")
    parser.add_argument("--require", action="store_true", help="exit 1 (not 0) when the runtime or image is missing")
    args = parser.parse_args()

    try:
        check_runtime(args.runtime, args.image)
        digest = image_digest(args.runtime, args.image)
    except ContainerError as err:
        print(f"bench_container: skipped: {err}")
        return 1 if args.require else 0

    with tempfile.TemporaryDirectory(prefix="bench-container ") as tmp:
        prefix = container_argv(
            args.runtime,
            args.image,
            binds=[tmp],
            digest=digest,
            supervise=True,
            env={"TOOLKIT_CONTAINER_RUNTIME": args.runtime},
        )
        bare_python = [sys.executable]
        print(
            f"bench_container: {args.runs} runs each (+1 warm-up), {os.cpu_count()} CPUs, "
            f"image {args.image} ({digest[:19]}), runtime {shutil.which(args.runtime)}"
        )
        print(f"  container prefix: {prefix[0]} -c <supervisor> {' '.join(prefix[3:8])} ... {' '.join(prefix[-2:])}")
        results = {}
        for code in ("import toolkit, torch", "pass"):
            bare = timed([*bare_python, "-c", code], args.runs, tmp)
            boxed = timed([*prefix, "-c", code], args.runs, tmp)
            results[code] = (bare, boxed)
            print(f"python -c {code!r}:")
            print(line("bare (venv python)", bare))
            print(line(f"container ({args.runtime} run)", boxed))
            ratio = statistics.median(boxed) / statistics.median(bare)
            overhead = statistics.median(boxed) - statistics.median(bare)
            print(f"  ratio container/bare {ratio:.2f}x, overhead {overhead:+.3f} s per task (medians)")
        if args.campaign_runs > 0:
            campaign_overhead(args, Path(tmp))
    return 0


CAMPAIGN = """\
campaign: bench-task
output: {output}
model: {{source: tiny-random-llama, dtype: float32, attn_implementation: eager}}
prompts: ["The capital of France is"]
targets: [cpu]
experiments:
  - name: exp4.generate
    params: {{max_new_tokens: 1, top_k: 5, stop_at_eos: false}}
"""


def campaign_overhead(args: argparse.Namespace, tmp: Path) -> None:
    """A one-task campaign through `toolkit submit --executor local`, bare vs in the image."""
    bare_manifest = tmp / "bare.yaml"
    bare_manifest.write_text(CAMPAIGN.format(output=tmp / "out"))
    boxed_manifest = tmp / "boxed.yaml"
    boxed_manifest.write_text(
        CAMPAIGN.format(output=tmp / "out") + f"container: {{runtime: {args.runtime}, image: {args.image}}}\n"
    )
    cli = [sys.executable, "-m", "toolkit.cli", "submit"]
    times: dict[str, list[float]] = {"bare": [], "container": []}
    for i in range(args.campaign_runs):
        for label, manifest in (("bare", bare_manifest), ("container", boxed_manifest)):
            root = tmp / f"{label}-{i}"
            times[label] += timed_once(
                [*cli, str(manifest), "--executor", "local", "--no-plot", "--root", str(root)], str(REPO)
            )
    print(f"one-task campaign (toolkit submit --executor local, tiny Llama, 1 token), {args.campaign_runs} runs each:")
    print(line("bare", times["bare"]))
    print(line(f"container ({args.runtime})", times["container"]))
    bare, boxed = statistics.median(times["bare"]), statistics.median(times["container"])
    print(f"  ratio container/bare {boxed / bare:.2f}x, overhead {boxed - bare:+.3f} s per task job (medians)")


def timed_once(argv: list[str], cwd: str) -> list[float]:
    start = time.perf_counter()
    proc = subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"bench_container: {' '.join(argv[-6:])} exited {proc.returncode}: {proc.stderr.strip()[-800:]}"
        )
    return [elapsed]


if __name__ == "__main__":
    sys.exit(main())
