"""exp4.divergence — what decided each divergence: margins, tie distance and logit change at row d.

Reads the stored exp4.generate traces (no model).  For every unordered pair of runs (i < j) and
every prompt, d is the first step whose greedy token ids differ.  Contexts 0..d are identical on
both sides, so row d is the step computed from identical inputs whose argmax differs (the upstream
scripts analysed d−1, a step where both agreed).  At row d, with t_i and t_j the two tokens chosen:

* `margin_top`          [.., 2]  top-1 − top-2 logit of each side (from exp4.generate's `margin`);
* `margin_contested`    [.., 2]  z(t_own) − z(t_other) on each side (≥ 0; NaN when t_other is not in
                                 that side's stored top-k);
* `tie_ulps`            [.., 2]  margin_top in ULPs of the top-1 logit in that run's logits dtype
                                 (1 = the nearest non-tie; 0 = an exact tie broken by the lowest id);
* `logit_change`        [.., 2]  z_j(t) − z_i(t) for t = t_i, t_j (cross-run change of each deciding logit);
* `logit_change_ulps`   [.., 2]  the same as float32 ULP distances of the stored exact copies;
* `contested_change`    [..]     |(z_i(t_i) − z_i(t_j)) − (z_j(t_i) − z_j(t_j))|: how much the decisive
                                 difference moved between the runs (a flip needs it ≥ margin).

Pairs that never diverge within their common length keep d = −1 and NaN measures.  For context
the same margin / cross-run change is stored for every agreeing step 0..d−1 (`background/`), using
side i's top-2 tokens.  Logit values come from exp4.generate's exact fp32 copies of native logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.experiments.exp4.figures import plot_divergence as plot  # noqa: F401 (re-export for the registry)

if TYPE_CHECKING:
    from toolkit.context import RunContext

PER_TARGET = False
NEEDS_MODEL = False
READS: tuple[str, ...] = ("exp4.generate",)
READS_PROMPTS = False
NEEDS_EAGER_ATTENTION = False
UPSTREAM_MIN_RUNS = 2  # pairs of runs
DIMS = {"2": "side"}  # names of the STORES letters (toolkit.store.dims): run i, run j
STORES = {
    "run_task_ids / run_labels / run_dtypes": "[N] the exp4.generate runs, in order",
    "pairs": "[Q,2] int32 run indices (i < j) of each pair",
    "divergence_step": "[Q,P] int32 first differing step d (-1: never within the common length)",
    "common_length": "[Q,P] int32 steps both runs generated",
    "tokens": "[Q,P,2] int64 t_i, t_j at row d (-1: none)",
    "margin_top / margin_contested / tie_ulps": "[Q,P,2] float64 per side at row d (see docstring)",
    "logit_change / logit_change_ulps": "[Q,P,2] float64 / int64 z_j(t) − z_i(t) for t = t_i, t_j",
    "contested_change": "[Q,P] float64 cross-run change of z(t_i) − z(t_j)",
    "background/margin, background/change": "[B] float64 side-i margin and |cross-run change| at agreeing steps",
}


@dataclass(frozen=True)
class Params:
    """No parameters: every pair of upstream runs and every prompt is analysed."""


def run(ctx: RunContext, params: Params) -> None:
    """Analyse every divergence of every pair of exp4.generate runs (see the module docstring)."""
    import numpy as np

    from toolkit.experiments.exp4.upstream import check_prompt_count, load_traces

    runs = ctx.inputs.matching("exp4.generate", min_runs=2)
    traces = [load_traces(r) for r in runs]
    p = check_prompt_count(traces)
    dtypes = [str(r.numerics.get("dtype", "float32")) for r in runs]
    pairs = [(i, j) for i in range(len(runs)) for j in range(i + 1, len(runs))]
    tables = _empty_tables(len(pairs), p)
    background: dict[str, list[float]] = {"margin": [], "change": []}
    bar = ctx.progress(len(pairs) * p)
    for q, (i, j) in enumerate(pairs):
        for k in range(p):
            row = analyse_pair(traces[i][k], traces[j][k], dtypes[i], dtypes[j], background)
            for name, value in row.items():
                tables[name][q, k] = value
            bar.update()
    out = ctx.out
    out.create_dataset("run_task_ids", data=np.array([r.task_id for r in runs], dtype="S"))
    out.create_dataset("run_labels", data=np.array([r.label() for r in runs], dtype="S"))
    out.create_dataset("run_dtypes", data=np.array(dtypes, dtype="S"))
    out.create_dataset("pairs", data=np.array(pairs, dtype=np.int32).reshape(-1, 2))
    for name, table in tables.items():
        out.create_dataset(name, data=table)
    for name, values in background.items():
        out.create_dataset(f"background/{name}", data=np.asarray(values, dtype=np.float64))
    out.attrs["row_analysed"] = "d (identical context, argmax differs); upstream used d-1"
    out.attrs["ulp_format"] = "logit_change_ulps: float32 ULPs of exact fp32 copies; tie_ulps: run's logits dtype"
    out.attrs["summary"] = summary(tables, [r.label() for r in runs], pairs)


def _empty_tables(q: int, p: int) -> dict[str, Any]:
    import numpy as np

    return {
        "divergence_step": np.full((q, p), -1, np.int32),
        "common_length": np.zeros((q, p), np.int32),
        "tokens": np.full((q, p, 2), -1, np.int64),
        "margin_top": np.full((q, p, 2), np.nan),
        "margin_contested": np.full((q, p, 2), np.nan),
        "tie_ulps": np.full((q, p, 2), np.nan),
        "logit_change": np.full((q, p, 2), np.nan),
        "logit_change_ulps": np.full((q, p, 2), -1, np.int64),
        "contested_change": np.full((q, p), np.nan),
    }


def analyse_pair(
    a: dict[str, Any], b: dict[str, Any], dtype_a: str, dtype_b: str, background: dict[str, list[float]] | None = None
) -> dict[str, Any]:
    """The measures of one prompt for runs a, b (module docstring); appends agreeing steps to `background`."""
    import numpy as np

    from toolkit.numerics.fpunits import ulp_distance
    from toolkit.numerics.greedy import first_difference
    from toolkit.numerics.margins import contested_margin, logit_of, margin_in_ulps

    ga, gb = a["generated_ids"].tolist(), b["generated_ids"].tolist()
    common = min(len(ga), len(gb))
    d = first_difference(ga[:common], gb[:common])
    if background is not None:
        for step in range(common if d < 0 else d):
            top2 = a["topk_ids"][step][:2]
            change = contested_margin(
                a["topk_ids"][step], a["topk_logits"][step], int(top2[0]), int(top2[1])
            ) - contested_margin(b["topk_ids"][step], b["topk_logits"][step], int(top2[0]), int(top2[1]))
            background["margin"].append(float(a["margin"][step]))
            background["change"].append(abs(change))
    out: dict[str, Any] = {"divergence_step": d, "common_length": common}
    if d < 0:
        return out
    ta, tb = ga[d], gb[d]
    za = [logit_of(a["topk_ids"][d], a["topk_logits"][d], t) for t in (ta, tb)]
    zb = [logit_of(b["topk_ids"][d], b["topk_logits"][d], t) for t in (ta, tb)]
    ulps = [
        int(ulp_distance(np.float32(x), np.float32(y))) if np.isfinite(x) and np.isfinite(y) else -1
        for x, y in zip(za, zb)
    ]
    out.update(
        {
            "tokens": (ta, tb),
            "margin_top": (a["margin"][d], b["margin"][d]),
            "margin_contested": (za[0] - za[1], zb[1] - zb[0]),
            "tie_ulps": (
                float(margin_in_ulps(a["margin"][d], a["topk_logits"][d][0], dtype_a)),
                float(margin_in_ulps(b["margin"][d], b["topk_logits"][d][0], dtype_b)),
            ),
            "logit_change": (zb[0] - za[0], zb[1] - za[1]),
            "logit_change_ulps": tuple(ulps),
            "contested_change": abs((za[0] - za[1]) - (zb[0] - zb[1])),
        }
    )
    return out


def summary(tables: dict[str, Any], labels: list[str], pairs: list[tuple[int, int]]) -> str:
    """One line per pair: prompts diverged, steps, median margins and tie distances at d."""
    import numpy as np

    lines = []
    for q, (i, j) in enumerate(pairs):
        d = tables["divergence_step"][q]
        hit = d >= 0
        head = f"{labels[i]} vs {labels[j]}: {int(hit.sum())}/{d.size} prompts diverged"
        if hit.any():
            margins = tables["margin_top"][q][hit]
            ties = tables["tie_ulps"][q][hit]
            head += (
                f" at steps {sorted(int(x) for x in d[hit])}; margin at d median {np.nanmedian(margins[:, 0]):.3g}"
                f" / {np.nanmedian(margins[:, 1]):.3g} (run i / run j), i.e. {np.nanmedian(ties[:, 0]):.3g} / "
                f"{np.nanmedian(ties[:, 1]):.3g} ULPs of the top-1 logit in each run's dtype"
            )
        lines.append(head)
    return "\n".join(lines)
