"""exp5.module_lipschitz — local Lipschitz constants of every module of every decoder layer.

Per prompt, one forward of the prompt records each selected module's call (exact names
`<layer>.<module>`, e.g. `model.layers.7.self_attn`; `toolkit.numerics.hooks.capture_calls`).
For each (layer, module), g(z) = the module's output at the last position as a function of its
own input z at that position (`toolkit.numerics.modules.module_function`; for self-attention the
other positions' inputs — their keys and values — RoPE and the mask are held at their recorded
values).  Then:

1. top-k singular values σ and right vectors of J_g = ∂g/∂z by subspace iteration with JVPs and
   VJPs (`toolkit.numerics.jacobian`, the same code as exp2), with residuals;
2. finite-difference gains ‖g(z̃) − g(z)‖/‖z̃ − z‖ (realised perturbation, rounded as
   `perturb_mode` says) along v1 and along one seeded random unit direction r, over `eps`, plus
   the ε → 0 limit ‖J_g r‖;
3. a faithfulness check: g(z_recorded) must equal the recorded module output bit for bit (g runs
   the module on the whole recorded sequence, so the GEMM shapes are the forward's); stored.

Upstream exp5 only observed submodule outputs under the whole-model direction, matched modules by
substring ("layers.1" also hit layers 10–19) and computed no per-module Jacobian; this computes
what its docstring promised.  Needs `attn_implementation: eager`; with `dtype: float64` and
`true_fp64` the modules compute RMSNorm/RoPE/softmax in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from toolkit.experiments.exp5.figures import plot_module_lipschitz as plot  # noqa: F401 (re-export for the registry)

if TYPE_CHECKING:
    from toolkit.context import RunContext
    from toolkit.progress import Progress

PER_TARGET = True
NEEDS_MODEL = True
READS: tuple[str, ...] = ()
READS_PROMPTS = True  # its tasks read the manifest's prompts
NEEDS_EAGER_ATTENTION = True  # JVPs through the model (torch.func.jvp): not under SDPA
STORES = {
    "module_names": "[L,M] exact qualified names of the analysed modules (bytes)",
    "modules / layer_indices": "[M] module names relative to a layer (bytes), [L] int64 decoder layer indices",
    "prompts/<k>/prompt_ids": "[T] int64 token ids",
    "prompts/<k>/sigma / residual": "[L,M,K] float64 top-K singular values of ∂g/∂z, descending; residuals",
    "prompts/<k>/right_vectors": "[L,M,K,D] float64 right singular vectors (largest-|entry| positive)",
    "prompts/<k>/eps": "[E] float64 finite-difference steps",
    "prompts/<k>/gain_v1 / gain_random": "[L,M,E] float64 ‖g(z̃)−g(z)‖/‖z̃−z‖ along v1 / r (NaN: z̃ == z)",
    "prompts/<k>/jacobian_gain_random": "[L,M] float64 ‖J_g r‖",
    "prompts/<k>/input_norm / output_norm": "[L,M] float64 ‖z‖, ‖g(z)‖ at the last position",
    "prompts/<k>/faithful": "[L,M] bool g(z_recorded) == recorded output, bit for bit",
}
METHOD = "per module: subspace iteration on J_gᵀJ_g (JVP+VJP) of g(z) = module output at t* vs its input at t*"


@dataclass(frozen=True)
class Params:
    """modules: names relative to each decoder layer (exact); layers: indices (empty = all);
    top_k singular values by `iterations` of subspace iteration (block top_k + oversample);
    finite-difference gains at each ε of `eps`, rounded by perturb_mode; seed for the start block
    and the random direction."""

    modules: tuple[str, ...] = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
    layers: tuple[int, ...] = ()
    top_k: int = 1
    iterations: int = 12
    oversample: int = 2
    eps: tuple[float, ...] = (1e-6, 1e-3)
    seed: int = 0
    perturb_mode: Literal["fp64_then_round", "model_dtype"] = "fp64_then_round"
    true_fp64: bool = True
    jvp_mode: Literal["forward", "double_vjp"] = "forward"

    def check(self) -> list[tuple[str, str]]:
        from toolkit.experiments.checks import at_least, subspace

        problems: list[tuple[str, str]] = []
        if not self.modules:
            problems.append(("modules", "must name at least one module, e.g. [self_attn, mlp]"))
        if len(set(self.modules)) != len(self.modules):
            problems.append(("modules", f"has duplicates: {list(self.modules)}"))
        if any(i < 0 for i in self.layers) or len(set(self.layers)) != len(self.layers):
            problems.append(("layers", f"must be distinct indices >= 0, got {list(self.layers)}"))
        subspace(problems, self.top_k, self.iterations, self.oversample)
        if not self.eps or any(not e > 0 for e in self.eps):
            problems.append(("eps", f"must be a non-empty list of values > 0, got {list(self.eps)}"))
        at_least(problems, "seed", self.seed)
        return problems


def run(ctx: RunContext, params: Params) -> None:
    """Per prompt: record module calls, then σ and gains of every (layer, module); see the docstring."""
    import numpy as np

    from toolkit.numerics.modules import layer_module_names
    from toolkit.numerics.session import jacobian_setup, model_arithmetic

    setup = jacobian_setup(ctx, params.true_fp64)
    names = layer_module_names(ctx.model, params.modules)
    indices = list(params.layers) or list(range(len(names)))
    bad = [i for i in indices if i >= len(names)]
    if bad:
        raise ValueError(f"layers {bad} do not exist: the model has {len(names)} decoder layers (0..{len(names) - 1})")
    names = [names[i] for i in indices]
    per_module = params.iterations + 2 + 2 * len(params.eps)
    bar = ctx.progress(len(ctx.prompts) * len(names) * len(params.modules) * per_module)
    out = ctx.out
    out.create_dataset("module_names", data=np.array(names, dtype="S"))
    out.create_dataset("modules", data=np.array(params.modules, dtype="S"))
    out.create_dataset("layer_indices", data=np.array(indices, dtype=np.int64))
    out.attrs.update(
        {
            "method": METHOD,
            "iterations": params.iterations,
            "block_size": params.top_k + params.oversample,
            "jvp_mode": params.jvp_mode,
            "perturb_mode": params.perturb_mode,
            "dtype": ctx.numerics.dtype,
            "attn_implementation": setup.attention,
            "true_fp64": setup.use_true_fp64,
            "held_fixed": "self_attn: other positions' inputs (keys/values), RoPE cos/sin, mask; "
            "position-wise modules: nothing",
            "module_path": "module run on the whole recorded sequence [1,T,D], row t* replaced; "
            "forward: full prompt, batch 1, no KV cache",
        }
    )
    with model_arithmetic(ctx, setup.use_true_fp64):
        for index, prompt in enumerate(ctx.prompts):
            group = out.create_group(f"prompts/{index:03d}")
            group.attrs["prompt"] = prompt
            for name, value in _one_prompt(ctx, params, prompt, names, bar).items():
                group.create_dataset(name, data=value)
    out.attrs["all_faithful"] = bool(all(np.all(out[f"prompts/{k}/faithful"][()]) for k in out["prompts"]))
    bar.update(bar.total - bar.done)


def _one_prompt(ctx: RunContext, params: Params, prompt: str, names: list[list[str]], bar: Progress) -> dict[str, Any]:
    import numpy as np
    import torch

    from toolkit.numerics.hooks import capture_calls

    ids = ctx.encode(prompt)
    flat = [n for row in names for n in row]
    with torch.no_grad(), capture_calls(ctx.model, flat) as calls:
        ctx.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    shape = (len(names), len(params.modules))
    k, e = params.top_k, len(params.eps)
    data: dict[str, Any] = {
        "prompt_ids": ids[0].cpu().numpy().astype(np.int64),
        "eps": np.asarray(params.eps, dtype=np.float64),
        "sigma": np.zeros(shape + (k,)),
        "residual": np.zeros(shape + (k,)),
        "right_vectors": None,
        "gain_v1": np.full(shape + (e,), np.nan),
        "gain_random": np.full(shape + (e,), np.nan),
        "jacobian_gain_random": np.zeros(shape),
        "input_norm": np.zeros(shape),
        "output_norm": np.zeros(shape),
        "faithful": np.zeros(shape, dtype=bool),
    }
    modules = dict(ctx.model.named_modules())
    for i, row in enumerate(names):
        for j, name in enumerate(row):
            result = module_measures(modules[name], calls[name], params, bar)
            if data["right_vectors"] is None:
                data["right_vectors"] = np.zeros(shape + result["right"].shape)
            data["right_vectors"][i, j] = result.pop("right")
            for key, value in result.items():
                data[key][i, j] = value
    return data


def module_measures(module: Any, call: dict[str, Any], params: Params, bar: Progress) -> dict[str, Any]:
    """σ, residual, right vectors, gains, norms and the faithfulness flag of one recorded module call."""
    import torch

    from toolkit.numerics.gains import finite_difference_gains, random_directions
    from toolkit.numerics.jacobian import JacobianOperator, top_singular
    from toolkit.numerics.modules import check_faithful, module_function

    g, z = module_function(module, call)
    faithful = check_faithful(g, z, call)
    op = JacobianOperator(g, z, jvp_mode=params.jvp_mode)
    if params.top_k > min(op.in_dim, op.out_dim):
        raise ValueError(f"top_k = {params.top_k} exceeds the module's dimensions ({op.in_dim} → {op.out_dim})")
    triplets = top_singular(
        op,
        params.top_k,
        iterations=params.iterations,
        oversample=params.oversample,
        seed=params.seed,
        progress=bar.update,
    )
    random_dir = random_directions(1, op.in_dim, params.seed)[0]
    limit = float(torch.linalg.vector_norm(op.jvp(random_dir[None])[0]))
    bar.update()
    base = op.output.double()
    gains = finite_difference_gains(
        op, base, torch.stack([triplets.right[0], random_dir]), params.eps, params.perturb_mode, bar.update
    )["gain"]
    bar.update()
    return {
        "sigma": triplets.sigma.numpy(),
        "residual": triplets.residual.numpy(),
        "right": triplets.right.numpy(),
        "gain_v1": gains[0],
        "gain_random": gains[1],
        "jacobian_gain_random": limit,
        "input_norm": float(torch.linalg.vector_norm(z.double())),
        "output_norm": float(torch.linalg.vector_norm(base)),
        "faithful": faithful,
    }
