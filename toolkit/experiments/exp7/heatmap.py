"""exp7.heatmap — the logit gap of exp6's tied token pair on 2-D planes of input perturbations.

Reads exp6.equal_logits (same target and dtype): per prompt group its tie point x0 (the last
token's embedding), the tied pair (a, b), the prompt prefix and the top-K right singular vectors
v_1..v_K of the Jacobian at x0.  For each plane (i, j) of `planes` (1-based direction indices,
-1 = the last stored one) it evaluates every grid point

    x(e1, e2) = x0 + e1·v_i + e2·v_j, rounded to the model dtype as `arithmetic` says,

for e1, e2 on the grid e_min..e_max spaced by `step` (upstream: ±1e-8, step 1e-10, 201×201),
and stores gap = logit[a] − logit[b] (float64 from the native logits), the argmax token, the
index of each point's distinct rounded input, x0, the directions and the exact grid values.

Modes (`mode`, recorded): `faithful` — every value bitwise equal to one full forward of that
point alone at batch size 1 (`toolkit.numerics.grid.point_logits`); batches of up to
`batch_size` (balanced, `grid.balanced_batch`) are used only if a run-time check on
`check_sample` inputs of the first batch proves them bitwise equal, else batch size 1
(recorded); identical rounded inputs are evaluated once (`dedup`).  `fast` — prefix KV cache
and batches of the last position; it also computes faithful values on `agreement_sample`
random distinct inputs and stores the sign-agreement rate and the largest |gap difference|.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from toolkit.errors import UpstreamError
from toolkit.experiments.exp7.figures import plot_heatmap as plot  # noqa: F401 (re-export for the registry)

if TYPE_CHECKING:
    from toolkit.context import CheckedGroup, RunContext, RunView
    from toolkit.progress import Progress

PER_TARGET = True
NEEDS_MODEL = True
READS: tuple[str, ...] = ("exp6.equal_logits",)
READS_PROMPTS = False
NEEDS_EAGER_ATTENTION = False
UPSTREAM_MATCH = ("target", "dtype")  # equal_logits runs of its target and dtype
STORES = {
    "maps/<m>/gap": "[n1,n2] float64 logit[a] − logit[b] at (e1[i], e2[j]) (axis 0 = e1 along v_i)",
    "maps/<m>/argmax": "[n1,n2] int64 the model's argmax token at each point",
    "maps/<m>/logits_ab": "[n1,n2,2] float64 the native logits of a and b",
    "maps/<m>/distinct": "[n1,n2] int64 index of the point's distinct rounded input (cells of equal input)",
    "maps/<m>/e1 / e2": "[n1] / [n2] float64 the exact grid values",
    "maps/<m>/x0 / v1 / v2": "[D] float64 tie point (exact in the model dtype) and the two unit directions",
    "maps/<m>/embeds / prompt_ids / pair / sigma": "the prompt, its [T,D] embeddings (last row x0), (a, b), σ_i, σ_j",
    "maps/<m>/agreement/*": "fast mode: sampled points, their faithful and fast gaps",
}


@dataclass(frozen=True)
class Params:
    """Planes of direction pairs (1-based, -1 = last stored), grid e_min..e_max by step (both axes),
    input arithmetic, evaluation mode, batch size and checks (see the module docstring)."""

    planes: tuple[tuple[int, ...], ...] = ((1, 2), (1, 10), (1, -1))
    e_min: float = -1e-8
    e_max: float = 1e-8
    step: float = 2e-9
    arithmetic: Literal["fp64_then_round", "dtype_sequential"] = "fp64_then_round"
    mode: Literal["faithful", "fast"] = "faithful"
    batch_size: int = 96  # measured in process, 31×31 at 5 tokens: 96 (11 batches of 88) 0.5 s under 64; equal at 16
    check_sample: int = 8
    dedup: bool = True
    agreement_sample: int = 64
    seed: int = 0

    def check(self) -> list[tuple[str, str]]:
        return check_grid(self) + check_planes(self.planes)


def check_grid(params: Any) -> list[tuple[str, str]]:
    """Problems with the grid/evaluation fields shared by exp7.heatmap and exp7.zoom."""
    problems = []
    if hasattr(params, "e_min"):
        if not params.e_max >= params.e_min:
            problems.append(("e_max", f"must be >= e_min ({params.e_min}), got {params.e_max}"))
        elif params.e_max > params.e_min:
            if not params.step > 0:
                problems.append(("step", f"must be > 0, got {params.step}"))
            elif (params.e_max - params.e_min) / params.step + 1 > 4001:
                problems.append(("step", "gives more than 4001 points per axis; use a larger step"))
            else:
                from toolkit.numerics.grid import axis

                try:
                    axis(params.e_min, params.e_max, params.step)
                except ValueError as err:
                    problems.append(("step", str(err)))
    if not 1 <= params.batch_size <= 4096:
        problems.append(("batch_size", f"must be between 1 and 4096, got {params.batch_size}"))
    if not 1 <= params.check_sample <= 4096:
        problems.append(("check_sample", f"must be between 1 and 4096, got {params.check_sample}"))
    if not 0 <= params.agreement_sample <= 100_000:
        problems.append(("agreement_sample", f"must be between 0 and 100000, got {params.agreement_sample}"))
    if params.seed < 0:
        problems.append(("seed", f"must be >= 0, got {params.seed}"))
    return problems


def check_planes(planes: tuple[tuple[int, ...], ...]) -> list[tuple[str, str]]:
    """Each plane is two non-zero direction indices (1-based; negative counts from the last)."""
    if not planes:
        return [("planes", "must list at least one pair of direction indices, e.g. [[1, 2]]")]
    for k, plane in enumerate(planes):
        if len(plane) != 2 or 0 in plane or plane[0] == plane[1]:
            return [
                (
                    "planes",
                    f"entry {k} must be two different non-zero 1-based indices "
                    f"(-1 = last stored direction), got {list(plane)}",
                )
            ]
    return []


@dataclass
class TiePoint:
    """What exp7 needs from one exp6.equal_logits prompt group (all float64, exact in the model dtype)."""

    key: str
    prompt_ids: Any  # [T] int64
    embeds: Any  # [T, D] float64, last row = x0
    x0: Any  # [D]
    pair: tuple[int, int]
    gap: float  # exp6's certified gap (for the centre check)
    sigma: Any  # [K]
    directions: Any  # [K, D] right singular vectors (rows)


def read_tie_points(run: RunView) -> list[TiePoint]:
    """The tie points of one exp6.equal_logits run (the only place that knows its layout)."""
    points = []
    for key in sorted(run.group["prompts"]):
        base = f"prompts/{key}"
        if f"{base}/x0" not in run or f"{base}/right_vectors" not in run:
            continue
        pair = run[f"{base}/pair"]
        points.append(
            TiePoint(
                key=key,
                prompt_ids=run[f"{base}/prompt_ids"],
                embeds=run[f"{base}/embeds"],
                x0=run[f"{base}/x0"],
                pair=(int(pair[0]), int(pair[1])),
                gap=float(run[f"{base}/gap"]),
                sigma=run[f"{base}/sigma"],
                directions=run[f"{base}/right_vectors"],
            )
        )
    return points


def upstream_runs(ctx: RunContext, experiment: str) -> list[RunView]:
    """Upstream runs of `experiment` for this task's target and dtype; UpstreamError if none."""
    return ctx.inputs.matching(experiment, target=ctx.task.target, dtype=ctx.numerics.dtype)


def resolve_plane(plane: tuple[int, ...], count: int) -> tuple[int, int]:
    """0-based indices of a 1-based plane (-1 = last) for `count` stored directions; UpstreamError if out of range."""
    out = []
    for index in plane:
        resolved = index - 1 if index > 0 else count + index
        if not 0 <= resolved < count:
            raise UpstreamError(
                f"plane {list(plane)}: direction {index} does not exist, the upstream run stores "
                f"{count} directions (raise exp6.equal_logits' n_directions or choose other planes)"
            )
        out.append(resolved)
    if out[0] == out[1]:
        raise UpstreamError(f"plane {list(plane)} names direction {out[0] + 1} twice with {count} stored directions")
    return out[0], out[1]


def run(ctx: RunContext, params: Params) -> None:
    """One map per (upstream run, prompt group, plane); see the module docstring."""
    from toolkit.numerics import grid

    e = grid.axis(params.e_min, params.e_max, params.step)
    jobs = []
    for up in upstream_runs(ctx, "exp6.equal_logits"):
        for tie in read_tie_points(up):
            for plane in params.planes:
                jobs.append((up.task_id, tie, plane, resolve_plane(plane, len(tie.directions))))
    if not jobs:
        from toolkit.errors import UpstreamError

        raise UpstreamError(
            "exp7.heatmap found no tie point with stored directions in its exp6.equal_logits runs; "
            "give that entry n_directions >= 2 and prompts whose search certifies a tie"
        )
    per_map = len(e) ** 2 + params.check_sample + (params.agreement_sample if params.mode == "fast" else 0)
    bar = ctx.progress(len(jobs) * per_map)
    describe(ctx, params, ctx.out)
    for m, (task_id, tie, plane, (i, j)) in enumerate(jobs):
        group = ctx.out.create_group(f"maps/{m:03d}")
        group.attrs["upstream_task_id"] = task_id
        group.attrs["prompt_key"] = tie.key
        group.attrs["plane"] = list(plane)
        group.attrs["directions"] = [i + 1, j + 1]
        compute_map(ctx, params, tie, tie.directions[i], tie.directions[j], e, e, group, bar)
        group.create_dataset("sigma", data=[tie.sigma[i], tie.sigma[j]])
    bar.update(bar.total - bar.done)


def describe(ctx: RunContext, params: Params, out: CheckedGroup) -> None:
    """Attrs that say how every value was computed (settings that change rounding)."""
    from toolkit.numerics import grid

    out.attrs["mode"] = params.mode
    out.attrs["arithmetic"] = params.arithmetic
    out.attrs["arithmetic_description"] = grid.ARITHMETIC[params.arithmetic]
    out.attrs["axis_formula"] = grid.AXIS_FORMULA
    out.attrs["reference_path"] = grid.POINT_PATH
    out.attrs["evaluation_path"] = (
        "per map, attr evaluation_path: the first of these whose bitwise check passes: "
        f"{grid.SHARED_HEAD_PATH} | {grid.SHARED_PATH} | {grid.FAITHFUL_PATH} | one point at a time"
        if params.mode == "faithful"
        else f"per map, attr evaluation_path: {grid.FAST_HEAD_PATH} | where the bounded head is not usable or "
        f"its blocks differ: {grid.FAST_PATH}"
    )
    out.attrs["gap"] = "float64(logit[a]) - float64(logit[b]) of the native-dtype logits (exact)"
    out.attrs["dtype"] = ctx.numerics.dtype
    out.attrs["attn_implementation"] = ctx.numerics.attn_implementation
    out.attrs["dedup"] = bool(params.dedup)
    out.attrs["batch_size_requested"] = params.batch_size


def compute_map(
    ctx: RunContext,
    params: Params,
    tie: TiePoint,
    v1: Any,
    v2: Any,
    e1: Any,
    e2: Any,
    group: CheckedGroup,
    bar: Progress,
) -> None:
    """Evaluate one plane's grid and write its datasets and per-map attrs into `group`."""
    import json

    import numpy as np
    import torch

    from toolkit.numerics import grid

    dtype = next(ctx.model.parameters()).dtype
    embeds = torch.from_numpy(np.asarray(tie.embeds)).to(dtype)
    x0 = torch.from_numpy(np.asarray(tie.x0)).to(dtype)
    if not torch.equal(embeds[-1], x0) or not np.array_equal(x0.double().numpy(), tie.x0):
        raise UpstreamError(
            f"prompt group {tie.key}: x0 is not exactly representable in {dtype} or is not the last "
            "row of embeds; run exp6 with the same dtype"
        )
    prefix = embeds[:-1].unsqueeze(0).to(ctx.device)
    with torch.no_grad():
        own = ctx.model.get_input_embeddings()(torch.as_tensor(tie.prompt_ids[:-1], device=ctx.device))
    points = grid.form_points(x0, v1, v2, e1, e2, params.arithmetic)
    result = grid.run_grid(
        ctx.model,
        prefix,
        points,
        tie.pair,
        params.mode,
        params.batch_size,
        params.check_sample,
        params.dedup,
        params.agreement_sample,
        params.seed,
        bar.update,
    )
    shape = (len(e1), len(e2))
    data = {
        "gap": result.gap.reshape(shape),
        "argmax": result.argmax.reshape(shape),
        "logits_ab": result.logits_ab.reshape(*shape, 2),
        "distinct": result.distinct.reshape(shape),
        "e1": e1,
        "e2": e2,
        "x0": np.asarray(tie.x0, dtype=np.float64),
        "v1": np.asarray(v1, np.float64),
        "v2": np.asarray(v2, np.float64),
        "embeds": np.asarray(tie.embeds, np.float64),
        "prompt_ids": np.asarray(tie.prompt_ids, np.int64),
        "pair": np.asarray(tie.pair, np.int64),
    }
    for name, value in data.items():
        group.create_dataset(name, data=value)
    group.attrs["pair_tokens"] = json.dumps([ctx.tokenizer.decode([t]) for t in tie.pair]) if ctx.tokenizer else "[]"
    group.attrs["prefix_matches_model_embeddings"] = bool(torch.equal(own, prefix[0]))
    group.attrs["upstream_gap"] = tie.gap
    group.attrs["n_points"] = int(result.gap.size)
    group.attrs["n_distinct_inputs"] = result.n_distinct
    group.attrs["batch_size_used"] = result.batch_size
    group.attrs["evaluation_path"] = result.path
    if result.check is not None:
        group.attrs["batch_check"] = json.dumps(vars(result.check))
    centre = [np.flatnonzero(e1 == 0), np.flatnonzero(e2 == 0)]
    if centre[0].size and centre[1].size:
        value = float(data["gap"][centre[0][0], centre[1][0]])
        group.attrs["centre_gap"] = value
        group.attrs["centre_gap_equals_upstream"] = bool(value == tie.gap)
    if result.agreement is not None:
        _write_agreement(group, result)


def _write_agreement(group: CheckedGroup, result: Any) -> None:
    import numpy as np

    agreement = result.agreement
    sub = group.create_group("agreement")
    ids, first = np.unique(result.distinct, return_index=True)  # first grid point with each distinct input
    first = first[np.argsort(ids)].astype(np.int64)
    sub.create_dataset("point_index", data=first[agreement["distinct_index"]])
    for name in ("distinct_index", "faithful_gap", "fast_gap"):
        sub.create_dataset(name, data=agreement[name])
    sub.attrs["faithful_path"] = agreement["faithful_path"]  # how faithful_gap was computed (bitwise per point)
    for name in ("sign_agreement", "max_abs_gap_diff", "bitwise_equal"):
        sub.attrs[name] = agreement[name]
        group.attrs[f"agreement_{name}"] = agreement[name]
