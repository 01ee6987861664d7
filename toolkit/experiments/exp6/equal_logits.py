"""exp6.equal_logits — a last-token input embedding x0 at which the model's top-2 logits tie.

Per prompt: starting from the last token's own embedding, search x (only that row of the input
embedding matrix moves) until the two leading `lm_head` logits at the last position are equal in
the model's dtype (`toolkit.numerics.tie_search`: `direct` minimises the gap of the current
top-2, `geometric` makes the final hidden state orthogonal to W[a] − W[b] of the initial top-2;
Gauss–Newton or the upstream Adam; then an optional lattice polish).  The best iterate is kept.

The tie is certified by the model's own forward on the stored x0 through the shared path
(`toolkit.numerics.embedding_forward.forward_states`: full recompute, batch 1, `logits_to_keep=1`):
the two logits exactly as `lm_head` produced them, their gap (float64 of the native values), the
gap in ULPs of the logit (0 = a true tie), the token `torch.argmax` picks (ties: lowest index) and
whether the pair is still the top-2.  Then the top-K right singular vectors of
J = ∂(final-norm hidden state at the last position)/∂x AT x0 (`toolkit.numerics.jacobian`), which
exp6.token_flip and exp7.heatmap read from the store instead of recomputing them.

All float datasets are float64 conversions of native values, so `torch.from_numpy(x0).to(dtype)`
gives back x0 bit for bit.  Needs `attn_implementation: eager` (JVPs), checked at task start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from toolkit.experiments.exp6.figures import plot_equal_logits as plot  # noqa: F401 (re-export for the registry)

if TYPE_CHECKING:
    from toolkit.context import CheckedGroup, RunContext
    from toolkit.progress import Progress

PER_TARGET = True
NEEDS_MODEL = True
READS: tuple[str, ...] = ()
READS_PROMPTS = True  # its tasks read the manifest's prompts
NEEDS_EAGER_ATTENTION = True  # JVPs through the model (torch.func.jvp): not under SDPA
STORES = {
    "prompts/<kkk>/prompt_ids": "[T] int64 token ids",
    "prompts/<kkk>/x0": "[D] float64 the certified embedding (exact model-dtype values)",
    "prompts/<kkk>/x_init": "[D] float64 the token's own embedding (exact)",
    "prompts/<kkk>/embeds": "[T,D] float64 the full input embedding matrix, last row == x0 (exact)",
    "prompts/<kkk>/pair": "[2] int64 (a, b): a = the model's argmax at x0, b = the other tied token",
    "prompts/<kkk>/logits_ab": "[2] float64 the two logits exactly as lm_head produced them",
    "prompts/<kkk>/gap / gap_ulps / argmax": "scalars: logit a − logit b, in ULPs of the logit, torch.argmax",
    "prompts/<kkk>/hidden_x0": "[D] float64 final-norm hidden state (lm_head input) at x0 (exact)",
    "prompts/<kkk>/gap_hw": "scalar float64 h(x0)·(W[a] − W[b]) in float64 (not the certified gap)",
    "prompts/<kkk>/top_ids / top_logits": "[5] the lm_head top-5 at x0",
    "prompts/<kkk>/trace_*": "[I] per evaluation: gap, gap_ulps, objective, step, phase (0 grad, 1 polish), "
    "pair_is_top2",
    "prompts/<kkk>/trace_pair": "[I,2] per evaluation: the pair (a, b) it measured",
    "prompts/<kkk>/sigma / right_vectors / residual": "[K], [K,D], [K] top-K singular triplets of J at x0",
}


@dataclass(frozen=True)
class Params:
    """method: direct | geometric objective; optimizer newton (lr = damping, max_step caps ‖δ‖) or adam
    (upstream: lr 1e-3, clip 1); stop after `iterations`, after `patience` iterations without a
    better iterate, or at |gap| ≤ tol_ulps; then up to polish_steps lattice moves; n_directions
    singular triplets of J at x0 by svd_iterations of subspace iteration (block n + oversample), J·v by
    reverse over reverse (double_vjp, default: ~10x faster than forward mode on CPU) or forward mode."""

    method: Literal["direct", "geometric"] = "direct"
    optimizer: Literal["newton", "adam"] = "newton"
    iterations: int = 50
    lr: float = 1.0
    max_step: float = 1.0
    patience: int = 8
    polish_steps: int = 200
    tol_ulps: float = 0.0
    n_directions: int = 10
    svd_iterations: int = 20
    oversample: int = 2
    seed: int = 0
    jvp_mode: Literal["forward", "double_vjp"] = "double_vjp"
    true_fp64: bool = True

    def check(self) -> list[tuple[str, str]]:
        from toolkit.experiments.checks import above, at_least, between, subspace

        problems: list[tuple[str, str]] = []
        between(problems, "iterations", self.iterations, 1, 100_000)
        above(problems, "lr", self.lr)
        above(problems, "max_step", self.max_step)
        between(problems, "patience", self.patience, 1, 100_000)
        between(problems, "polish_steps", self.polish_steps, 0, 1_000_000)
        at_least(problems, "tol_ulps", self.tol_ulps, 0, note=" (0 asks for an exact tie)")
        subspace(
            problems,
            self.n_directions,
            self.svd_iterations,
            self.oversample,
            k_max=256,
            names=("n_directions", "svd_iterations", "oversample"),
        )
        at_least(problems, "seed", self.seed)
        return problems


def run(ctx: RunContext, params: Params) -> None:
    """Per prompt: search, certify, and take the Jacobian's top singular directions at x0."""
    import json

    from toolkit.numerics.session import jacobian_setup, model_arithmetic
    from toolkit.numerics.tie_search import ARITHMETIC

    setup = jacobian_setup(ctx, params.true_fp64)
    out = ctx.out
    for key, value in (
        ("method", params.method),
        ("optimizer", params.optimizer),
        ("lr", params.lr),
        ("max_step", params.max_step),
        ("iterations", params.iterations),
        ("patience", params.patience),
        ("polish_steps", params.polish_steps),
        ("tol_ulps", params.tol_ulps),
        ("jvp_mode", params.jvp_mode),
        ("dtype", ctx.numerics.dtype),
        ("attn_implementation", ctx.numerics.attn_implementation),
        ("arithmetic", ARITHMETIC),
        ("true_fp64", setup.use_true_fp64),
    ):
        out.attrs[key] = value
    out.attrs["optimiser"] = json.dumps(
        {
            "optimizer": params.optimizer,
            "lr": params.lr,
            "max_step": params.max_step,
            "adam_betas": [0.9, 0.999],
            "adam_eps": 1e-8,
            "adam_grad_clip": 1.0,
        }
    )
    out.attrs["certified_by"] = (
        "toolkit.numerics.embedding_forward.forward_states: full recompute of the prompt, "
        "batch 1, no KV cache, logits_to_keep=1; gap = float64(logit a) - float64(logit b)"
    )
    out.attrs["directions"] = (
        "right singular vectors of J = d(final-norm hidden, last position)/d(x) at x0, "
        "subspace iteration (toolkit.numerics.jacobian.top_singular), largest-|entry| positive"
    )
    per_prompt = params.iterations + params.polish_steps + params.svd_iterations + 2
    bar = ctx.progress(len(ctx.prompts) * per_prompt)
    with model_arithmetic(ctx, setup.use_true_fp64, attention=setup.attention):
        for index, prompt in enumerate(ctx.prompts):
            group = out.create_group(f"prompts/{index:03d}")
            _one_prompt(ctx, params, prompt, group, bar)
    bar.update(bar.total - bar.done)


def _one_prompt(ctx: RunContext, params: Params, prompt: str, group: CheckedGroup, bar: Progress) -> None:
    import dataclasses

    import torch

    from toolkit.numerics.embedding_forward import forward_states, prompt_embeddings
    from toolkit.numerics.tie import certify, top_two
    from toolkit.numerics.tie_search import SearchSettings, TieObjective, search_tie

    ids = ctx.encode(prompt)
    embeds = prompt_embeddings(ctx.model, ids)
    if params.n_directions > embeds.shape[-1]:
        raise ValueError(f"n_directions = {params.n_directions} exceeds the embedding dimension {embeds.shape[-1]}")
    x_init = embeds[0, -1].clone()
    pair0 = top_two(forward_states(ctx.model, ids, x_init).logits)
    settings = SearchSettings(**{f.name: getattr(params, f.name) for f in dataclasses.fields(SearchSettings)})
    objective = TieObjective(ctx.model, embeds, params.method, pair0)
    result = search_tie(objective, x_init, settings, pair0, tick=bar.update)
    x0 = result.x_best
    states = forward_states(ctx.model, ids, x0)
    cert = certify(states.logits, *result.pair)
    trace_gap = result.trace["gap"][result.best_iteration] if result.best_iteration >= 0 else float("nan")
    a, b = cert.pair
    w = ctx.model.get_output_embeddings().weight
    top = torch.topk(states.logits.detach(), 5)
    _write_certificate(
        group,
        ids,
        x_init,
        embeds,
        x0,
        cert,
        states,
        top,
        gap_hw=float(states.final_norm.double() @ (w[a].detach().double() - w[b].detach().double())),
    )
    _write_trace(group, result.trace)
    _write_directions(ctx, params, ids, x0, group, bar)
    attrs = {
        "prompt": prompt,
        "method": params.method,
        "dtype": ctx.numerics.dtype,
        "converged": bool(cert.pair_is_top2 and abs(cert.gap_ulps) <= params.tol_ulps),
        "iterations_done": result.iterations_done,
        "best_iteration": result.best_iteration,
        "polish_tries": result.polish_tries,
        "polish_accepted": result.polish_accepted,
        "a_token": ctx.tokenizer.decode([a]),
        "b_token": ctx.tokenizer.decode([b]),
        "initial_pair": list(pair0),
        "pair_is_top2": cert.pair_is_top2,
        "position": int(ids.shape[1] - 1),
        "distance_from_init": float(torch.linalg.vector_norm(x0.double() - x_init.double())),
        "trace_matches_certified": bool(abs(trace_gap) == abs(cert.gap)),
    }
    for key, value in attrs.items():
        group.attrs[key] = value


def _write_certificate(
    group: CheckedGroup, ids: Any, x_init: Any, embeds: Any, x0: Any, cert: Any, states: Any, top: Any, gap_hw: float
) -> None:
    import numpy as np

    from toolkit.numerics.fpunits import with_row

    full = with_row(embeds, x0, -1)[0]
    data = {
        "prompt_ids": ids[0].cpu().numpy().astype(np.int64),
        "x0": x0.detach().double().cpu().numpy(),
        "x_init": x_init.detach().double().cpu().numpy(),
        "embeds": full.detach().double().cpu().numpy(),
        "pair": np.array(cert.pair, dtype=np.int64),
        "logits_ab": np.array(cert.logits_ab, dtype=np.float64),
        "gap": np.float64(cert.gap),
        "gap_ulps": np.float64(cert.gap_ulps),
        "argmax": np.int64(cert.argmax),
        "hidden_x0": states.final_norm.detach().double().cpu().numpy(),
        "gap_hw": np.float64(gap_hw),
        "top_ids": top.indices.cpu().numpy().astype(np.int64),
        "top_logits": top.values.double().cpu().numpy(),
    }
    for name, value in data.items():
        group.create_dataset(name, data=value)


def _write_trace(group: CheckedGroup, trace: dict[str, list[Any]]) -> None:
    import numpy as np

    group.create_dataset("trace_gap", data=np.asarray(trace["gap"], dtype=np.float64))
    group.create_dataset("trace_gap_ulps", data=np.asarray(trace["gap_ulps"], dtype=np.float64))
    group.create_dataset("trace_objective", data=np.asarray(trace["objective"], dtype=np.float64))
    group.create_dataset("trace_step", data=np.asarray(trace["step"], dtype=np.float64))
    group.create_dataset("trace_phase", data=np.asarray(trace["phase"], dtype=np.int8))
    group.create_dataset("trace_pair", data=np.asarray(trace["pair"], dtype=np.int64).reshape(-1, 2))
    group.create_dataset("trace_pair_is_top2", data=np.asarray(trace["pair_is_top2"], dtype=bool))


def _write_directions(ctx: RunContext, params: Params, ids: Any, x0: Any, group: CheckedGroup, bar: Progress) -> None:
    """Top-K right singular vectors of J at x0 (the prompt's other rows are the model's embeddings)."""
    from toolkit.numerics.embedding_forward import make_f
    from toolkit.numerics.jacobian import JacobianOperator, top_singular

    f, _ = make_f(ctx.model, ids)
    op = JacobianOperator(f, x0, batched=True, jvp_mode=params.jvp_mode)
    triplets = top_singular(
        op,
        params.n_directions,
        iterations=params.svd_iterations,
        oversample=params.oversample,
        seed=params.seed,
        progress=bar.update,
    )
    group.create_dataset("sigma", data=triplets.sigma.numpy())
    group.create_dataset("right_vectors", data=triplets.right.numpy())
    group.create_dataset("residual", data=triplets.residual.numpy())
    group.attrs["svd_iterations_done"] = triplets.iterations
