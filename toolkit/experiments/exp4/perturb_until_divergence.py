"""exp4.perturb_until_divergence — the smallest input-embedding perturbation that changes greedy output.

Per prompt and direction v (unit norm in float64): x̃(ε) = x + ε·v, rounded to the model dtype by
`toolkit.numerics.perturb` (`perturb_mode`), where x is the prompt's input embeddings — the last
token's row only (`scope: last`) or every row (`scope: all`, v spans all rows).  Greedy generation
of `n_tokens` from x̃ (`toolkit.numerics.greedy.greedy_from_embeds`, one path for all runs: full
recompute or KV cache as `kv_cache` says) is compared with the unperturbed run through the *same*
function (ε = 0).  ε grows geometrically from `eps_min` by `growth` until the output diverges
(bracket), then `iterations` bisection steps in log ε narrow it: `eps_lower` is the largest ε seen
with identical output, `eps_upper` the smallest ε seen that diverged.  Output need not be monotone
in ε; the bracket is what was observed at these two points (a test regenerates both).

Directions: `random` (seeded Gaussian), `singular` (top right singular vector of ∂(final-norm
state)/∂(last-token embedding), `toolkit.numerics.jacobian.top_singular`; always on the last row,
zero elsewhere; needs eager attention), `gradient` (−∇ of the step-0 top-1 − top-2 logit margin
w.r.t. the scoped embeddings: the steepest way to close the first decision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from toolkit.experiments.exp4.figures import plot_perturb_until_divergence as plot  # noqa: F401 (re-export for the registry)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from toolkit.context import CheckedGroup, RunContext
    from toolkit.progress import Progress

PER_TARGET = True
NEEDS_MODEL = True
READS: tuple[str, ...] = ()
READS_PROMPTS = True  # its tasks read the manifest's prompts


def NEEDS_EAGER_ATTENTION(params: Any) -> bool:
    """'singular' is among its directions: the top singular vector takes JVPs (torch.func.jvp)."""
    return "singular" in params.directions


DIRECTIONS = ("random", "singular", "gradient")
STORES = {
    "prompts/<k>/prompt_ids / reference_ids": "[L] / [T] int64 prompt and unperturbed greedy ids",
    "prompts/<k>/directions": "[R] direction names (random_<i>, singular, gradient)",
    "prompts/<k>/direction_vectors": "[R,D] or [R,T,D] float64 unit directions (scope last / all)",
    "prompts/<k>/eps_lower / eps_upper": "[R] float64 last identical / first diverged ε (NaN: none found)",
    "prompts/<k>/realised_lower / realised_upper": "[R] float64 ‖x̃ − x‖ at those ε (float64, exact)",
    "prompts/<k>/changed_upper": "[R] int64 embedding elements that moved at eps_upper",
    "prompts/<k>/divergence_step": "[R] int64 first differing step at eps_upper (-1: never diverged)",
    "prompts/<k>/tokens_upper": "[R,2] int64 reference / perturbed token at that step",
    "prompts/<k>/evaluations": "[R] int64 greedy generations spent on the search",
    "prompts/<k>/trace_eps / trace_diverged": "[R,E] every ε tried and whether it diverged (NaN/-1 padded)",
}


@dataclass(frozen=True)
class Params:
    """directions, n_random seeded random ones; ε from eps_min growing ×growth up to eps_max, then
    `iterations` log-space bisections; n_tokens greedy steps; scope: last token or all rows."""

    directions: tuple[str, ...] = ("random", "singular", "gradient")
    n_random: int = 1
    n_tokens: int = 24
    eps_min: float = 1e-6
    eps_max: float = 10.0
    growth: float = 10.0
    iterations: int = 12
    scope: Literal["last", "all"] = "last"
    kv_cache: bool = False
    perturb_mode: Literal["fp64_then_round", "model_dtype"] = "fp64_then_round"
    singular_iterations: int = 10
    seed: int = 0

    def check(self) -> list[tuple[str, str]]:
        from toolkit.experiments.checks import above, at_least, between

        problems = [
            ("directions", f"unknown direction {d!r}; choose from {', '.join(DIRECTIONS)}")
            for d in self.directions
            if d not in DIRECTIONS
        ]
        if not self.directions:
            problems.append(("directions", "must name at least one direction"))
        between(problems, "n_random", self.n_random, 1, 100)
        between(problems, "n_tokens", self.n_tokens, 1, 10_000)
        if not 0 < self.eps_min < self.eps_max:
            problems.append(("eps_min", f"need 0 < eps_min < eps_max, got {self.eps_min} and {self.eps_max}"))
        above(problems, "growth", self.growth, 1)
        between(problems, "iterations", self.iterations, 0, 200)
        between(problems, "singular_iterations", self.singular_iterations, 1, 1000)
        at_least(problems, "seed", self.seed)
        return problems


def run(ctx: RunContext, params: Params) -> None:
    """Per prompt and direction, bracket and bisect the divergence threshold ε (module docstring)."""
    from toolkit.numerics.jacobian import require_eager

    if "singular" in params.directions:
        require_eager(ctx.model)
    out = ctx.out
    out.attrs["path"] = "kv_cache" if params.kv_cache else "full_recompute"
    out.attrs["decode"] = "greedy_from_embeds: same function for reference (eps=0) and perturbed inputs"
    out.attrs["scope"] = params.scope
    out.attrs["perturb_mode"] = params.perturb_mode
    out.attrs["dtype"] = ctx.numerics.dtype
    out.attrs["attn_implementation"] = ctx.numerics.attn_implementation
    out.attrs["batch_size"] = 1
    n_dirs = len(_names(params))
    per_dir = int(1 + _log_steps(params)) + params.iterations
    bar = ctx.progress(len(ctx.prompts) * (1 + n_dirs * per_dir))
    for index, prompt in enumerate(ctx.prompts):
        _one_prompt(ctx, params, prompt, out.create_group(f"prompts/{index:03d}"), bar)
    bar.update(bar.total - bar.done)


def _log_steps(params: Params) -> float:
    import math

    return math.ceil(math.log(params.eps_max / params.eps_min) / math.log(params.growth))


def _names(params: Params) -> list[str]:
    names = []
    for d in params.directions:
        names += [f"random_{i}" for i in range(params.n_random)] if d == "random" else [d]
    return names


def scoped_embeddings(model: PreTrainedModel, ids: torch.Tensor, scope: str) -> tuple[Any, Any]:
    """(all prompt embeddings [1, T, D], the perturbed part x: last row [D] or all rows [T, D])."""
    from toolkit.numerics.embedding_forward import prompt_embeddings

    embeds = prompt_embeddings(model, ids)
    return embeds, (embeds[0, -1].clone() if scope == "last" else embeds[0].clone())


def embeds_with(embeds: torch.Tensor, x_tilde: torch.Tensor, scope: str) -> Any:
    """The prompt embeddings with the scoped part replaced by x̃."""
    from toolkit.numerics.fpunits import with_row

    return with_row(embeds, x_tilde, -1) if scope == "last" else x_tilde[None].to(embeds.dtype)


def directions(
    ctx: RunContext, params: Params, ids: torch.Tensor, embeds: torch.Tensor, x: torch.Tensor
) -> dict[str, Any]:
    """Unit float64 directions shaped like x, by name."""
    import torch

    out: dict[str, Any] = {}
    generator = torch.Generator().manual_seed(params.seed)
    for name in _names(params):
        if name.startswith("random_"):
            v = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        elif name == "singular":
            v = torch.zeros(x.shape, dtype=torch.float64)
            row = _singular(ctx.model, ids, params.singular_iterations, params.seed)
            if params.scope == "last":
                v = row
            else:
                v[-1] = row
        else:
            v = -_margin_gradient(ctx.model, embeds, x, params.scope)
        out[name] = v / torch.linalg.vector_norm(v)
    return out


def _singular(model: PreTrainedModel, ids: torch.Tensor, iterations: int, seed: int) -> Any:
    from toolkit.numerics.jacobian import JacobianOperator, top_singular

    op = JacobianOperator.for_model(model, ids)
    return top_singular(op, 1, iterations=iterations, seed=seed).right[0].cpu()


def _margin_gradient(model: PreTrainedModel, embeds: torch.Tensor, x: torch.Tensor, scope: str) -> Any:
    """∇ of the step-0 top-1 − top-2 logit margin w.r.t. the scoped embeddings (float64, CPU)."""
    import torch

    with torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        logits = model(inputs_embeds=embeds_with(embeds, leaf, scope), use_cache=False, logits_to_keep=1).logits[0, -1]
        top = torch.topk(logits.detach().float(), 2).indices
        (logits[top[0]] - logits[top[1]]).backward()
    if leaf.grad is None:  # backward() fills every leaf that requires grad and reaches the output
        raise RuntimeError("the margin's gradient did not reach the embeddings")
    return leaf.grad.detach().double().cpu()


def _one_prompt(ctx: RunContext, params: Params, prompt: str, group: CheckedGroup, bar: Progress) -> None:
    import numpy as np

    from toolkit.numerics.greedy import greedy_from_embeds

    ids = ctx.encode(prompt)
    embeds, x = scoped_embeddings(ctx.model, ids, params.scope)
    reference = greedy_from_embeds(ctx.model, embeds, params.n_tokens, params.kv_cache).ids
    bar.update()
    vectors = directions(ctx, params, ids, embeds, x)
    found = [search(ctx.model, embeds, x, v, reference, params, bar) for v in vectors.values()]
    width = max(len(f["trace"]) for f in found)
    group.attrs["prompt"] = prompt
    data = {
        "prompt_ids": ids[0].cpu().numpy().astype(np.int64),
        "reference_ids": np.asarray(reference, np.int64),
        "directions": np.array(_names(params), dtype="S"),
        "direction_vectors": np.stack([v.numpy() for v in vectors.values()]),
        "trace_eps": np.array([[e for e, _ in f["trace"]] + [np.nan] * (width - len(f["trace"])) for f in found]),
        "trace_diverged": np.array([[int(v) for _, v in f["trace"]] + [-1] * (width - len(f["trace"])) for f in found]),
    }
    for name in (
        "eps_lower",
        "eps_upper",
        "realised_lower",
        "realised_upper",
        "changed_upper",
        "divergence_step",
        "evaluations",
    ):
        data[name] = np.array([f[name] for f in found])
    data["tokens_upper"] = np.array([f["tokens_upper"] for f in found], dtype=np.int64)
    for name, value in data.items():
        group.create_dataset(name, data=value)


def generate_at(
    model: PreTrainedModel, embeds: torch.Tensor, x: torch.Tensor, v: torch.Tensor, eps: float, params: Params
) -> tuple[list[int], Any]:
    """Greedy ids from the embeddings perturbed by ε·v, and the `Perturbation` record."""
    from toolkit.numerics.greedy import greedy_from_embeds
    from toolkit.numerics.perturb import perturb

    p = perturb(x, v.to(x.device), eps, params.perturb_mode)
    return greedy_from_embeds(
        model, embeds_with(embeds, p.x_tilde, params.scope), params.n_tokens, params.kv_cache
    ).ids, p


def search(
    model: PreTrainedModel,
    embeds: torch.Tensor,
    x: torch.Tensor,
    v: torch.Tensor,
    reference: list[int],
    params: Params,
    bar: Progress,
) -> dict[str, Any]:
    """Bracket then bisect (in log ε) the divergence threshold along v; see the module docstring."""
    import math

    from toolkit.numerics.greedy import first_difference

    trace: list[tuple[float, bool]] = []
    seen: dict[float, tuple[list[int], Any]] = {}

    def diverged(eps: float) -> bool:
        seen[eps] = generate_at(model, embeds, x, v, eps, params)
        trace.append((eps, first_difference(seen[eps][0], reference) >= 0))
        bar.update()
        return trace[-1][1]

    lower, upper, eps = math.nan, math.nan, params.eps_min
    while eps <= params.eps_max * (1 + 1e-12):
        if diverged(eps):
            upper = eps
            break
        lower, eps = eps, eps * params.growth
    if not math.isnan(upper) and not math.isnan(lower):
        for _ in range(params.iterations):
            middle = math.sqrt(lower * upper)
            if not lower < middle < upper:
                break
            if diverged(middle):
                upper = middle
            else:
                lower = middle
    result: dict[str, Any] = {
        "eps_lower": lower,
        "eps_upper": upper,
        "trace": trace,
        "evaluations": len(trace),
        "realised_lower": seen[lower][1].delta_norm if lower in seen else math.nan,
        "realised_upper": math.nan,
        "changed_upper": 0,
        "divergence_step": -1,
        "tokens_upper": (-1, -1),
    }
    if upper in seen:
        ids, p = seen[upper]
        step = first_difference(ids, reference)
        result.update(
            realised_upper=p.delta_norm,
            changed_upper=p.n_changed,
            divergence_step=step,
            tokens_upper=(reference[step] if step < len(reference) else -1, ids[step] if step < len(ids) else -1),
        )
    return result
