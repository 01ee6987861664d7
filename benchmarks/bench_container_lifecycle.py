"""Benchmark: container lifecycle times on this machine — a cached image rebuild, and how long a
SIGTERMed task takes to remove its (supervised) container.

These used to be wall-time assertions in tests/test_container_build.py (`a rebuild with unchanged
inputs < 60 s`) and tests/test_container_campaign.py (`container gone < 15 s after SIGTERM`);
the tests now check what is true on every machine (the rebuild builds nothing, the container is
removed and the job exits 143) and the figures live here:

* rebuild: ``bash containers/build.sh --base BASE`` with unchanged inputs, wall time (best of N);
* stop: a supervised ``podman run`` of ``python -c 'sleep'`` (the argv a job uses), SIGTERM once it
  has started, time until the process has exited and no ``toolkit-*`` container is left.

Needs podman and the images (containers/build.sh); without them it says why and exits 0, or 1
with --require.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import toolkit  # noqa: E402
from toolkit.launch.container import container_argv  # noqa: E402

BASE = "localhost/toolkit-base:bookworm"


def leftovers() -> list[str]:
    out = subprocess.run(
        ["podman", "ps", "-a", "--filter", "name=^toolkit-", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return out.split()


def rebuild_seconds(runs: int) -> float:
    """Best wall time of a rebuild with unchanged inputs; exits 1 if it built something.

    A first, untimed build brings the image up to date with the working tree (any source edit
    since the last build changes its inputs), so every timed one has unchanged inputs."""
    subprocess.run(
        ["bash", str(REPO / "containers/build.sh"), "--base", BASE], cwd=REPO, capture_output=True, timeout=1800
    )
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(
            ["bash", str(REPO / "containers/build.sh"), "--base", BASE],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        best = min(best, time.perf_counter() - start)
        if proc.returncode != 0 or "nothing to build" not in proc.stderr:
            sys.exit(f"bench_container_lifecycle: the rebuild was not a no-op:\n{proc.stderr[-2000:]}")
    return best


def stop_seconds(image: str, runs: int) -> float:
    """Best time from SIGTERM to an exited job with no container left."""
    best = float("inf")
    with tempfile.TemporaryDirectory(prefix="bench-stop-") as tmp:
        argv = container_argv("podman", image, binds=[tmp], supervise=True)
        for _ in range(runs):
            started = Path(tmp) / "started"
            started.unlink(missing_ok=True)
            job = subprocess.Popen(
                [*argv, "-c", "import time; open('started', 'w').close(); time.sleep(120)"],
                cwd=tmp,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 120
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            start = time.perf_counter()
            job.send_signal(signal.SIGTERM)
            job.wait(timeout=120)
            while leftovers():
                time.sleep(0.05)
            best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    """Print the two figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=f"localhost/toolkit:{toolkit.__version__}")
    parser.add_argument("-n", "--runs", type=int, default=3)
    parser.add_argument("--require", action="store_true", help="exit 1 (not 0) when podman or the image is missing")
    args = parser.parse_args()
    missing = [what for what, ok in (("podman", shutil.which("podman")),) if not ok]
    if not missing:
        found = subprocess.run(["podman", "image", "exists", args.image], capture_output=True, timeout=60)
        missing += [] if found.returncode == 0 else [f"image {args.image} (containers/build.sh)"]
    if missing:
        print(f"bench_container_lifecycle: skipped: missing {', '.join(missing)}")
        return 1 if args.require else 0
    print(f"bench_container_lifecycle: best of {args.runs}, image {args.image}")
    print(f"  cached rebuild (containers/build.sh, inputs unchanged): {rebuild_seconds(args.runs):.1f} s")
    print(f"  SIGTERM -> job exited and container removed: {stop_seconds(args.image, args.runs):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
