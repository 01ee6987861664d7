"""exp2.lipschitz — singular values of J = ∂f/∂x and finite-difference gains along chosen directions.

x is the last token's input embedding, f(x) the final-norm hidden state at the last position (the
`lm_head` input), all other token embeddings fixed (`toolkit.numerics.embedding_forward`).  Per
prompt:

1. the top-k singular values σ and right singular vectors of J (`toolkit.numerics.spectrum`): a
   basis from block Krylov on JᵀJ (at most `iterations` steps; the dense Jacobian when D ≤ 256),
   computed through a one-token KV-cached forward pinned to f's bits when that reproduces f(x)
   exactly, then Rayleigh–Ritz and each triplet's residual ‖Jᵀu − σv‖/σ on f's own J;
   deterministic start and sign convention; the per-prompt attrs `solver`/`solver_note` say
   which route ran;
2. finite-difference gains  L̂(ε; v) = ‖f(x̃) − f(x)‖ / ‖x̃ − x‖  over a geometric ε grid, where
   x̃ = x + ε·v rounded to the model dtype as `perturb_mode` says and the denominator is the
   *realised* perturbation (the upstream scripts divided by the intended ε, which measures
   rounding once most coordinates stop moving).  Directions: the top-k right singular vectors
   (L̂ → σ_i as ε → 0 in exact arithmetic) and `n_random` seeded random unit vectors r (L̂ → ‖J r‖,
   stored as `jacobian_gain_random`).  A gain is NaN where x̃ == x (nothing to divide by), and 0
   where the input moved but f did not change in any bit;
3. a seeded noise-averaged gain along v₁: with r_i = noise_scale·ε·U(−1,1)^D,
   ‖mean_i f(x + εv₁ + r_i) − f(x + r_i)‖ / ‖mean_i (realised input differences)‖.

Needs `attn_implementation: eager` (JVPs fail under SDPA); checked when the task starts.  With
`dtype: float64` and `true_fp64` (default), RMSNorm, RoPE and the attention softmax are made to
compute in float64 for the task (`toolkit.numerics.true_fp64`): a plain `.double()` model still
rounds them to float32, and its finite differences stall at fp32 resolution.  Every forward is a
full recompute of the prompt (one code path for f and its perturbations); the perturbed inputs go
through in batches of up to `FD_BATCH` (the largest whose matmuls round like the prompt's own on this
machine, `toolkit.numerics.row_classes`) only where a check on this prompt's own inputs proved the batched
rows bitwise equal to batch size 1 (`toolkit.numerics.gains.Evaluator`; the per-prompt
attr `forward_batching` says which ran): first with the decoder's blocks on the last row only
behind the prompt's shared prefix (`toolkit.numerics.shared_prefix.last_rows_f`, ~T times fewer
FLOPs), else a full recompute of each batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from toolkit.experiments.exp2.figures import plot_lipschitz as plot  # noqa: F401 (re-export for the registry)

if TYPE_CHECKING:
    from toolkit.context import CheckedGroup, RunContext
    from toolkit.numerics.gains import Evaluator
    from toolkit.progress import Progress

PER_TARGET = True
NEEDS_MODEL = True
READS: tuple[str, ...] = ()
READS_PROMPTS = True  # its tasks read the manifest's prompts
NEEDS_EAGER_ATTENTION = True  # JVPs through the model (torch.func.jvp): not under SDPA
STORES = {
    "prompts/<k>/prompt_ids": "[T] int64 token ids of prompt k",
    "prompts/<k>/sigma": "[K] float64 top-K singular values of J, descending",
    "prompts/<k>/right_vectors": "[K,D] float64 right singular vectors (rows; largest-|entry| positive)",
    "prompts/<k>/residual": "[K] float64 ‖Jᵀu_i − σ_i v_i‖ / σ_i of each triplet",
    "prompts/<k>/residual_history": "[I] float64 largest relative Ritz residual after each Krylov step (empty: exact)",
    "prompts/<k>/eps": "[E] float64 the geometric ε grid (ascending)",
    "prompts/<k>/gain_singular": "[K,E] float64 ‖f(x̃)−f(x)‖/‖x̃−x‖ along v_i (NaN: x̃ == x)",
    "prompts/<k>/gain_random": "[R,E] float64 the same along seeded random unit directions",
    "prompts/<k>/jacobian_gain_random": "[R] float64 ‖J r‖ of each random direction (the ε → 0 limit)",
    "prompts/<k>/gain_noise": "[E] float64 noise-averaged gain along v_1 (absent when n_noise = 0)",
    "prompts/<k>/changed_singular / changed_random": "[K|R,E] int64 input elements that changed",
    "prompts/<k>/realised_singular / realised_random": "[K|R,E] float64 ‖x̃ − x‖ (intended: ε)",
}
FD_BATCH = 16  # perturbed inputs per batched forward, used only where proven bitwise equal per prompt
METHOD = (
    "top-k triplets by toolkit.numerics.spectrum: basis by block Krylov on JᵀJ (or the dense Jacobian when D <= 256), "
    "on the one-token KV-cached derivative pinned to f's bits when it reproduces f(x) exactly; Rayleigh–Ritz and "
    "residuals on f's own J"
)
# JVP: forward mode (torch.func.jvp) or reverse over reverse; recorded in the attrs as jvp_mode


@dataclass(frozen=True)
class Params:
    """top_k singular triplets by at most `iterations` block Krylov steps (block top_k + oversample),
    J·v by forward-mode AD or, with jvp_mode double_vjp, reverse over reverse (faster on CPU);
    finite differences over eps_steps values from eps_min to eps_max along them and n_random
    seeded random directions, rounded by perturb_mode; noise-averaged gain over n_noise draws;
    true_fp64: with dtype float64, compute RMSNorm/RoPE/softmax in float64 too."""

    top_k: int = 5
    iterations: int = 20
    oversample: int = 2
    eps_min: float = 1e-10
    eps_max: float = 1e-1
    eps_steps: int = 10
    n_random: int = 4
    n_noise: int = 8
    noise_scale: float = 0.01
    seed: int = 0
    perturb_mode: Literal["fp64_then_round", "model_dtype"] = "fp64_then_round"
    true_fp64: bool = True
    jvp_mode: Literal["forward", "double_vjp"] = "forward"

    def check(self) -> list[tuple[str, str]]:
        from toolkit.experiments.checks import above, at_least, between, eps_range, subspace

        problems: list[tuple[str, str]] = []
        subspace(problems, self.top_k, self.iterations, self.oversample, k_max=256)
        eps_range(problems, self.eps_min, self.eps_max, self.eps_steps)
        between(problems, "n_random", self.n_random, 0, 1000)
        between(problems, "n_noise", self.n_noise, 0, 100_000)
        above(problems, "noise_scale", self.noise_scale)
        at_least(problems, "seed", self.seed)
        return problems


def run(ctx: RunContext, params: Params) -> None:
    """Per prompt: top-k singular triplets of J and finite-difference gains; see the module docstring."""
    from toolkit.experiments.checks import eps_grid
    from toolkit.numerics.session import jacobian_setup, model_arithmetic

    setup = jacobian_setup(ctx, params.true_fp64)
    eps = eps_grid(params.eps_min, params.eps_max, params.eps_steps)
    per_prompt = params.iterations + 2 + len(eps) * (params.top_k + params.n_random + 2 * params.n_noise)
    bar = ctx.progress(len(ctx.prompts) * per_prompt)
    out = ctx.out
    out.attrs["method"] = METHOD
    out.attrs["iterations"] = params.iterations
    out.attrs["block_size"] = params.top_k + params.oversample
    out.attrs["jvp_mode"] = params.jvp_mode
    out.attrs["f"] = (
        "final-norm hidden state (lm_head input) at the last position, w.r.t. the last token's input embedding"
    )
    out.attrs["gain"] = "||f(x~) - f(x)||_2 / ||x~ - x||_2 with the realised perturbation (float64 differences)"
    out.attrs["noise"] = "r_i = noise_scale * eps * U(-1,1)^D (seed + 1); pairs f(x + eps v1 + r_i), f(x + r_i)"
    out.attrs["perturb_mode"] = params.perturb_mode
    out.attrs["dtype"] = ctx.numerics.dtype
    out.attrs["attn_implementation"] = ctx.numerics.attn_implementation
    out.attrs["true_fp64"] = setup.use_true_fp64
    out.attrs["forward_path"] = (
        "full recompute of the prompt, no KV cache; batch size 1, or batches of up to "
        f"{FD_BATCH} (the last row only behind the shared prefix, else a full recompute; the size the row-class "
        "probe finds rounding like batch size 1 on this machine) where proven bitwise equal to batch size 1 "
        "(per-prompt attr forward_batching)"
    )
    with model_arithmetic(ctx, setup.use_true_fp64, attention=setup.attention):
        residuals = []
        for index, prompt in enumerate(ctx.prompts):
            group = out.create_group(f"prompts/{index:03d}")
            residuals.append(_one_prompt(ctx, params, prompt, eps, group, bar))
    out.attrs["residual_max"] = float(max(residuals)) if residuals else float("nan")
    bar.update(bar.total - bar.done)


def _one_prompt(ctx: RunContext, params: Params, prompt: str, eps: Any, group: CheckedGroup, bar: Progress) -> float:
    import numpy as np
    import torch

    from toolkit.numerics.embedding_forward import make_f_rows
    from toolkit.numerics.gains import Evaluator, finite_difference_gains, random_directions
    from toolkit.numerics.row_classes import RowProbe
    from toolkit.numerics.session import prompt_singular, solver_attrs
    from toolkit.numerics.shared_prefix import last_rows_f

    ids, op, triplets = prompt_singular(ctx, prompt, params, bar.update)
    random_dirs = random_directions(params.n_random, op.in_dim, params.seed)
    probe = RowProbe(ctx.model, int(ids.shape[1]))
    evaluator = Evaluator(op.f, make_f_rows(ctx.model, ids), FD_BATCH, last_rows_f(ctx.model, ids), probe)
    jacobian_gain_random = (
        torch.linalg.vector_norm(op.jvp(random_dirs), dim=1) if params.n_random else torch.zeros(0, dtype=torch.float64)
    )
    bar.update()
    with torch.no_grad():
        base = op.f(op.x).double()
    singular = finite_difference_gains(op, base, triplets.right, eps, params.perturb_mode, bar.update, evaluator)
    randoms = finite_difference_gains(op, base, random_dirs, eps, params.perturb_mode, bar.update, evaluator)

    group.attrs.update({"prompt": prompt, **solver_attrs(triplets), "forward_batching": evaluator.note})
    group.attrs["position"] = int(ids.shape[1] - 1)
    data = {
        "prompt_ids": ids[0].cpu().numpy().astype(np.int64),
        "sigma": triplets.sigma.numpy(),
        "right_vectors": triplets.right.numpy(),
        "residual": triplets.residual.numpy(),
        "residual_history": np.asarray(triplets.residual_history, dtype=np.float64),
        "eps": np.asarray(eps, dtype=np.float64),
        "gain_singular": singular["gain"],
        "changed_singular": singular["changed"],
        "realised_singular": singular["realised"],
        "gain_random": randoms["gain"],
        "changed_random": randoms["changed"],
        "realised_random": randoms["realised"],
        "jacobian_gain_random": jacobian_gain_random.numpy(),
    }
    if params.n_noise:
        data["gain_noise"] = _noise_gains(op, triplets.right[0], eps, params, bar, evaluator)
    for name, value in data.items():
        group.create_dataset(name, data=value)
    return float(triplets.residual.max())


def _noise_gains(op: Any, direction: Any, eps: Any, params: Params, bar: Progress, evaluator: Evaluator) -> Any:
    """Noise-averaged gain along `direction` per ε (NaN where the mean input difference is 0).

    All draws are made first, in the loop's order, then evaluated together; the float64 sums run
    draw by draw as in the one-at-a-time loop, so the result is bitwise the same."""
    import numpy as np
    import torch

    from toolkit.numerics.perturb import perturb

    generator = torch.Generator().manual_seed(params.seed + 1)
    pairs = []
    for step in eps:
        for _ in range(params.n_noise):
            noise = (
                params.noise_scale
                * float(step)
                * (2 * torch.rand(op.in_dim, generator=generator, dtype=torch.float64) - 1)
            )
            moved = perturb(op.x, float(step) * direction + noise, 1.0, params.perturb_mode)
            anchor = perturb(op.x, noise, 1.0, params.perturb_mode)
            pairs += [moved.x_tilde, anchor.x_tilde]
    values = evaluator.rows(torch.stack(pairs), bar.update)
    out = np.full(len(eps), np.nan)
    for j in range(len(eps)):
        outputs = torch.zeros(op.out_dim, dtype=torch.float64, device=op.x.device)
        inputs = torch.zeros(op.in_dim, dtype=torch.float64, device=op.x.device)
        for d in range(params.n_noise):
            at = 2 * (j * params.n_noise + d)
            outputs += values[at].double() - values[at + 1].double()
            inputs += pairs[at].double() - pairs[at + 1].double()
        denominator = float(torch.linalg.vector_norm(inputs))
        if denominator > 0:
            out[j] = float(torch.linalg.vector_norm(outputs)) / denominator
    return out
