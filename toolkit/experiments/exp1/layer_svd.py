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
from typing import TYPE_CHECKING

from toolkit.experiments.exp1.figures import plot_layer_svd as plot  # noqa: F401 (re-export for the registry)
from toolkit.experiments.layer_sweep import (
    LAYER_STORES,
    LayerSweepParams,
    eps_grid,
    measure_prompt,
    record_settings,
)

if TYPE_CHECKING:
    from toolkit.context import RunContext

PER_TARGET = True
NEEDS_MODEL = True
READS: tuple[str, ...] = ()
READS_PROMPTS = True  # its tasks read the manifest's prompts
NEEDS_EAGER_ATTENTION = True  # JVPs through the model (torch.func.jvp): not under SDPA
STORES = LAYER_STORES
METHOD = (
    "top-k right singular vectors of J (toolkit.numerics.spectrum: basis by block Krylov or the dense last-row "
    "Jacobian, Rayleigh–Ritz on f's own J); one full forward per (v_i, ε)"
)


@dataclass(frozen=True)
class Params(LayerSweepParams):
    """top_k singular directions (found in at most `iterations` block Krylov steps, block top_k +
    oversample, seeded), perturbed over eps_steps values from eps_min to eps_max (geometric),
    rounded by perturb_mode; true_fp64: with dtype float64, RMSNorm/RoPE/softmax in float64."""


def run(ctx: RunContext, params: Params) -> None:
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
            data, _, attrs = measure_prompt(ctx, params, prompt, eps, bar, keep_final=False)
            group.attrs.update({"prompt": prompt, **attrs})
            group.attrs["position"] = int(data["prompt_ids"].shape[0] - 1)
            for name, value in data.items():
                group.create_dataset(name, data=value)
    bar.update(bar.total - bar.done)
