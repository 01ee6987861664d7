"""exp3.compare — the exp3.precision runs of a campaign side by side (one per dtype).

Reads every upstream exp3.precision run (typically one task per dtype of a `sweep: {dtype: ...}`),
checks that they share prompts and ε grid, and stores per prompt the regime, gain, deviation from
the linear prediction and number of changed input elements of direction v1 for every run, plus σ1
per run.  No model: it only reorganises stored results, so figures compare the dtypes directly.
Regimes are defined against each dtype's own linearisation (`toolkit.numerics.regimes`).  When a
float64 run is among the inputs, `relative_to_float64` = ‖Δf_d − Δf_64‖ / ‖Δf_64‖ says whether a
dtype's response to the same intended step reproduces the true-fp64 response (within the signal
tolerance it is marked in the figure) — this tells a low-precision curvature response (which
agrees) from rounding noise (which does not) where a dtype has no signal window of its own.
Caveats: each run's v1 and base point x are its own dtype's (weights and embedding rounded to it),
so agreement is limited to about that format's accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.experiments.exp3.figures import plot_compare as plot  # noqa: F401 (re-export for the registry)

if TYPE_CHECKING:
    from toolkit.context import CheckedGroup, RunContext

PER_TARGET = False
NEEDS_MODEL = False
READS: tuple[str, ...] = ("exp3.precision",)
READS_PROMPTS = False
NEEDS_EAGER_ATTENTION = False
STORES = {
    "run_task_ids / run_labels / dtypes": "[N] the compared exp3.precision runs, sorted by dtype precision",
    "prompts/<k>/eps": "[E] float64 the common ε grid",
    "prompts/<k>/sigma": "[N] float64 σ1 of each run",
    "prompts/<k>/regime": "[N,E] int8 regime of +v1 (names in attrs regime_names)",
    "prompts/<k>/gain / deviation": "[N,E] float64 as in exp3.precision, direction v1",
    "prompts/<k>/input_changed": "[N,E] int64 input elements changed by +ε·v1",
    "prompts/<k>/relative_to_float64": "[N,E] float64 ‖Δf − Δf_float64‖/‖Δf_float64‖ (NaN: no float64 run)",
}
DTYPE_ORDER = ("float16", "bfloat16", "float32", "float64")


@dataclass(frozen=True)
class Params:
    """No parameters: all upstream exp3.precision runs are compared."""


def run(ctx: RunContext, params: Params) -> None:
    """Collect direction-v1 results of every upstream run per prompt (see the module docstring)."""
    import json

    import numpy as np

    from toolkit.errors import UpstreamError

    runs = ctx.inputs.matching("exp3.precision")
    runs = sorted(runs, key=lambda r: (_rank(r.numerics.get("dtype", "")), r.label(), r.task_id))
    keys = sorted(runs[0].group["prompts"])
    for r in runs[1:]:
        if sorted(r.group["prompts"]) != keys or any(
            not np.array_equal(r[f"prompts/{k}/prompt_ids"], runs[0][f"prompts/{k}/prompt_ids"])
            or not np.array_equal(r[f"prompts/{k}/eps"], runs[0][f"prompts/{k}/eps"])
            for k in keys
        ):
            raise UpstreamError(
                f"run {r.task_id} ({r.label()}) has other prompts or another ε grid than "
                f"{runs[0].task_id}; compare exp3.precision runs of one manifest entry"
            )
    out = ctx.out
    out.create_dataset("run_task_ids", data=np.array([r.task_id for r in runs], dtype="S"))
    out.create_dataset("run_labels", data=np.array([r.label() for r in runs], dtype="S"))
    out.create_dataset("dtypes", data=np.array([r.numerics.get("dtype", "?") for r in runs], dtype="S"))
    out.attrs["regime_names"] = runs[0].attrs["regime_names"]
    out.attrs["signal_tol"] = json.dumps([float(r.attrs["signal_tol"]) for r in runs])
    for k in keys:
        group = out.create_group(f"prompts/{k}")
        group.create_dataset("eps", data=runs[0][f"prompts/{k}/eps"])
        group.create_dataset("sigma", data=np.array([r[f"prompts/{k}/sigma"][0] for r in runs]))
        for name in ("regime", "gain", "deviation"):
            group.create_dataset(name, data=np.stack([r[f"prompts/{k}/{name}"][0] for r in runs]))
        group.create_dataset("input_changed", data=np.stack([r[f"prompts/{k}/input_changed"][0] for r in runs]))
        group.create_dataset("relative_to_float64", data=_relative_to_fp64(runs, k))
    out.attrs["summary"] = summary(runs, out)


def _relative_to_fp64(runs: list[Any], key: str) -> Any:
    """[N, E] relative distance of each run's v1 response from the float64 run's (NaN without one)."""
    import numpy as np

    from toolkit.numerics.regimes import relative_deviation

    eps = runs[0][f"prompts/{key}/eps"]
    reference = [r for r in runs if r.numerics.get("dtype") == "float64"]
    if not reference:
        return np.full((len(runs), len(eps)), np.nan)
    exact = reference[0][f"prompts/{key}/final_delta"][0]
    return np.stack([relative_deviation(r[f"prompts/{key}/final_delta"][0], exact) for r in runs])


def _rank(dtype: str) -> int:
    return DTYPE_ORDER.index(dtype) if dtype in DTYPE_ORDER else len(DTYPE_ORDER)


def summary(runs: list[Any], out: CheckedGroup) -> str:
    """One line per run and prompt: the ε range of each regime."""
    import json

    import numpy as np

    names = json.loads(out.attrs["regime_names"])
    lines = []
    for k in sorted(out["prompts"]):
        eps, regime = out[f"prompts/{k}/eps"][()], out[f"prompts/{k}/regime"][()]
        for r, row in zip(runs, regime):
            parts = []
            for code in np.unique(row):
                hit = eps[row == code]
                parts.append(f"{names[int(code)]} {hit.min():.0e}..{hit.max():.0e}")
            lines.append(f"prompt {k} {r.numerics.get('dtype')}: " + "; ".join(parts))
    return "\n".join(lines)
