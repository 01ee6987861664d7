"""Benchmark: exp4.generate's greedy loop vs transformers' own `model.generate()`, tokens per second.

Same model (packaged SmolLM2-135M, dequantized Q4_1 weights), same numerics (fp32, eager attention,
KV cache by default, batch 1), same prompts and the same number of new tokens.  exp4.generate's
loop (`toolkit.experiments.exp4.generate._generate`, exactly what a task runs) additionally takes
the top-k of the full logits row (`ranked_top`), hashes every logits row bit-exactly and captures the final-norm
state each step; `model.generate(do_sample=False)` does only the argmax.  Both stop at EOS.

Prints seconds and tokens/s for each method, the ratio (ours / transformers), and whether the two
produced the same token ids for every prompt (they should: both are greedy over the same logits;
a difference would mean a different kernel path, e.g. another cache implementation).  Exits 1 if
the tokens differ.  Timings are the best of `--repeats` rounds after a warm-up; in each round both
methods run once, in turn, so a drift of the machine's speed does not favour either side.
"""

from __future__ import annotations

import argparse
import sys
import time
from types import SimpleNamespace
from typing import Any

PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "Photosynthesis is the process by which",
)


class _Bar:
    """A silent progress reporter (the loop calls update())."""

    total = done = 0

    def update(self, n: int = 1) -> None:
        self.done += n


def ours(ctx: Any, prompt: str, tokens: int) -> list[int]:
    """exp4.generate's per-prompt loop; returns the generated ids."""
    import torch

    from toolkit.experiments.exp4.generate import Params, _generate, _stop_ids
    from toolkit.numerics.hooks import final_norm_name

    params = Params(max_new_tokens=tokens, top_k=20)
    stop = _stop_ids(ctx.model, ctx.tokenizer)
    with torch.inference_mode():  # as exp4.generate.run does, batch size 1 (no other prompts read)
        steps = _generate(ctx, 0, prompt, [], params, stop, final_norm_name(ctx.model), _Bar())
    return list(steps["ids"])


def theirs(ctx: Any, prompt: str, tokens: int) -> list[int]:
    """transformers' generate(), greedy; returns the generated ids."""
    import torch

    ids = ctx.tokenizer(prompt, return_tensors="pt").input_ids.to(ctx.device)
    with torch.inference_mode():
        out = ctx.model.generate(
            ids,
            max_new_tokens=tokens,
            do_sample=False,
            use_cache=ctx.numerics.kv_cache,
            pad_token_id=ctx.tokenizer.eos_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


def timed(methods: list[Any], ctx: Any, tokens: int, repeats: int) -> list[tuple[float, list[list[int]]]]:
    """Per method: best wall time over `repeats` for all prompts, and the ids of its last run.  The
    methods take turns (one repeat each, then the next round), so a drift of the machine's speed
    during the run falls on both sides rather than on whichever ran last."""
    for method in methods:
        method(ctx, PROMPTS[0], 2)  # warm-up
    best = [float("inf")] * len(methods)
    result: list[list[list[int]]] = [[] for _ in methods]
    for _ in range(repeats):
        for k, method in enumerate(methods):
            start = time.perf_counter()
            result[k] = [method(ctx, p, tokens) for p in PROMPTS]
            best[k] = min(best[k], time.perf_counter() - start)
    return list(zip(best, result))


def main() -> int:
    """Run both methods and print times, tokens/s, the ratio and the token check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each timing both methods once")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full-recompute", action="store_true", help="no KV cache on either side")
    args = parser.parse_args()
    import torch

    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models import loading

    torch.set_num_threads(args.threads)
    numerics = Numerics(dtype="float32", attn_implementation="eager", kv_cache=not args.full_recompute)
    model, tokenizer, device = loading.load(ModelSpec("smollm2-135m"), numerics)
    ctx = SimpleNamespace(
        model=model,
        tokenizer=tokenizer,
        device=device,
        numerics=numerics,
        encode=lambda prompt: tokenizer(prompt, return_tensors="pt").input_ids.to(device),
    )
    (t_ours, ids_ours), (t_hf, ids_hf) = timed([ours, theirs], ctx, args.tokens, args.repeats)
    n_ours, n_hf = sum(map(len, ids_ours)), sum(map(len, ids_hf))
    print(
        f"model smollm2-135m fp32 eager, {'full recompute' if args.full_recompute else 'KV cache'}, "
        f"{len(PROMPTS)} prompts x up to {args.tokens} tokens, {args.threads} thread(s)"
    )
    print(f"exp4.generate loop     : {t_ours:7.2f} s  {n_ours / t_ours:7.1f} tokens/s")
    print(f"transformers generate(): {t_hf:7.2f} s  {n_hf / t_hf:7.1f} tokens/s")
    print(f"ratio (ours / transformers, tokens/s): {(n_ours / t_ours) / (n_hf / t_hf):.2f}")
    same = ids_ours == ids_hf
    print(f"generated tokens equal: {same}" + ("" if same else f"\n  ours  {ids_ours}\n  theirs {ids_hf}"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
