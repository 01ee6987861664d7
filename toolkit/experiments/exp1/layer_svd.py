"""exp1.layer_svd — how a perturbation of the last token's embedding travels through every layer.

x is the last token's input embedding, f the final-norm hidden state at the last position and
J = ∂f/∂x (all other token embeddings fixed).  Per prompt:

1. the top-k right singular vectors v_i of J, matrix-free (`toolkit.numerics.jacobian`:
   subspace iteration with JVPs/VJPs, deterministic start, largest-|entry|-positive signs) —
   the directions the network amplifies most;
2. for each v_i and each ε of a geometric grid reaching below the input's ULP scale,
   x̃ = x + ε·v_i rounded to the model dtype as `perturb_mode` says, with the realised
   perturbation x̃ − x stored (upstream used the intended ε and lost the sub-ulp files to name
   collisions);
3. one full forward per x̃ (batch 1, no KV cache, the same path as the unperturbed forward) and the
   divergence of EVERY row — row 0 the input embedding itself, rows 1..L the decoder layers'
   residual outputs, row L+1 the final norm — from the unperturbed forward: L2, L∞, relative L2,
   number of changed elements, max and median ULP distance in the model's own format
   (`toolkit.numerics.divergence`).

Row 0's divergence is the realised input perturbation exactly.  Also stored: the ε where the first
input coordinate can move (ulp(x_i)/(2|v_i|), minimum) and where half of them can (median).
With `dtype: float64` and `true_fp64` the model computes RMSNorm/RoPE/softmax in float64.
Needs `attn_implementation: eager` (JVPs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from toolkit.experiments.exp1.figures import plot_layer_svd as plot  # noqa: F401 (re-export for the registry)

PER_TARGET = True
NEEDS_MODEL = True
READS: tuple[str, ...] = ()
READS_PROMPTS = True  # its tasks read the manifest's prompts
NEEDS_EAGER_ATTENTION = True  # JVPs through the model (torch.func.jvp): not under SDPA
STORES = {
    "prompts/<k>/prompt_ids": "[T] int64 token ids",
    "prompts/<k>/sigma / right_vectors / residual": "[K], [K,D], [K] float64 top-K triplets of J (as exp2)",
    "prompts/<k>/eps": "[E] float64 geometric ε grid (ascending)",
    "prompts/<k>/eps_first_change / eps_half_change": "[K] float64 min / median of ulp(x_i)/(2|v_i|)",
    "prompts/<k>/realised_norm": "[K,E] float64 ‖x̃ − x‖₂ (intended: ε)",
    "prompts/<k>/input_changed": "[K,E] int64 input elements that changed",
    "prompts/<k>/x_tilde": "[K,E,D] float64 exact copies of the perturbed inputs",
    "prompts/<k>/base_states": "[L+2,D] float64 unperturbed rows (0 input, 1..L layers, L+1 final norm)",
    "prompts/<k>/l2 / linf / rel_l2": "[K,E,L+2] float64 divergence per row",
    "prompts/<k>/n_changed / ulp_max": "[K,E,L+2] int64 changed elements, max ULP distance (model format)",
    "prompts/<k>/ulp_median": "[K,E,L+2] float64 median ULP distance of the changed elements",
}
METHOD = "top-k right singular vectors of J by subspace iteration (JVP+VJP); one full forward per (v_i, ε)"


@dataclass(frozen=True)
class Params:
    """top_k singular directions (found by `iterations` of subspace iteration, block top_k +
    oversample, seeded), perturbed over eps_steps values from eps_min to eps_max (geometric),
    rounded by perturb_mode; true_fp64: with dtype float64, RMSNorm/RoPE/softmax in float64."""

    top_k: int = 2
    iterations: int = 15
    oversample: int = 2
    eps_min: float = 1e-10
    eps_max: float = 1e-1
    eps_steps: int = 10
    seed: int = 0
    perturb_mode: Literal["fp64_then_round", "model_dtype"] = "fp64_then_round"
    true_fp64: bool = True
    jvp_mode: Literal["forward", "double_vjp"] = "forward"

    def check(self) -> list[tuple[str, str]]:
        return check_common(self)


def check_common(p: Any) -> list[tuple[str, str]]:
    """Checks shared with exp3.precision (same field names)."""
    from toolkit.experiments.checks import at_least, eps_range, subspace

    problems: list[tuple[str, str]] = []
    subspace(problems, p.top_k, p.iterations, p.oversample)
    eps_range(problems, p.eps_min, p.eps_max, p.eps_steps)
    at_least(problems, "seed", p.seed)
    return problems


def eps_grid(p: Any) -> Any:
    """The ascending geometric ε grid of params p."""
    from toolkit.experiments import checks

    return checks.eps_grid(p.eps_min, p.eps_max, p.eps_steps)


def record_settings(ctx: Any, p: Any, use_true_fp64: bool) -> None:
    """Every setting that changes rounding, in the task's attrs."""
    out = ctx.out
    out.attrs["iterations"] = p.iterations
    out.attrs["block_size"] = p.top_k + p.oversample
    out.attrs["jvp_mode"] = p.jvp_mode
    out.attrs["perturb_mode"] = p.perturb_mode
    out.attrs["dtype"] = ctx.numerics.dtype
    out.attrs["attn_implementation"] = ctx.numerics.attn_implementation
    out.attrs["true_fp64"] = bool(use_true_fp64)
    out.attrs["forward_path"] = "full recompute of the prompt, batch size 1, no KV cache, logits_to_keep=1"
    out.attrs["rows"] = "0: input embedding x~; 1..L: decoder layer outputs (residual stream); L+1: final norm"
    out.attrs["ulp_format"] = f"ULPs of {ctx.numerics.dtype} (the model's format)"


def run(ctx: Any, params: Params) -> None:
    """Per prompt: singular directions, then the per-layer divergence sweep; see the module docstring."""
    from toolkit.numerics.session import jacobian_setup, model_arithmetic

    setup = jacobian_setup(ctx, params.true_fp64)
    eps = eps_grid(params)
    bar = ctx.progress(len(ctx.prompts) * (params.iterations + 1 + params.top_k * len(eps)))
    ctx.out.attrs["method"] = METHOD
    record_settings(ctx, params, setup.use_true_fp64)
    with model_arithmetic(ctx, setup.use_true_fp64):
        for index, prompt in enumerate(ctx.prompts):
            group = ctx.out.create_group(f"prompts/{index:03d}")
            data, _ = measure_prompt(ctx, params, prompt, eps, bar, keep_final=False)
            group.attrs["prompt"] = prompt
            group.attrs["position"] = int(data["prompt_ids"].shape[0] - 1)
            for name, value in data.items():
                group.create_dataset(name, data=value)
    bar.update(bar.total - bar.done)


def measure_prompt(ctx: Any, p: Any, prompt: str, eps: Any, bar: Any,
                   keep_final: bool) -> tuple[dict[str, Any], Any]:
    """(datasets, JacobianOperator): top-k directions of J and the layer sweep for one prompt
    (also used by exp3.precision, which keeps f(x̃) − f(x) with `keep_final`).
    """
    import numpy as np

    from toolkit.numerics.divergence import change_scale, layer_sweep
    from toolkit.numerics.session import prompt_singular

    ids, op, triplets = prompt_singular(ctx, prompt, p, bar.update)
    bar.update()
    sweep = layer_sweep(ctx.model, ids, op.x, triplets.right, eps, p.perturb_mode, tick=bar.update,
                        keep_final=keep_final)
    scales = np.array([change_scale(op.x, v) for v in triplets.right])
    data = {"prompt_ids": ids[0].cpu().numpy().astype(np.int64), "sigma": triplets.sigma.numpy(),
            "right_vectors": triplets.right.numpy(), "residual": triplets.residual.numpy(),
            "eps": np.asarray(eps, dtype=np.float64), "eps_first_change": scales[:, 0],
            "eps_half_change": scales[:, 1], **sweep}
    return data, op
