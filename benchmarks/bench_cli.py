"""Benchmark: how fast the CLI refuses bad input (wall time, end to end, in a subprocess).

A malformed manifest (an unknown key, a negative `max_new_tokens`) and a path that is not a
campaign folder are given to the commands a user runs first: `validate`, `submit`, `status`,
`show` and `plot`.  Each must exit 2; the wall time of each, best of `--repeats` (default 3),
is printed next to the time of `python -c pass` (the interpreter's own start-up), and the modules
torch, transformers, h5py and submitit are checked NOT to be imported by `validate` (what keeps
it instant on a login node).  These timings used to be assertions in the tests (`elapsed < 5`);
they are figures of this machine, so they live here.

Exits 1 if a command does not exit 2 or validate imports a heavy module.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BAD_MANIFEST = """\
campaign: bench-cli
model: {source: tiny-random-llama}
colour: blue
experiments:
  - name: exp4.generate
    params: {max_new_tokens: -3}
"""
HEAVY = ("torch", "transformers", "h5py", "submitit")
PROBE = (
    "import sys, runpy\nsys.argv = ['toolkit', 'validate', sys.argv[1]]\n"
    "try:\n    runpy.run_module('toolkit.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
    "print(','.join(m for m in {heavy!r} if m in sys.modules))"
)


def best_of(argv: list[str], repeats: int, expect: int) -> float:
    """Best wall time of `argv` over `repeats` runs; exits 1 if its exit code is not `expect`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
        best = min(best, time.perf_counter() - start)
        if proc.returncode != expect:
            sys.exit(f"{' '.join(argv[3:])}: exit {proc.returncode}, expected {expect}: {proc.stderr.strip()}")
    return best


def main() -> None:
    """Print the seconds each command takes to refuse bad input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    try:
        manifest = folder / "bad.yaml"
        manifest.write_text(BAD_MANIFEST)
        cli = [sys.executable, "-m", "toolkit.cli"]
        base = best_of([sys.executable, "-c", "pass"], args.repeats, 0)
        print(f"python -c pass: {base:.2f} s (interpreter start-up)")
        commands = [
            ["validate", str(manifest)],
            ["submit", str(manifest), "--executor", "local"],
            ["status", str(folder)],
            ["show", str(folder)],
            ["plot", str(folder)],
        ]
        for command in commands:
            print(f"toolkit {command[0]:<8} refuses bad input: {best_of(cli + command, args.repeats, 2):.2f} s")
        probe = subprocess.run(
            [sys.executable, "-c", PROBE.format(heavy=HEAVY), str(manifest)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        imported = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else ""
        print(f"heavy modules imported by validate: {imported or 'none'}")
        if imported:
            sys.exit(1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
