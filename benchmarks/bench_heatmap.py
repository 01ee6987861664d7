"""Benchmark: an exp7 logit-gap heatmap on SmolLM2-135M (fp32): upstream per-point loop vs faithful vs fast.

First, end to end (`heatmap_cli.py`, skipped with `--no-end-to-end`): a tie found by exp6, then
one `--e2e-grid`² exp7.heatmap plane (its default params otherwise) through `toolkit submit`,
faithful and fast, against the upstream loop in a fresh process, extrapolated from
`--loop-points` points.

Then in process (no exp6 run needed): x0 = the prompt's own last-token embedding, pair (a, b) = the model's
top-2 at x0, directions = two seeded random orthonormal unit vectors in float64 (the cost per point
is the same as for singular vectors).  Grid: `--grid` × `--grid` points over ±`--range`.

Eager attention, as the shipped manifests that run exp6/exp7 use.  Methods, all in this process,
one after the other:

* loop (upstream exp7 part 1): per point, x' = fl32(fl32(x0 + fl32(e1·v1)) + fl32(e2·v2)), one
  `model(inputs_embeds=[1,T,D], output_hidden_states=True)` (full logits for all T rows), then
  two `torch.dot(h, W[t])` reductions copied to the host.  Too slow for 10,201 points on a shared
  2-core machine: timed on `--loop-points` random grid points and EXTRAPOLATED to the whole grid.
* per point (toolkit's path, a second baseline that isolates the batching gain): `grid.point_logits`
  — one full forward with `logits_to_keep=1` per point, the reference faithful mode must equal
  bit for bit — on the same points as the loop.
* faithful (toolkit): `toolkit.numerics.grid.run_grid(mode="faithful")` — bitwise equal to one full
  forward per point; shared-prefix decoder after a run-time check, bounded head (the per-point
  GEMV's own bits for the pair and the rows that can be the argmax), dedup of identical rounded
  inputs.  At ±1e-8 every point of this grid has a distinct input, so it is timed on
  `--faithful-points` random points (EXTRAPOLATED); a second run on a fine grid (±`--fine-range`,
  where dedup can merge points) is timed in full if it has at most `--fine-limit` distinct inputs
  (an exactly-zero entry of x0 moves with every nonzero step, so dedup may not help at all).
* fast (toolkit): `run_grid(mode="fast")` — prefix KV cache, batches of `--fast-batch` last
  positions — on the WHOLE grid, with its sign agreement against faithful on a sample.

Model FLOPs per point: full recompute 2·N·T + 2·V·D (N = non-embedding parameters, T prompt
tokens, lm_head on one row); fast 2·N·1 + 2·V·D (attention over T positions is negligible).
The matmul peak is measured in the same run: a `--peak-n`² fp32 matmul, best of 5.
Timings on a machine shared with other jobs are noisy; each method runs once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from heatmap_cli import end_to_end

PROMPT = "The capital of France is"


def path_label(path: str) -> str:
    """A short name of a faithful path (`GridResult.path`)."""
    from toolkit.numerics import grid

    names = {grid.SHARED_HEAD_PATH: "shared prefix, bounded head", grid.SHARED_PATH: "shared prefix, per-point head"}
    return names.get(path, "full recompute")


def load(threads: int) -> tuple[Any, Any]:
    import torch

    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models.loading import load as load_model

    torch.set_num_threads(threads)
    model, tokenizer, _ = load_model(
        ModelSpec("smollm2-135m", device="cpu"), Numerics(dtype="float32", attn_implementation="eager")
    )
    return model, tokenizer


def matmul_peak(n: int) -> float:
    """Best-of-5 fp32 GFLOP/s of an n×n by n×n matmul."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def upstream_loop(
    model: Any, embeds: Any, x0: Any, v1: Any, v2: Any, e1: Any, e2: Any, pair: tuple[int, int], picks: Any
) -> Any:
    """The upstream exp7 per-point loop on the grid points `picks` (flat indices); returns gaps."""
    import numpy as np
    import torch

    head = model.get_output_embeddings().weight
    n2 = len(e2)
    v1f, v2f = v1.float(), v2.float()
    out = np.empty(len(picks))
    for k, flat in enumerate(picks):
        i, j = divmod(int(flat), n2)
        x = x0 + torch.tensor(e1[i], dtype=torch.float32) * v1f
        x = x + torch.tensor(e2[j], dtype=torch.float32) * v2f
        e = embeds.clone()
        e[0, -1] = x
        with torch.no_grad():
            h = model(inputs_embeds=e, output_hidden_states=True).hidden_states[-1][0, -1]
            la, lb = torch.dot(h, head[pair[0]]).item(), torch.dot(h, head[pair[1]]).item()
        out[k] = la - lb
    return out


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=101)
    parser.add_argument("--prompt", default=PROMPT, help=f"default {PROMPT!r}")
    parser.add_argument("--range", type=float, default=1e-8)
    parser.add_argument("--fine-range", type=float, default=1e-10)
    parser.add_argument("--loop-points", type=int, default=40)
    parser.add_argument("--faithful-points", type=int, default=128)
    parser.add_argument("--faithful-batch", type=int, default=96)
    parser.add_argument("--fast-batch", type=int, default=256)
    parser.add_argument("--agreement", type=int, default=64)
    parser.add_argument("--fine-limit", type=int, default=1000, help="skip the fine grid above this many inputs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--e2e-grid", type=int, default=31, help="points per axis of the end-to-end plane")
    parser.add_argument("--no-end-to-end", action="store_true", help="only the in-process figures")
    parser.add_argument("--dir", default=None, help="where to create the end-to-end campaign (default: a temp dir)")
    parser.add_argument("--peak-n", type=int, default=2048)
    return parser.parse_args()


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Model, x0, pair, directions, grid points, FLOPs per point and the matmul peak; prints the header."""
    import torch

    from toolkit.numerics import grid

    model, tokenizer = load(args.threads)
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    embeds = model.get_input_embeddings()(ids).detach()
    prefix, x0 = embeds[:, :-1], embeds[0, -1]
    top = torch.topk(grid.point_logits(model, prefix, x0), 2).indices
    pair = (int(top[0]), int(top[1]))
    q, _ = torch.linalg.qr(torch.randn(x0.numel(), 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    v1, v2 = q[:, 0].contiguous(), q[:, 1].contiguous()
    e = grid.axis_n(-args.range, args.range, args.grid)
    tokens = ids.shape[1]
    head = model.get_output_embeddings().weight.numel()
    nonembed = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    points = grid.form_points(x0, v1, v2, e, e, "fp64_then_round")
    s = {
        "model": model,
        "embeds": embeds,
        "prefix": prefix,
        "x0": x0,
        "pair": pair,
        "v1": v1,
        "v2": v2,
        "e": e,
        "n": args.grid**2,
        "points": points,
        "peak": matmul_peak(args.peak_n),
        "flops_full": 2 * nonembed * tokens + 2 * head,
        "flops_fast": 2 * nonembed + 2 * head,
    }
    print(
        f"SmolLM2-135M fp32 (dequantized Q4_1 weights), eager (as the shipped exp6/exp7 manifests), "
        f"{args.threads} torch thread(s); prompt "
        f"{args.prompt!r} (T = {tokens}); pair {pair}; x0 = own last embedding; 2 random orthonormal directions"
    )
    print(
        f"grid {args.grid}x{args.grid} = {s['n']} points over ±{args.range:g}; matmul peak {s['peak']:.1f} "
        f"GFLOP/s ({args.peak_n}² fp32)"
    )
    print(f"distinct rounded inputs at ±{args.range:g}: {grid.dedup_rows(points)[0].shape[0]} of {s['n']}")
    print(
        f"model FLOPs per point: full recompute {s['flops_full'] / 1e9:.2f} GFLOP, fast "
        f"{s['flops_fast'] / 1e9:.3f} GFLOP"
    )
    print(f"{'method':28s} {'points/s':>9s} {'grid time':>10s} {'vs loop':>8s} {'% peak':>7s}  note", flush=True)
    return s


def main() -> None:
    import numpy as np
    import torch

    from toolkit.numerics import grid

    args = arguments()
    if not args.no_end_to_end:
        with tempfile.TemporaryDirectory(dir=args.dir) as root:
            end_to_end(args.prompt, args.e2e_grid, args.loop_points, args.threads, Path(root))
        print("in process, one after the other:")
    torch.set_grad_enabled(False)
    s = setup(args)
    model, prefix, pair, points, n = s["model"], s["prefix"], s["pair"], s["points"], s["n"]
    rates: dict[str, float] = {}

    def report(name: str, rate: float, flops: float, note: str) -> None:
        rates.setdefault("loop", rate)
        print(
            f"{name:28s} {rate:9.2f} {n / rate:9.0f}s {rate / rates['loop']:7.1f}x "
            f"{100 * rate * flops / 1e9 / s['peak']:6.1f}%  {note}",
            flush=True,
        )

    rng = np.random.default_rng(0)
    picks = rng.choice(n, size=min(args.loop_points, n), replace=False)
    start = time.perf_counter()
    upstream_loop(model, s["embeds"], s["x0"], s["v1"], s["v2"], s["e"], s["e"], pair, picks)
    report(
        "loop (upstream, per point)",
        len(picks) / (time.perf_counter() - start),
        s["flops_full"],
        f"timed on {len(picks)} points, extrapolated",
    )

    start = time.perf_counter()
    for flat in picks:
        grid.point_logits(model, prefix, points[int(flat)])
    report(
        "per point (toolkit's path)",
        len(picks) / (time.perf_counter() - start),
        s["flops_full"],
        f"timed on the same {len(picks)} points: grid.point_logits, what faithful must equal bit for bit",
    )

    sample = np.sort(rng.choice(n, size=min(args.faithful_points, n), replace=False))
    start = time.perf_counter()
    faithful = grid.run_grid(model, prefix, points[sample], pair, "faithful", args.faithful_batch)
    check = faithful.check
    shared = path_label(faithful.path) != "full recompute"  # linear layers on the last row only: the fast mode's FLOPs
    report(
        "faithful (toolkit)",
        len(sample) / (time.perf_counter() - start),
        s["flops_fast"] if shared else s["flops_full"],
        f"timed on {len(sample)} points, extrapolated; batch {faithful.batch_size} "
        f"(check: {'bitwise equal' if check and check.equal else 'FAILED -> 1'}; "
        f"{path_label(faithful.path)})",
    )

    start = time.perf_counter()
    fast = grid.run_grid(model, prefix, points, pair, "fast", args.fast_batch, agreement_sample=args.agreement)
    took = time.perf_counter() - start
    agree = fast.agreement or {}
    report(
        "fast (toolkit, KV cache)",
        n / took,
        s["flops_fast"],
        f"WHOLE grid in {took:.0f} s incl. {args.agreement} faithful points for the agreement: sign "
        f"agreement {agree.get('sign_agreement', float('nan')):.3f}, max |Δgap| "
        f"{agree.get('max_abs_gap_diff', float('nan')):.2e}, bitwise equal {agree.get('bitwise_equal', 0)}"
        f"/{args.agreement}",
    )

    fine = grid.axis_n(-args.fine_range, args.fine_range, args.grid)
    fine_points = grid.form_points(s["x0"], s["v1"], s["v2"], fine, fine, "fp64_then_round")
    distinct = grid.dedup_rows(fine_points)[0].shape[0]
    if distinct > args.fine_limit:
        print(
            f"fine grid ±{args.fine_range:g}: {distinct} distinct inputs of {n} (> --fine-limit "
            f"{args.fine_limit}: not timed; x0 has {int((s['x0'] == 0).sum())} exactly-zero entries, which "
            "every nonzero step moves)"
        )
        return
    start = time.perf_counter()
    fine_run = grid.run_grid(model, prefix, fine_points, pair, "faithful", args.faithful_batch)
    report(
        f"faithful, fine grid ±{args.fine_range:g}",
        n / (time.perf_counter() - start),
        s["flops_fast"] if path_label(fine_run.path) != "full recompute" else s["flops_full"],
        f"WHOLE grid: {fine_run.n_distinct} distinct inputs of {n} (dedup; % peak counts all points); "
        f"{path_label(fine_run.path)}",
    )


if __name__ == "__main__":
    main()
