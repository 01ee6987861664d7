"""exp6.token_flip — scan ε along the stored Jacobian directions at a certified tie x0; where does the argmax flip?

Reads exp6.equal_logits runs of the same target and numerics (the manifest's `needs`): per prompt
the certified tie x0, the pair (a, b), the stored argmax, and the right singular vectors v_i of J
at x0 — read from the store, never recomputed.  For each selected direction and each ε of a
symmetric grid (uniform steps ±k·eps_max/n_steps plus n_log log-spaced |ε| per side from the ULP
scale of x0 up to eps_max, and ε = 0), the input is x = perturb(x0, v_i, ε, perturb_mode)
(`toolkit.numerics.perturb`, rounding stated and recorded) and the model's forward on the shared
path (`forward_states`: full recompute, batch 1) gives the argmax and the gap logit[a] − logit[b].

Per direction: the nearest flip (smallest |ε| whose argmax differs from the argmax at x0; every
smaller |ε| keeps it, so the grid neighbour towards 0 brackets it), every position where the
model's choice between a and b changes between consecutive ε, and the flip density (those changes
per unit ε on the uniform sub-grid only, so the log-spaced points do not bias it).

Faithful deduplication (`dedup`, default on): below about ulp(x0_j)/|v_ij| a coordinate does not
move, so many ε give bit-identical inputs; the forward is a deterministic function of the input
bits on one code path, so a repeated input reuses the stored result.  This is checked at run time
(one duplicate is recomputed and compared bit for bit; the baseline at x0 is compared with the
upstream certificate) and both checks are stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from toolkit.experiments.exp6.figures import plot_token_flip as plot  # noqa: F401 (re-export for the registry)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from toolkit.context import CheckedGroup, RunContext, RunView
    from toolkit.progress import Progress

PER_TARGET = True
NEEDS_MODEL = True
READS: tuple[str, ...] = ("exp6.equal_logits",)
READS_PROMPTS = False
NEEDS_EAGER_ATTENTION = False
UPSTREAM_MATCH = ("target", "numerics")  # equal_logits runs of its target and numerics
STORES = {
    "sources/<upstream task id>/prompts/<kkk>/eps": "[E] float64 the ε grid (ascending, contains 0)",
    ".../directions": "[K] int64 1-based indices of the stored right singular vectors used",
    ".../argmax": "[K,E] int64 torch.argmax of the logits at x0 + ε·v_i (rounded as perturb_mode)",
    ".../gap": "[K,E] float64 logit[a] − logit[b] of the upstream pair (native values, exact difference)",
    ".../n_changed": "[K,E] int64 coordinates of x that changed",
    ".../nearest_flip_eps": "[K] float64 signed ε of the smallest |ε| with argmax != argmax at x0 (NaN: none; "
    "the negative one when ±ε both flip)",
    ".../nearest_flip_bracket": "[K,2] float64 (grid ε next towards 0, nearest flip ε)",
    ".../nearest_flip_token": "[K] int64 argmax at the nearest flip (-1: none)",
    ".../flip_positions": "[F,3] float64 (direction index 0-based, ε left, ε right) where the a/b choice changes",
    ".../n_flips / n_argmax_changes / flip_density": "[K] a/b choice changes, argmax changes, changes per unit ε",
    ".../pair": "[2] int64 (a, b), the upstream tied pair",
    ".../sigma": "[K] float64 σ_i of the chosen directions (upstream values)",
    ".../argmax_x0 / logit_ulp_x0": "scalars: torch.argmax at x0; one ULP of the pair's logits at x0",
}


@dataclass(frozen=True)
class Params:
    """Grid: ±k·eps_max/n_steps (k = 0..n_steps) plus n_log log-spaced |ε| per side from eps_min (0: the
    ULP scale of x0, min_j ulp(x0_j)/(2 max_i |v_ij|)) to eps_max; directions: 1-based indices of the
    stored vectors (empty: all); perturb_mode as toolkit.numerics.perturb; dedup reuses the forward of
    bit-identical inputs (checked)."""

    eps_max: float = 1e-6
    n_steps: int = 50
    n_log: int = 20
    eps_min: float = 0.0
    directions: tuple[int, ...] = ()
    perturb_mode: Literal["fp64_then_round", "model_dtype"] = "fp64_then_round"
    dedup: bool = True

    def check(self) -> list[tuple[str, str]]:
        from toolkit.experiments.checks import above, between

        problems: list[tuple[str, str]] = []
        above(problems, "eps_max", self.eps_max)
        between(problems, "n_steps", self.n_steps, 1, 100_000)
        between(problems, "n_log", self.n_log, 0, 10_000)
        if not 0 <= self.eps_min < self.eps_max:
            problems.append(("eps_min", f"must be >= 0 (0: the ULP scale of x0) and < eps_max, got {self.eps_min}"))
        bad = [d for d in self.directions if d < 1]
        if bad:
            problems.append(("directions", f"are 1-based indices of stored directions (>= 1), got {bad}"))
        if len(set(self.directions)) != len(self.directions):
            problems.append(("directions", "must be distinct"))
        return problems


def run(ctx: RunContext, params: Params) -> None:
    """Scan every prompt of every matching upstream run; see the module docstring."""
    import json

    from toolkit.numerics.session import model_arithmetic

    runs = ctx.inputs.matching("exp6.equal_logits", target=ctx.task.target, numerics=ctx.numerics)
    prompts = [(run, key) for run in runs for key in sorted(run.group["prompts"])]
    grid_points = 2 * params.n_steps + 2 * params.n_log + 1
    total = sum(_n_directions(run, key, params) * grid_points for run, key in prompts)
    bar = ctx.progress(total)
    out = ctx.out
    out.attrs["perturb_mode"] = params.perturb_mode
    out.attrs["dedup"] = bool(params.dedup)
    out.attrs["dtype"] = ctx.numerics.dtype
    out.attrs["attn_implementation"] = ctx.numerics.attn_implementation
    out.attrs["forward_path"] = "toolkit.numerics.embedding_forward.forward_states: full recompute, batch 1"
    out.attrs["upstream_task_ids"] = json.dumps([r.task_id for r in runs])
    use_true_fp64 = ctx.numerics.dtype == "float64" and any(bool(r.attrs.get("true_fp64", False)) for r in runs)
    with model_arithmetic(ctx, use_true_fp64):
        for run, key in prompts:
            group = out.create_group(f"sources/{run.task_id}/prompts/{key}")
            _one_prompt(ctx, params, run, key, group, bar)
    bar.update(bar.total - bar.done)


def _n_directions(run: RunView, key: str, params: Params) -> int:
    return len(params.directions) or int(run.group[f"prompts/{key}/right_vectors"].shape[0])


def eps_grid(eps_max: float, n_steps: int, n_log: int, eps_floor: float) -> Any:
    """Sorted unique float64 grid: uniform ±k·eps_max/n_steps, n_log log-spaced |ε| per side, and 0."""
    import numpy as np

    uniform = eps_max * np.arange(-n_steps, n_steps + 1, dtype=np.float64) / n_steps
    logs = np.geomspace(eps_floor, eps_max, n_log) if n_log else np.zeros(0)
    return np.unique(np.concatenate([uniform, logs, -logs, [0.0]]))


def eps_floor(x0: Any, directions: Any) -> float:
    """The ULP scale of x0 along `directions`: min_j ulp(x0_j) / (2·max_i |v_ij|), a |ε| below which
    (with fp64_then_round) no coordinate of x0 can move."""
    import numpy as np

    from toolkit.numerics.fpunits import spacing as spacing_of

    spacing = spacing_of(x0)
    reach = np.abs(directions).max(axis=0)
    with np.errstate(divide="ignore"):
        ratio = np.where(reach > 0, spacing / (2 * reach), np.inf)
    return float(ratio.min())


def _one_prompt(ctx: RunContext, params: Params, run: RunView, key: str, group: CheckedGroup, bar: Progress) -> None:
    import numpy as np
    import torch

    from toolkit.numerics.embedding_forward import forward_states, prompt_embeddings

    base = f"prompts/{key}"
    dtype = next(ctx.model.parameters()).dtype
    ids = torch.from_numpy(run[f"{base}/prompt_ids"]).to(ctx.device)[None]
    x0 = torch.from_numpy(run[f"{base}/x0"]).to(device=ctx.device, dtype=dtype)
    stored = run[f"{base}/right_vectors"]
    chosen = list(params.directions) or list(range(1, stored.shape[0] + 1))
    if max(chosen) > stored.shape[0]:
        raise ValueError(
            f"directions {chosen} ask for more than the {stored.shape[0]} stored in {run.task_id}; "
            f"raise n_directions of exp6.equal_logits or choose indices <= {stored.shape[0]}"
        )
    vectors = stored[np.array(chosen) - 1]
    stored_pair = run[f"{base}/pair"]
    pair = (int(stored_pair[0]), int(stored_pair[1]))
    floor = params.eps_min or eps_floor(x0, vectors)
    eps = eps_grid(params.eps_max, params.n_steps, params.n_log, min(floor, params.eps_max / 10))
    prefix = prompt_embeddings(ctx.model, ids)[0, :-1].double().cpu().numpy()
    baseline = forward_states(ctx.model, ids, x0).logits
    evaluator = _Evaluator(ctx.model, ids, pair, params.dedup)
    table = {
        name: np.zeros((len(chosen), len(eps)), dtype=kind)
        for name, kind in (("argmax", np.int64), ("gap", np.float64), ("n_changed", np.int64), ("side", np.int8))
    }
    for i, vector in enumerate(torch.from_numpy(vectors)):
        for j, step in enumerate(eps):
            point = _perturbed(x0, vector, float(step), params.perturb_mode)
            table["argmax"][i, j], table["gap"][i, j], table["side"][i, j] = evaluator(point[0])
            table["n_changed"][i, j] = point[1]
            bar.update()
    stats = flip_statistics(eps, table["argmax"], table["side"], params.eps_max, params.n_steps)
    group.attrs["dedup_check"] = evaluator.verify()
    group.attrs["unique_inputs"] = len(evaluator.cache) if params.dedup else int(table["argmax"].size)
    group.attrs["forwards_saved"] = evaluator.hits
    group.attrs["x0_roundtrip_exact"] = bool(np.array_equal(x0.double().cpu().numpy(), run[f"{base}/x0"]))
    group.attrs["prefix_matches_upstream"] = bool(np.array_equal(prefix, run[f"{base}/embeds"][:-1]))
    group.attrs["baseline_reproduced"] = bool(
        np.array_equal(baseline[list(pair)].double().cpu().numpy(), run[f"{base}/logits_ab"])
        and int(torch.argmax(baseline)) == int(run[f"{base}/argmax"])
    )
    group.attrs["eps_floor"] = floor
    group.attrs["upstream_task_id"] = run.task_id
    group.attrs["upstream_method"] = str(run.attrs.get("method", ""))
    group.attrs["prompt"] = run.group[base].attrs.get("prompt", "")
    data = {
        "eps": eps,
        "directions": np.array(chosen, dtype=np.int64),
        "pair": np.array(pair, dtype=np.int64),
        "sigma": run[f"{base}/sigma"][np.array(chosen) - 1],
        "argmax_x0": np.int64(torch.argmax(baseline)),
        "logit_ulp_x0": np.float64(_logit_ulp(baseline, pair)),
        "argmax": table["argmax"],
        "gap": table["gap"],
        "n_changed": table["n_changed"],
        **stats,
    }
    for name, value in data.items():
        group.create_dataset(name, data=value)


def _logit_ulp(logits: Any, pair: tuple[int, int]) -> float:
    from toolkit.numerics.fpunits import ulp

    return ulp(max(abs(float(logits[pair[0]])), abs(float(logits[pair[1]]))), logits.dtype)


def _perturbed(x0: Any, vector: Any, step: float, mode: str) -> tuple[Any, int]:
    """(x in the model dtype, number of changed coordinates); ε = 0 gives x0 itself."""
    from toolkit.numerics.perturb import perturb

    if step == 0.0:
        return x0, 0
    p = perturb(x0, vector.to(x0.device), step, mode)
    return p.x_tilde, p.n_changed


class _Evaluator:
    """argmax, gap and a/b side at an input, with exact reuse of bit-identical inputs."""

    def __init__(self, model: PreTrainedModel, ids: Any, pair: tuple[int, int], dedup: bool) -> None:
        self.model, self.ids, self.pair, self.dedup = model, ids, pair, dedup
        self.cache: dict[bytes, tuple[int, float, int]] = {}
        self.hits = 0
        self.duplicate: tuple[Any, tuple[int, float, int]] | None = None

    def _forward(self, x: Any) -> tuple[int, float, int]:
        import torch

        from toolkit.numerics.embedding_forward import forward_states
        from toolkit.numerics.tie import gap, side

        logits = forward_states(self.model, self.ids, x).logits
        return int(torch.argmax(logits)), gap(logits, *self.pair), side(logits, *self.pair)

    def __call__(self, x: Any) -> tuple[int, float, int]:
        from toolkit.numerics.fpunits import exact_bytes

        if not self.dedup:
            return self._forward(x)
        key = exact_bytes(x)
        if key in self.cache:
            self.hits += 1
            if self.duplicate is None:
                self.duplicate = (x.clone(), self.cache[key])
            return self.cache[key]
        self.cache[key] = self._forward(x)
        return self.cache[key]

    def verify(self) -> str:
        """Recompute one reused input and compare bit for bit (raises if the forward is not deterministic)."""
        import math

        if not self.dedup:
            return "dedup off"
        if self.duplicate is None:
            return "no duplicate inputs"
        x, expected = self.duplicate
        again = self._forward(x)
        same = (
            again[0] == expected[0]
            and again[2] == expected[2]
            and (again[1] == expected[1] or (math.isnan(again[1]) and math.isnan(expected[1])))
        )
        if not same:
            raise RuntimeError(
                "a recomputed input gave a different result than its first evaluation: the forward "
                "is not deterministic here, so deduplication is not faithful; set dedup: false"
            )
        return "passed: one duplicate recomputed, bitwise equal"


def flip_statistics(eps: Any, argmax: Any, side: Any, eps_max: float, n_steps: int) -> dict[str, Any]:
    """Nearest flip, flip positions and densities per direction (see the module docstring)."""
    import numpy as np

    k = argmax.shape[0]
    zero = int(np.nonzero(eps == 0.0)[0][0])
    uniform = np.isclose(eps * n_steps / eps_max, np.round(eps * n_steps / eps_max), rtol=0, atol=1e-9)
    nearest = np.full(k, np.nan)
    bracket = np.full((k, 2), np.nan)
    token = np.full(k, -1, dtype=np.int64)
    positions: list[tuple[float, float, float]] = []
    n_flips, n_changes, density = np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k)
    for i in range(k):
        differs = np.nonzero(argmax[i] != argmax[i, zero])[0]
        if differs.size:
            at = differs[np.argmin(np.abs(eps[differs]))]
            inner = at - 1 if eps[at] > 0 else at + 1
            nearest[i], bracket[i], token[i] = eps[at], (eps[inner], eps[at]), argmax[i, at]
        change = np.nonzero(side[i, 1:] != side[i, :-1])[0]
        positions += [(float(i), float(eps[j]), float(eps[j + 1])) for j in change]
        n_flips[i] = change.size
        n_changes[i] = int(np.count_nonzero(argmax[i, 1:] != argmax[i, :-1]))
        sub = side[i, uniform]
        density[i] = np.count_nonzero(sub[1:] != sub[:-1]) / (2 * eps_max)
    return {
        "nearest_flip_eps": nearest,
        "nearest_flip_bracket": bracket,
        "nearest_flip_token": token,
        "flip_positions": np.array(positions, dtype=np.float64).reshape(-1, 3),
        "n_flips": n_flips,
        "n_argmax_changes": n_changes,
        "flip_density": density,
    }
