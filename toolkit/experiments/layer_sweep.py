"""The layer sweep shared by exp1.layer_svd and exp3.precision (not itself a registered experiment):
top-k singular directions of J = ∂f/∂x, a geometric ε grid, x̃ = x + ε·v_i and the divergence of
every layer's row from the unperturbed forward.  Both experiments take these params, write these
settings and store these datasets; see `toolkit.experiments.exp1.layer_svd` for the method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from toolkit.context import RunContext
    from toolkit.progress import Progress

LAYER_STORES = {
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


@dataclass(frozen=True)
class LayerSweepParams:
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


def check_common(p: LayerSweepParams) -> list[tuple[str, str]]:
    """Checks shared with exp3.precision (same field names)."""
    from toolkit.experiments.checks import at_least, eps_range, subspace

    problems: list[tuple[str, str]] = []
    subspace(problems, p.top_k, p.iterations, p.oversample)
    eps_range(problems, p.eps_min, p.eps_max, p.eps_steps)
    at_least(problems, "seed", p.seed)
    return problems


def eps_grid(p: LayerSweepParams) -> Any:
    """The ascending geometric ε grid of params p."""
    from toolkit.experiments import checks

    return checks.eps_grid(p.eps_min, p.eps_max, p.eps_steps)


def record_settings(ctx: RunContext, p: LayerSweepParams, use_true_fp64: bool) -> None:
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


def measure_prompt(
    ctx: RunContext, p: LayerSweepParams, prompt: str, eps: Any, bar: Progress, keep_final: bool
) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """(datasets, JacobianOperator, attrs): top-k directions of J and the layer sweep for one prompt
    (also used by exp3.precision, which keeps f(x̃) − f(x) with `keep_final`); attrs say how the
    directions were found (`toolkit.numerics.session.solver_attrs`).
    """
    import numpy as np

    from toolkit.numerics.divergence import change_scale, layer_sweep
    from toolkit.numerics.session import prompt_singular, solver_attrs

    ids, op, triplets = prompt_singular(ctx, prompt, p, bar.update)
    bar.update()
    sweep = layer_sweep(
        ctx.model, ids, op.x, triplets.right, eps, p.perturb_mode, tick=bar.update, keep_final=keep_final
    )
    scales = np.array([change_scale(op.x, v) for v in triplets.right])
    data = {
        "prompt_ids": ids[0].cpu().numpy().astype(np.int64),
        "sigma": triplets.sigma.numpy(),
        "right_vectors": triplets.right.numpy(),
        "residual": triplets.residual.numpy(),
        "eps": np.asarray(eps, dtype=np.float64),
        "eps_first_change": scales[:, 0],
        "eps_half_change": scales[:, 1],
        **sweep,
    }
    return data, op, solver_attrs(triplets)
