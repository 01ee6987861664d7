"""The end-to-end half of bench_heatmap: one exp7.heatmap plane through `toolkit submit` against
the upstream per-point loop in a fresh process, in the same run.

Setup (not timed): a campaign whose exp6.equal_logits run finds a tie of the packaged model on the
prompt (2 directions).  Then, timed, each in its own process:

* toolkit: the same manifest plus one exp7.heatmap entry (plane [1, 2], `--e2e-grid`² points over
  ±1e-8, every other param at its default: faithful, batch 96, check 8, dedup), submitted with
  `toolkit submit --executor local --no-plot`, which runs only the new task (the tie is done):
  process start, imports, model load, reading the tie, the map with its run-time check, the shard
  and the gather.  Then the same with `mode: fast` (agreement sample 64 included).
* naive: a fresh Python process that imports torch and transformers, loads the same model, reads
  the tie from the store and runs the upstream exp7 loop (`bench_heatmap.upstream_loop`: one
  `model(...)` with all T rows' hidden states per point) on `--loop-points` seeded points of the
  same grid; its time is start-up + the loop extrapolated to the whole grid.

Also printed: the ceiling, naive / its start-up.  A toolkit submit pays that start-up too (process,
imports, model load) before its first point, so no map method could do better end to end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

TIE = "{method: geometric, n_directions: 2, svd_iterations: 12, jvp_mode: double_vjp}"


def manifest(root: Path, prompt: str, maps: list[str]) -> Path:
    """The campaign's manifest: the exp6 tie and the given exp7.heatmap entries (YAML flow maps)."""
    lines = [
        "campaign: heatmap-e2e",
        f"output: {root / 'campaigns'}",
        "model: {source: smollm2-135m, dtype: float32, attn_implementation: eager}",
        f"prompts: [{json.dumps(prompt)}]",
        "targets: [cpu]",
        "experiments:",
        f"  - {{name: exp6.equal_logits, id: tie, params: {TIE}}}",
    ]
    lines += [f"  - {{name: exp7.heatmap, id: map-{k}, needs: [tie], params: {m}}}" for k, m in enumerate(maps)]
    path = root / f"heatmap-e2e-{len(maps)}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def map_params(grid_n: int, mode: str) -> str:
    """The exp7.heatmap params of the timed entry: one plane, grid_n² points over ±1e-8."""
    return f"{{planes: [[1, 2]], e_min: -1.0e-8, e_max: 1.0e-8, step: {2e-8 / (grid_n - 1)!r}, mode: {mode}}}"


def submit(path: Path, threads: int) -> float:
    """Wall seconds of `toolkit submit PATH --executor local --no-plot` in a fresh process."""
    from bench_sigma import run_process

    seconds, _ = run_process(
        [sys.executable, "-m", "toolkit.cli", "submit", str(path), "--executor", "local", "--no-plot"], threads
    )
    return seconds


def stored_map(campaign: Path, task_id: str) -> dict[str, Any]:
    """Path, point count and check of the map written by the exp7.heatmap entry `task_id`."""
    from toolkit.store.reader import Store

    with Store(campaign / "store.h5") as store:
        (run,) = [r for r in store.runs("exp7.heatmap") if r.exp_id == task_id]
        group = run.group["maps/000"]
        return {
            "path": str(group.attrs["evaluation_path"]),
            "n_points": int(group.attrs["n_points"]),
            "distinct": int(group.attrs["n_distinct_inputs"]),
            "sign_agreement": group.attrs.get("agreement_sign_agreement"),
        }


def naive_worker(campaign: str, grid_n: int, points: int, seed: int) -> dict[str, Any]:
    """In a fresh process: load, read the tie, time the upstream loop on `points` grid points."""
    import numpy as np
    import torch

    from toolkit.experiments.exp7.heatmap import read_tie_points
    from toolkit.numerics import grid
    from toolkit.store.reader import Store

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_heatmap import load, upstream_loop

    model, _ = load(torch.get_num_threads())
    with Store(Path(campaign) / "store.h5") as store:
        (run,) = store.runs("exp6.equal_logits")
        tie = read_tie_points(run)[0]
        embeds = torch.from_numpy(np.asarray(tie.embeds)).float()[None]
        x0 = torch.from_numpy(np.asarray(tie.x0)).float()
        v1, v2 = (torch.from_numpy(np.asarray(tie.directions[i])) for i in (0, 1))
    e = grid.axis_n(-1e-8, 1e-8, grid_n)
    picks = np.random.default_rng(seed).choice(grid_n**2, size=min(points, grid_n**2), replace=False)
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    upstream_loop(model, embeds, x0, v1, v2, e, e, tie.pair, picks)
    return {"loop_seconds": time.perf_counter() - start, "points": len(picks)}


def naive(campaign: Path, grid_n: int, points: int, threads: int) -> tuple[float, float]:
    """(extrapolated end-to-end seconds of the upstream loop on the whole grid, its start-up seconds)."""
    from bench_sigma import run_process

    cmd = [sys.executable, __file__, "--worker", str(campaign), "--e2e-grid", str(grid_n), "--loop-points", str(points)]
    wall, out = run_process(cmd, threads)
    result = json.loads(out.strip().splitlines()[-1])
    startup = wall - result["loop_seconds"]
    return startup + result["loop_seconds"] * grid_n**2 / result["points"], startup


def end_to_end(prompt: str, grid_n: int, loop_points: int, threads: int, root: Path) -> None:
    """Print the end-to-end comparison (see the module docstring)."""
    campaign = root / "campaigns" / "heatmap-e2e"
    start = time.perf_counter()
    submit(manifest(root, prompt, []), threads)
    print(f"end to end, {grid_n}x{grid_n} plane; setup: exp6.equal_logits tie in {time.perf_counter() - start:.0f} s")
    naive_seconds, startup = naive(campaign, grid_n, loop_points, threads)
    print(
        f"  naive (upstream loop, fresh process): {naive_seconds:8.1f} s  (start-up and load {startup:.1f} s, "
        f"loop timed on {loop_points} points, extrapolated to {grid_n**2})",
        flush=True,
    )
    print(
        f"  ceiling: a toolkit submit also starts, imports torch + transformers and loads the model, the naive "
        f"start-up above: at most {naive_seconds / startup:.1f}x end to end with a map that took no time",
        flush=True,
    )
    maps: list[str] = []
    for mode in ("faithful", "fast"):
        maps.append(map_params(grid_n, mode))
        seconds = submit(manifest(root, prompt, maps), threads)
        found = stored_map(campaign, f"map-{len(maps) - 1}")
        agreement = f", sign agreement {found['sign_agreement']:.3f}" if mode == "fast" else ""
        print(
            f"  toolkit submit, {mode:8s}:            {seconds:8.1f} s  {naive_seconds / seconds:5.1f}x  "
            f"({found['distinct']} distinct inputs of {found['n_points']}; path: {found['path'][:60]}...{agreement})",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", metavar="CAMPAIGN", help=argparse.SUPPRESS)
    parser.add_argument("--e2e-grid", type=int, default=31)
    parser.add_argument("--loop-points", type=int, default=40)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(naive_worker(args.worker, args.e2e_grid, args.loop_points, seed=0)))


if __name__ == "__main__":
    main()
