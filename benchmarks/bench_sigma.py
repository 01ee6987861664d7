"""Benchmark: top-5 singular values of J = ∂f/∂x, matrix-free vs full Jacobian + SVD, on SmolLM2-135M.

f = final-norm hidden state at the last position, x = the last token's input embedding (D = 576),
fp32, eager attention, one short prompt.  Two methods, each in its own fresh subprocess (so that
peak memory, read from `resource.getrusage(...).ru_maxrss`, belongs to that method alone):

* matrix-free (toolkit): `JacobianOperator` + `top_singular` — subspace iteration on JᵀJ with a
  block of k + 2 vectors, vmapped `torch.func.jvp` and `torch.func.vjp`, `--iterations` rounds;
  run twice: J·v by forward mode (`jvp_mode=forward`, the default) and by reverse over reverse
  (`jvp_mode=double_vjp`);
* full (upstream): `torch.autograd.functional.jacobian(g, x, vectorize=True)` with g returning
  `hidden_states[-1][0, -1]` of `model(inputs_embeds=..., output_hidden_states=True)`, then
  `torch.linalg.svd(J, full_matrices=False)` — the upstream scripts' block.

One more subprocess runs the upstream block on g's first D/8 outputs only, to measure how the full
method's memory grows with the number of cotangents vmapped through the backward.

Every worker uses `--threads` torch threads (default 1: on a shared machine, 2 threads slowed the
matrix-free method's many small ops 5-10x through OpenMP waits, making the ratios meaningless).
Memory is the method's *extra* peak: ru_maxrss after the method minus the process RSS just before
it (model loaded, one warm-up forward done).  It is flagged if the method did not set a new peak.
From the measured figures, the memory each method would need at D = 4096 is extrapolated:

* full: J (D² fp32) + D cotangents × (bytes per cotangent, measured slope) × (4096 / 576)
  (each cotangent's transient gradients scale with the model width) + the intercept × width ratio;
* matrix-free: the larger measured extra of its two modes × (4096 / 576) (one forward's saved
  activations and b vectors per layer, both linear in width at fixed prompt length) + the
  b·D float64 iteration vectors.

These extrapolations assume the same depth and prompt length and an MLP/hidden ratio like
SmolLM2's (Llama-3.1-8B's 14336/4096 = 3.5 vs 1536/576 = 2.7 makes the true figures ~30 % larger).
Exits 1 if a subprocess fails or the two methods' σ disagree by more than 1e-3 relative.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

PROMPT = "The capital of France is"
TARGET_D = 4096


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def worker(method: str, k: int, iterations: int, prompt: str, threads: int) -> dict[str, Any]:
    """Run one method in this process; return its time, memory and σ."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models.loading import load
    from toolkit.numerics.embedding_forward import prompt_embeddings

    model, tokenizer, _ = load(
        ModelSpec("smollm2-135m", device="cpu"), Numerics(dtype="float32", attn_implementation="eager")
    )
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    embeds = prompt_embeddings(model, ids)
    with torch.no_grad():
        model(inputs_embeds=embeds, use_cache=False)  # warm-up
    dim = embeds.shape[-1]
    rss_before, peak_before = _rss_bytes(), _maxrss_bytes()
    start = time.perf_counter()
    if method.startswith("matrix-free"):
        from toolkit.numerics.jacobian import JacobianOperator, top_singular

        mode = "double_vjp" if method.endswith("double-vjp") else "forward"
        op = JacobianOperator.for_model(model, ids, jvp_mode=mode)
        result = top_singular(op, k, iterations=iterations, oversample=2)
        sigma = result.sigma
        extra = {"residual_max": float(result.residual.max()), "products": result.products}
        outputs = dim
    else:
        outputs = dim if method == "full" else dim // 8
        x = embeds[0, -1].clone().requires_grad_(True)

        def g(z: Any) -> Any:  # the upstream function: clone E, write the row, hidden_states[-1]
            e = embeds.clone()
            e[0, -1] = z
            return model(inputs_embeds=e, output_hidden_states=True, use_cache=False).hidden_states[-1][0, -1][:outputs]

        jac = torch.autograd.functional.jacobian(g, x, vectorize=True)
        _, sigma, _ = torch.linalg.svd(jac, full_matrices=False)
        sigma = sigma[:k].double()
        extra = {"jacobian_shape": list(jac.shape)}
    seconds = time.perf_counter() - start
    peak_after = _maxrss_bytes()
    return {
        "method": method,
        "seconds": seconds,
        "extra_peak": peak_after - rss_before,
        "new_peak": peak_after > peak_before,
        "rss_before": rss_before,
        "sigma": sigma.tolist(),
        "dim": dim,
        "outputs": outputs,
        "threads": torch.get_num_threads(),
        **extra,
    }


def run_worker(method: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        method,
        "--k",
        str(args.k),
        "--iterations",
        str(args.iterations),
        "--prompt",
        args.prompt,
        "--threads",
        str(args.threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"bench_sigma: the {method} worker failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        raise SystemExit(1)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB" if n < 2**30 else f"{n / 2**30:,.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5, help="singular values wanted (default 5)")
    parser.add_argument("--iterations", type=int, default=15, help="subspace iterations (default 15)")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in each worker (default 1; 0: torch's default). On a machine shared "
        "with other jobs, more than 1 makes OpenMP threads wait for each other, which slowed "
        "the matrix-free method's many small ops 5-10x and the full method's large ones ~1.5x",
    )
    parser.add_argument(
        "--worker", choices=["matrix-free", "matrix-free-double-vjp", "full", "full-eighth"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.k, args.iterations, args.prompt, args.threads)))
        return

    free = run_worker("matrix-free", args)
    double = run_worker("matrix-free-double-vjp", args)
    full = run_worker("full", args)
    quarter = run_worker("full-eighth", args)
    d = free["dim"]
    rel = max(abs(a - b) / b for r in (free, double) for a, b in zip(r["sigma"], full["sigma"]))
    print(f"model: SmolLM2-135M fp32 eager, D = {d}, prompt {args.prompt!r}, {free['threads']} torch threads")
    print(f"sigma top-{args.k} (full SVD):  " + ", ".join(f"{s:.6g}" for s in full["sigma"]))
    print(
        f"sigma top-{args.k} (matrix-free): "
        + ", ".join(f"{s:.6g}" for s in free["sigma"])
        + f"  (max rel. diff {rel:.1e}, residual {free['residual_max']:.1e})"
    )
    for r, name in (
        (free, f"matrix-free, forward-mode JVP ({args.iterations} it., block {args.k + 2}, {r_products(free)})"),
        (double, f"matrix-free, double-VJP JVP ({r_products(double)})"),
        (full, f"full Jacobian {d}x{d} + SVD (upstream)"),
        (quarter, f"full, {quarter['outputs']} outputs only"),
    ):
        flag = "" if r["new_peak"] else "  [peak not set by the method: an upper bound from earlier]"
        print(f"{name}: {r['seconds']:.1f} s, extra peak memory {mb(r['extra_peak'])}{flag}")
    for r, name in ((free, "forward-mode"), (double, "double-VJP")):
        print(
            f"ratio full / matrix-free ({name}): time {full['seconds'] / r['seconds']:.2f}x, "
            f"memory {full['extra_peak'] / max(r['extra_peak'], 1):.1f}x"
        )
    slope = (full["extra_peak"] - quarter["extra_peak"]) / (full["outputs"] - quarter["outputs"])
    intercept = max(full["extra_peak"] - slope * full["outputs"], 0)
    width = TARGET_D / d
    full_4096 = TARGET_D**2 * 4 + TARGET_D * slope * width + intercept * width
    free_4096 = max(free["extra_peak"], double["extra_peak"]) * width + (args.k + 2) * TARGET_D * 8 * 4
    print(
        f"full method: {slope / 2**10:,.0f} KB per cotangent (measured slope over "
        f"{quarter['outputs']}..{full['outputs']} outputs), intercept {mb(intercept)}"
    )
    print(
        f"extrapolated to D = {TARGET_D} (same depth/prompt, widths x{width:.2f}): full {mb(full_4096)} "
        f"(J itself {mb(TARGET_D**2 * 4)}), matrix-free {mb(free_4096)} (the larger of its two modes); "
        f"ratio {full_4096 / free_4096:.0f}x"
    )
    if rel > 1e-3:
        print(f"bench_sigma: FAIL: the methods disagree (max relative σ difference {rel:.1e})", file=sys.stderr)
        raise SystemExit(1)


def r_products(result: dict[str, Any]) -> str:
    products = result.get("products", {})
    return f"{products.get('jvp', 0)} JVP + {products.get('vjp', 0)} VJP"


if __name__ == "__main__":
    main()
