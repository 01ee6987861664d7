"""Benchmark: exp2.lipschitz's top-5 σ of J = ∂f/∂x end to end through the CLI vs the full Jacobian + SVD.

f = final-norm hidden state at the last position, x = the last token's input embedding.  Two
sizes, each with the two prompts of `manifests/lipschitz.yaml`, fp32, eager attention:

* D = 576: the packaged SmolLM2-135M;
* D = 2048: a random Llama with hidden size 2048 (`--wide-layers` layers, intermediate 5632,
  16 heads, 4 KV heads, SmolLM2's tokenizer), written to a temporary folder and loaded from there
  as a user's local model.

Per size, in this run:

* toolkit, end to end: `python -m toolkit.cli submit <manifest> --executor local --no-plot`, the
  manifest being exp2.lipschitz at its default solver settings (top_k 5, iterations 20,
  oversample 2) with the finite-difference extras off (`n_random: 0, n_noise: 0`; the gains along
  the 5 singular vectors, 10 ε each, stay on).  Wall time of the command: process start, model
  load, store, gather included.
* naive (upstream), end to end: one fresh process that loads the model with
  `AutoModelForCausalLM.from_pretrained` and per prompt runs the upstream block,
  `torch.autograd.functional.jacobian(g, x, vectorize=True)` with g returning
  `hidden_states[-1][0, -1]` of the full model, then `torch.linalg.svd`.  Wall time of the process.
* inner figures beside them: the naive process's seconds inside the Jacobian + SVD, and the
  toolkit's σ phase (`toolkit.numerics.spectrum.top_singular_fast`) timed in a third process;
  and the ceiling: the naive process's wall time outside the Jacobian + SVD (start, imports of
  torch and transformers, model load) is paid by a toolkit submit too, so naive / that is the most
  any σ method could reach end to end.

σ₁ of every prompt from the store must be within 1e-6 relative of the naive σ₁, else exit 1.  The
naive method's achieved GFLOP/s (2·N·T per cotangent and prompt, N = non-embedding parameters) is
printed as a fraction of a matmul peak measured in the same run (a 2048² fp32 matmul, best of 5).
Every process runs with `--threads` torch threads (default 1, see the README: on a shared machine
a second thread made small ops 5-10x slower through OpenMP waits).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
K = 5


def prompts() -> list[str]:
    """The prompts of the shipped exp2 manifest."""
    import yaml

    return list(yaml.safe_load((REPO / "manifests" / "lipschitz.yaml").read_text())["prompts"])


def wide_model(folder: Path, layers: int) -> Path:
    """A random Llama with hidden size 2048 and SmolLM2's tokenizer, saved to `folder`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from toolkit.models.loading import prepare_packaged

    tokenizer = AutoTokenizer.from_pretrained(prepare_packaged())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def naive_worker(folder: str, texts: list[str]) -> dict[str, Any]:
    """The upstream block per prompt in this process: full Jacobian by autograd, then SVD."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sigmas, seconds, tokens = [], 0.0, []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt").input_ids
        embeds = model.get_input_embeddings()(ids).detach()
        start = time.perf_counter()

        def g(z: Any, embeds: Any = embeds) -> Any:
            e = embeds.clone()
            e[0, -1] = z
            return model(inputs_embeds=e, output_hidden_states=True, use_cache=False).hidden_states[-1][0, -1]

        jac = torch.autograd.functional.jacobian(g, embeds[0, -1].clone(), vectorize=True)
        sigma = torch.linalg.svdvals(jac)[:K].double()
        seconds += time.perf_counter() - start
        sigmas.append(sigma.tolist())
        tokens.append(int(ids.shape[1]))
    params = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name and "lm_head" not in name)
    return {"sigma": sigmas, "seconds": seconds, "tokens": tokens, "params": params, "dim": int(embeds.shape[-1])}


def inner_worker(folder: str, texts: list[str]) -> dict[str, Any]:
    """The toolkit's σ phase per prompt in this process (exp2's defaults: k 5, 20 steps, oversample 2)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.numerics.spectrum import top_singular_fast

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    seconds, solvers = 0.0, []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt").input_ids
        start = time.perf_counter()
        _, found = top_singular_fast(model, ids, K, max_steps=20, oversample=2)
        seconds += time.perf_counter() - start
        solvers.append(f"{found.solver} ({found.iterations} steps)" if found.iterations else found.solver)
    return {"seconds": seconds, "solvers": solvers}


def run_process(cmd: list[str], threads: int) -> tuple[float, str]:
    """(wall seconds, stdout) of a subprocess; exits 1 with its stderr if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # torch's thread count in every process
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"bench_sigma: {' '.join(cmd[:4])} ... failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        raise SystemExit(1)
    return seconds, proc.stdout


def worker_cmd(kind: str, folder: str, texts: list[str]) -> list[str]:
    return [sys.executable, __file__, "--worker", kind, "--folder", folder, "--texts", json.dumps(texts)]


def toolkit_end_to_end(source: str, texts: list[str], root: Path, threads: int) -> tuple[float, list[float]]:
    """(wall seconds of `toolkit submit`, σ₁ per prompt from the store)."""
    from toolkit.store.reader import Store

    manifest = root / f"sigma-{abs(hash(source)) % 10**6}.yaml"
    campaign = manifest.stem
    manifest.write_text(
        f"campaign: {campaign}\noutput: {root / 'campaigns'}\n"
        f"model: {{source: {json.dumps(source)}, dtype: float32, attn_implementation: eager}}\n"
        f"prompts: {json.dumps(texts)}\ntargets: [cpu]\n"
        "experiments:\n  - name: exp2.lipschitz\n    params: {n_random: 0, n_noise: 0}\n"
    )
    cmd = [sys.executable, "-m", "toolkit.cli", "submit", str(manifest), "--executor", "local", "--no-plot"]
    seconds, _ = run_process(cmd, threads)
    with Store(root / "campaigns" / campaign / "store.h5") as store:
        (run,) = store.runs("exp2.lipschitz")
        sigma1 = [float(run.group[f"prompts/{i:03d}/sigma"][0]) for i in range(len(texts))]
    return seconds, sigma1


def one_size(name: str, source: str, folder: str, texts: list[str], root: Path, args: argparse.Namespace) -> bool:
    """Run and print one size; False when σ₁ disagrees by more than 1e-6 relative."""
    ours_wall, sigma1 = toolkit_end_to_end(source, texts, root, args.threads)
    naive_wall, out = run_process(worker_cmd("naive", folder, texts), args.threads)
    naive = json.loads(out.strip().splitlines()[-1])
    _, out = run_process(worker_cmd("inner", folder, texts), args.threads)
    inner = json.loads(out.strip().splitlines()[-1])
    rel = max(abs(a - s[0]) / s[0] for a, s in zip(sigma1, naive["sigma"]))
    flops = sum(2 * naive["params"] * t * naive["dim"] for t in naive["tokens"])
    print(f"{name}: D = {naive['dim']}, prompts of {naive['tokens']} tokens, {args.threads} torch thread(s)")
    print(
        f"  end to end:  naive {naive_wall:.1f} s   toolkit submit {ours_wall:.1f} s   "
        f"ratio {naive_wall / ours_wall:.2f}x"
    )
    startup = naive_wall - naive["seconds"]
    print(
        f"  ceiling:     the naive process spent {startup:.1f} s starting, importing torch + transformers and "
        f"loading the model; a toolkit submit pays that too, so at most {naive_wall / startup:.1f}x end to end "
        "with a sigma phase and the rest of exp2 that took no time"
    )
    print(
        f"  sigma phase: naive {naive['seconds']:.1f} s   toolkit {inner['seconds']:.1f} s   "
        f"ratio {naive['seconds'] / inner['seconds']:.1f}x   ({', '.join(inner['solvers'])})"
    )
    print(
        f"  naive Jacobian ~{flops / naive['seconds'] / 1e9:.0f} GFLOP/s = "
        f"{flops / naive['seconds'] / 1e9 / args.peak:.0%} of the measured matmul peak"
    )
    print(f"  sigma_1 store vs naive: max relative difference {rel:.1e} (bar 1e-6)")
    return rel <= 1e-6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every process (default 1)")
    parser.add_argument("--wide-layers", type=int, default=2, help="decoder layers of the D = 2048 model (default 2)")
    parser.add_argument("--skip-wide", action="store_true", help="only the packaged model (D = 576)")
    parser.add_argument("--worker", choices=["naive", "inner"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--texts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work = naive_worker if args.worker == "naive" else inner_worker
        print(json.dumps(work(args.folder, json.loads(args.texts))))
        return
    import torch

    from toolkit.models.loading import prepare_packaged

    torch.set_num_threads(args.threads)
    from bench_heatmap import matmul_peak  # this folder is on sys.path when a benchmark runs as a script

    args.peak = matmul_peak(2048)
    print(f"matmul peak (2048^2 fp32, {args.threads} thread(s)): {args.peak:.0f} GFLOP/s")
    texts = prompts()
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-sigma-") as tmp:
        root = Path(tmp)
        ok &= one_size("SmolLM2-135M", "smollm2-135m", str(prepare_packaged()), texts, root, args)
        if not args.skip_wide:
            folder = str(wide_model(root / "wide-2048", args.wide_layers))
            ok &= one_size(f"random Llama, {args.wide_layers} layers", folder, folder, texts, root, args)
    if not ok:
        print("bench_sigma: FAIL: sigma_1 differs from the full-Jacobian SVD by more than 1e-6", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
