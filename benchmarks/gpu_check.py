"""GPU check: what the toolkit's numerics do on a CUDA machine, in one run of a few minutes.

    .venv/bin/python benchmarks/gpu_check.py [--out FILE] [--tokens N]     (or: make gpu-check)

Needs only torch, transformers and the project.  On CUDA (packaged SmolLM2-135M, fp32 unless said):

  manifest        manifests/gpu_divergence.yaml submitted on the local executor (bf16 and fp32 on
                  cuda): its exp4.compare classes of bit-identical runs
  tf32            fp32 logits with TF32 matmuls off vs on (max |Δlogit|, greedy tokens equal?)
  eager_vs_sdpa   greedy generation with eager vs sdpa attention (first differing step, |Δlogit|)
  kv_vs_recompute greedy with a KV cache vs full recompute (the exp4.generate path, both ways)
  batch_size      the prompt alone vs as row 0 of a batch of 8 (bitwise?), when toolkit.manifest's
                  Numerics has the `batch_size` axis
  sigma1_vs_svd   exp2's σ₁ (toolkit.numerics.spectrum, as exp2 runs it) vs an SVD of the full Jacobian, fp32
  exp7_faithful   a plain batch of 8 points vs one at a time (bitwise?), and exp7's faithful mode
                  (its own batch, from the row-class probe) vs one at a time (must be bitwise)
  generate_speed  the toolkit's greedy loop (KV cache) vs transformers' generate: tokens/s, same ids?

Without CUDA it runs every part that does not need CUDA on the tiny random Llama with tiny
settings (seconds), and prints one line per CUDA part it refuses.  One table on stdout; every row
(with the device identity) in a JSON file: --out, default $OUT/gpu_check.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is"
CUDA_ONLY = ("manifest", "tf32")


@dataclasses.dataclass
class Setup:
    """What every part runs with: the device, model source, tokens to generate."""

    device: str
    source: str
    tokens: int
    models: dict[tuple[str, str], Any] = dataclasses.field(default_factory=dict)

    def model(self, dtype: str = "float32", attention: str = "eager") -> tuple[Any, Any]:
        """(model, tokenizer) through the toolkit's loader, once per (dtype, attention)."""
        from toolkit.manifest import ModelSpec, Numerics
        from toolkit.models.loading import load

        key = (dtype, attention)
        if key not in self.models:
            self.models[key] = load(
                ModelSpec(self.source, device=self.device), Numerics(dtype=dtype, attn_implementation=attention)
            )[:2]
        return self.models[key]

    def ids(self, tokenizer: Any) -> Any:
        return tokenizer(PROMPT, return_tensors="pt").input_ids.to(self.device)


def _greedy_generate(model: Any, ids: Any, tokens: int) -> tuple[list[int], Any]:
    """transformers' greedy generate: (new ids, raw logits [tokens, V])."""
    import torch

    with torch.no_grad():
        out = model.generate(
            ids,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    return out.sequences[0, ids.shape[1] :].tolist(), torch.stack([s[0] for s in out.logits])


def part_manifest(setup: Setup) -> dict[str, Any]:
    from toolkit.store.reader import Store

    with tempfile.TemporaryDirectory() as root:
        manifest = REPO / "manifests" / "gpu_divergence.yaml"
        args = [sys.executable, "-m", "toolkit.cli", "submit", str(manifest), "--executor", "local"]
        proc = subprocess.run(
            [*args, "--root", root, "--no-plot"], cwd=REPO, capture_output=True, text=True, timeout=420
        )
        if proc.returncode != 0:
            return {"ok": False, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        with Store(Path(root) / "gpu-divergence" / "store.h5") as store:
            (compare,) = store.runs("exp4.compare")
            summary = str(compare.attrs["summary"])
    return {"ok": True, "result": summary.splitlines()[0], "summary": summary}


def part_tf32(setup: Setup) -> dict[str, Any]:
    import torch

    model, tokenizer = setup.model()
    ids = setup.ids(tokenizer)
    runs = []
    for allow in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = allow
        runs.append(_greedy_generate(model, ids, setup.tokens))
    torch.backends.cuda.matmul.allow_tf32 = False
    diff = float((runs[0][1][0].double() - runs[1][1][0].double()).abs().max())
    same = runs[0][0] == runs[1][0]
    return {"ok": True, "result": f"step-0 max|Δlogit| {diff:.3g}; tokens {'equal' if same else 'differ'}"}


def part_eager_vs_sdpa(setup: Setup) -> dict[str, Any]:
    from toolkit.numerics.greedy import first_difference

    eager, tokenizer = setup.model("float32", "eager")
    sdpa, _ = setup.model("float32", "sdpa")
    ids = setup.ids(tokenizer)
    (a, sa), (b, sb) = _greedy_generate(eager, ids, setup.tokens), _greedy_generate(sdpa, ids, setup.tokens)
    diff = float((sa[0].double() - sb[0].double()).abs().max())
    d = first_difference(a, b)
    return {"ok": True, "result": f"first differing step {d}; step-0 max|Δlogit| {diff:.3g}", "first_difference": d}


def part_kv_vs_recompute(setup: Setup) -> dict[str, Any]:
    from toolkit.numerics.embedding_forward import prompt_embeddings
    from toolkit.numerics.greedy import first_difference, greedy_from_embeds

    model, tokenizer = setup.model()
    embeds = prompt_embeddings(model, setup.ids(tokenizer))
    kv = greedy_from_embeds(model, embeds, setup.tokens, kv_cache=True)
    full = greedy_from_embeds(model, embeds, setup.tokens, kv_cache=False)
    margins = max(abs(x - y) for x, y in zip(kv.margins, full.margins))
    d = first_difference(kv.ids, full.ids)
    return {"ok": True, "result": f"first differing step {d}; max|Δmargin| {margins:.3g}", "first_difference": d}


def part_batch_size(setup: Setup) -> dict[str, Any]:
    import torch

    model, tokenizer = setup.model()
    ids = setup.ids(tokenizer)
    with torch.no_grad():
        alone = model(ids, logits_to_keep=1).logits[0, -1]
        batch = model(ids.repeat(8, 1), logits_to_keep=1).logits[0, -1]
    diff = float((alone.double() - batch.double()).abs().max())
    equal = bool(torch.equal(alone, batch))
    text = f"row 0 of 8 {'bitwise equal' if equal else 'differs'} (max|Δlogit| {diff:.3g})"
    return {"ok": True, "result": text, "bitwise_equal": equal}


def part_sigma1_vs_svd(setup: Setup) -> dict[str, Any]:
    from toolkit.numerics.embedding_forward import make_f
    from toolkit.numerics.jacobian import full_jacobian, svd_reference
    from toolkit.numerics.spectrum import top_singular_fast

    model, tokenizer = setup.model()
    ids = setup.ids(tokenizer)
    f, x = make_f(model, ids)
    found = top_singular_fast(model, ids, 5)[1]
    sigma = float(found.sigma[0])
    reference = float(svd_reference(full_jacobian(f, x), 1).sigma[0])
    rel = abs(sigma - reference) / reference
    text = f"σ₁ {sigma:.6g} vs SVD {reference:.6g} (relative {rel:.2g}, bound 1e-6; {found.solver})"
    return {"ok": rel <= 1e-6, "result": text, "sigma1": sigma, "svd_sigma1": reference, "solver": found.solver}


def part_exp7_faithful(setup: Setup) -> dict[str, Any]:
    import numpy as np
    import torch

    from toolkit.numerics.embedding_forward import prompt_embeddings
    from toolkit.numerics.grid import logits_values, point_logits
    from toolkit.numerics.grid_faithful import batch_check, faithful

    model, tokenizer = setup.model()
    embeds = prompt_embeddings(model, setup.ids(tokenizer))
    prefix = embeds[:, :-1]
    generator = torch.Generator().manual_seed(0)
    xs = embeds[0, -1] + torch.randn(8, embeds.shape[-1], generator=generator).to(embeds) * 1e-3
    raw, _ = batch_check(model, prefix, xs, batch_size=8, sample=8)
    gap, top, _, check, path = faithful(model, prefix, xs, (0, 1), 8, 8, None)
    alone = logits_values(torch.stack([point_logits(model, prefix, x) for x in xs]), (0, 1))
    equal = bool(np.array_equal(gap, alone.gap) and np.array_equal(top, alone.argmax))
    raw_text = "bitwise equal" if raw.equal else f"differs (max|Δ| {raw.max_abs_diff:.3g})"
    text = (
        f"a plain batch of 8: {raw_text}; exp7 faithful (batch {check.used}, {path.split(',')[0][:40]}...) vs one "
        f"point at a time: {'bitwise equal' if equal else 'DIFFERS'}"
    )
    return {"ok": equal, "result": text, "bitwise_equal": equal, "plain_batch8_equal": raw.equal, "batch": check.used}


def part_generate_speed(setup: Setup) -> dict[str, Any]:
    from toolkit.numerics.embedding_forward import prompt_embeddings
    from toolkit.numerics.greedy import greedy_from_embeds

    model, tokenizer = setup.model()
    ids = setup.ids(tokenizer)
    _greedy_generate(model, ids, 2)  # warm-up (kernels, allocator)
    start = _now(setup)
    ours = greedy_from_embeds(model, prompt_embeddings(model, ids), setup.tokens, kv_cache=True)
    mid = _now(setup)
    theirs, _ = _greedy_generate(model, ids, setup.tokens)
    end = _now(setup)
    rate = f"{setup.tokens / (mid - start):.0f} vs {setup.tokens / (end - mid):.0f} tokens/s"
    same = ours.ids == theirs
    return {
        "ok": True,
        "result": f"toolkit {rate} (generate); ids {'equal' if same else 'differ'}",
        "ids_equal": same,
        "ids": ours.ids,
    }


def _now(setup: Setup) -> float:
    import torch

    if setup.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


PARTS: dict[str, Callable[[Setup], dict[str, Any]]] = {
    "manifest": part_manifest,
    "tf32": part_tf32,
    "eager_vs_sdpa": part_eager_vs_sdpa,
    "kv_vs_recompute": part_kv_vs_recompute,
    "batch_size": part_batch_size,
    "sigma1_vs_svd": part_sigma1_vs_svd,
    "exp7_faithful": part_exp7_faithful,
    "generate_speed": part_generate_speed,
}


def refusal(part: str) -> str | None:
    """Why `part` does not run here (one line), or None."""
    import torch

    from toolkit.manifest import Numerics

    if part in CUDA_ONLY and not torch.cuda.is_available():
        return f"{part}: refused: needs a CUDA device (torch.cuda.is_available() is False here)"
    if part == "batch_size" and "batch_size" not in {f.name for f in dataclasses.fields(Numerics)}:
        return "batch_size: skipped: toolkit.manifest.Numerics has no batch_size field in this version"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run every part, print the table and the refusals, write the JSON; exit 1 if a part failed."""
    import torch

    from toolkit.models.device import identity

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None
    parser.add_argument("--out", type=Path, default=default_out, help="JSON file (default $OUT/gpu_check.json)")
    parser.add_argument("--tokens", type=int, help="tokens to generate (default 32 on CUDA, 4 on a CPU)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    setup = Setup(
        "cuda" if cuda else "cpu", "smollm2-135m" if cuda else "tiny-random-llama", args.tokens or (32 if cuda else 4)
    )
    torch.manual_seed(0)
    rows, refused = [], []
    for name, part in PARTS.items():
        why = refusal(name)
        if why is not None:
            refused.append(why)
            rows.append({"part": name, "status": "refused", "reason": why})
            continue
        start = time.perf_counter()
        try:
            found = part(setup)
        except Exception as err:  # a part that crashes is a row of the table, not the end of the check
            found = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        status = "ok" if found.get("ok") else "FAILED"
        rows.append(
            {
                "part": name,
                "status": status,
                "device": setup.device,
                "model": setup.source,
                "seconds": round(time.perf_counter() - start, 2),
                **found,
            }
        )
    print(f"gpu check on {setup.device} ({setup.source}, {setup.tokens} tokens), torch {torch.__version__}")
    print(f"{'part':<16} {'status':<8} {'s':>7}  result")
    for row in rows:
        if row["status"] != "refused":
            text = row.get("result") or row.get("error", "")
            print(f"{row['part']:<16} {row['status']:<8} {row['seconds']:>7.2f}  {text}")
    for line in refused:
        print(line)
    payload = {
        "device": setup.device,
        "model": setup.source,
        "tokens": setup.tokens,
        "identity": identity(setup.device),
        "rows": rows,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.out}")
    return 1 if any(r["status"] == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
