"""exp4.embedding_similarity — at which layer a perturbed (or differently computed) input separates.

Across perturbation levels (READS exp4.perturb_until_divergence, same numerics as this task): for
every prompt and direction of each upstream run, the stored unit direction v is re-applied with
the same rounding (`toolkit.numerics.perturb`) at ε = eps_lower·growth⁻ⁱ (i = n_below..1), eps_lower
and eps_upper, and the states at the last prompt position — row 0 the input embedding, rows 1..L
the decoder layers, row L+1 the final norm (`toolkit.numerics.layer_diff.states_from_embeds`, one
full forward, no cache) — are compared with the unperturbed ones: L2, relative L2, cosine (float64)
and float32 ULPs.

"Separate" (docs/science_iii_exp4.md): the first row whose relative L2 difference exceeds `factor`
times the relative difference of the input row (row 0), i.e. where the network has amplified the
input change by more than `factor`; with identical inputs, the first row with any difference.

Across runs (optional): when exp4.internals runs are among the inputs (`needs`), their per-layer
relative L2 at the divergence step d is copied next to these curves with the same rule applied,
so one figure shows both how far numerics and how far a deliberate perturbation travel in depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.experiments.exp4.figures import plot_embedding_similarity as plot  # noqa: F401 (re-export for the registry)

if TYPE_CHECKING:
    from toolkit.context import CheckedGroup, RunContext, RunView

PER_TARGET = True
NEEDS_MODEL = True
READS: tuple[str, ...] = ("exp4.perturb_until_divergence",)
READS_OPTIONAL: tuple[str, ...] = ("exp4.internals",)  # read when an exp4.internals id is in its needs
READS_PROMPTS = False
NEEDS_EAGER_ATTENTION = False
UPSTREAM_MATCH = ("target", "dtype")  # perturb runs of its own target and dtype
STORES = {
    "perturb/<r>/prompts/<k>/eps": "[R,E] float64 ε levels per direction (ascending; last two: lower, upper)",
    "perturb/<r>/prompts/<k>/rel_l2 | l2 | cosine": "[R,E,L+2] float64 per row",
    "perturb/<r>/prompts/<k>/ulp_max": "[R,E,L+2] int64 float32-ULP max per row",
    "perturb/<r>/prompts/<k>/directions": "[R] direction names, copied from the upstream run",
    "perturb/<r>/prompts/<k>/separation": "[R,E] int64 first separating row (-1: none)",
    "runs/<q>/prompts/<k>/rel_l2 | separation": "from exp4.internals at step d (when it is an input)",
}


@dataclass(frozen=True)
class Params:
    """n_below levels under eps_lower (spaced by growth); factor: the separation threshold."""

    n_below: int = 3
    growth: float = 10.0
    factor: float = 10.0

    def check(self) -> list[tuple[str, str]]:
        from toolkit.experiments.checks import above, at_least, between

        problems: list[tuple[str, str]] = []
        between(problems, "n_below", self.n_below, 0, 50)
        above(problems, "growth", self.growth, 1)
        at_least(problems, "factor", self.factor, 1)
        return problems


def run(ctx: RunContext, params: Params) -> None:
    """Per-layer differences across perturbation levels (and across runs, from exp4.internals)."""
    perturb_runs = ctx.inputs.matching(
        "exp4.perturb_until_divergence", target=ctx.task.target, dtype=ctx.numerics.dtype
    )
    ctx.out.attrs["factor"] = params.factor
    ctx.out.attrs["rows"] = "0: input embedding; 1..L: decoder layer outputs; L+1: final-norm output (last position)"
    ctx.out.attrs["separation"] = "first row with rel_l2 > factor * rel_l2[0] (any difference if rel_l2[0] == 0)"
    bar = ctx.progress(sum(len(r.group["prompts"]) for r in perturb_runs))
    for r, upstream in enumerate(perturb_runs):
        group = ctx.out.create_group(f"perturb/{r:03d}")
        group.attrs["upstream"] = upstream.task_id
        for key in sorted(upstream.group["prompts"]):
            _levels(ctx, params, upstream, key, group.create_group(f"prompts/{key}"))
            bar.update()
    for q, internals in enumerate(ctx.inputs.matching("exp4.internals", min_runs=0)):
        _copy_internals(internals, params, ctx.out, q)


def _levels(ctx: RunContext, params: Params, upstream: RunView, key: str, group: CheckedGroup) -> None:
    import numpy as np
    import torch

    from toolkit.experiments.exp4.perturb_until_divergence import embeds_with, scoped_embeddings
    from toolkit.numerics.layer_diff import layer_metrics, separation_layer, states_from_embeds
    from toolkit.numerics.perturb import perturb

    base = f"prompts/{key}"
    ids = torch.tensor(upstream[f"{base}/prompt_ids"][None], device=ctx.device)
    scope, mode = str(upstream.attrs["scope"]), str(upstream.attrs["perturb_mode"])
    embeds, x = scoped_embeddings(ctx.model, ids, scope)
    reference = states_from_embeds(ctx.model, embeds)
    lower, upper = upstream[f"{base}/eps_lower"], upstream[f"{base}/eps_upper"]
    all_eps: list[list[float]] = []
    rows: dict[str, list[Any]] = {}
    for v, lo, hi in zip(upstream[f"{base}/direction_vectors"], lower, upper):
        eps = [lo / params.growth**i for i in range(params.n_below, 0, -1)] + [lo, hi]
        all_eps.append(eps)
        for name in ("l2", "rel_l2", "cosine", "ulp_max"):
            rows.setdefault(name, []).append([])
        for e in eps:
            if not np.isfinite(e):
                metrics = {n: np.full(reference.shape[0], np.nan) for n in ("l2", "rel_l2", "cosine")}
                metrics["ulp_max"] = np.full(reference.shape[0], -1)
            else:
                p = perturb(x, torch.from_numpy(v), float(e), mode)
                metrics = layer_metrics(reference, states_from_embeds(ctx.model, embeds_with(embeds, p.x_tilde, scope)))
            for name in ("l2", "rel_l2", "cosine", "ulp_max"):
                rows[name][-1].append(metrics[name])
    group.create_dataset("eps", data=np.asarray(all_eps, dtype=np.float64))
    for name, value in rows.items():
        group.create_dataset(name, data=np.asarray(value))
    sep = [
        [separation_layer(r, params.factor) if np.isfinite(r[0]) else -1 for r in per_dir] for per_dir in rows["rel_l2"]
    ]
    group.create_dataset("separation", data=np.asarray(sep, dtype=np.int64))
    group.create_dataset("directions", data=upstream[f"{base}/directions"])


def _copy_internals(internals: RunView, params: Params, out: CheckedGroup, q: int) -> None:
    import numpy as np

    from toolkit.numerics.layer_diff import separation_layer

    for pair in sorted(internals.group["pairs"]):
        source = internals.group[f"pairs/{pair}"]
        for key in sorted(source["prompts"]):
            g = source[f"prompts/{key}"]
            steps, d = g["steps"][()], int(g.attrs["divergence_step"])
            row = int(np.nonzero(steps == d)[0][0]) if d in steps else len(steps) - 1
            target = out.create_group(f"runs/{q:03d}_{pair}/prompts/{key}")
            target.attrs["labels"] = [str(x) for x in source.attrs["labels"]]
            target.attrs["step"] = int(steps[row])
            target.create_dataset("rel_l2", data=g["rel_l2"][row])
            target.create_dataset("separation", data=separation_layer(g["rel_l2"][row], params.factor))
