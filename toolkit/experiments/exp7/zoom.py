"""exp7.zoom — a coordinate window of stored exp7.heatmap maps, as a figure and optionally recomputed.

Reads exp7.heatmap (same target and dtype).  For each selected map (`maps`, empty = all) it:

1. records which stored grid values fall inside the window e1_min..e1_max × e2_min..e2_max
   (inclusive) and draws that part of the stored map (no new resolution; upstream's zoom snapped
   requests to the nearest index and silently clamped them to the grid edge — here a window with
   no stored value is an error that shows the grid's span);
2. with `recompute_steps` = n > 0, evaluates a new n×n grid spanning the window exactly, with the
   same x0, directions, pair, arithmetic and mode as the heatmap (`toolkit.numerics.grid`), and
   stores it under `maps/<m>/` in the heatmap's layout (so exp7.randomness reads it too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.errors import UpstreamError
from toolkit.experiments.exp7.figures import plot_zoom as plot  # noqa: F401 (re-export for the registry)

if TYPE_CHECKING:
    from toolkit.context import RunContext, RunView
    from toolkit.experiments.exp7 import heatmap

PER_TARGET = True
NEEDS_MODEL = True
READS: tuple[str, ...] = ("exp7.heatmap",)
READS_PROMPTS = False
NEEDS_EAGER_ATTENTION = False
UPSTREAM_MATCH = ("target", "dtype")  # heatmap runs of its target and dtype
STORES = {
    "views/<m> attrs": "source_task_id, source_map, window, e1_index / e2_index [first, last] inside the window",
    "maps/<m>/...": "recompute_steps > 0: the recomputed grid, same datasets and attrs as exp7.heatmap maps",
}


@dataclass(frozen=True)
class Params:
    """The window (inclusive bounds), which upstream maps (0-based indices, empty = all), and the points
    per axis of a recomputed grid inside the window (0 = figure of the stored values only)."""

    e1_min: float = -2e-9
    e1_max: float = 2e-9
    e2_min: float = -2e-9
    e2_max: float = 2e-9
    recompute_steps: int = 0
    maps: tuple[int, ...] = ()

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if not self.e1_max >= self.e1_min:
            problems.append(("e1_max", f"must be >= e1_min ({self.e1_min}), got {self.e1_max}"))
        if not self.e2_max >= self.e2_min:
            problems.append(("e2_max", f"must be >= e2_min ({self.e2_min}), got {self.e2_max}"))
        if not 0 <= self.recompute_steps <= 4001:
            problems.append(("recompute_steps", f"must be between 0 and 4001, got {self.recompute_steps}"))
        if any(m < 0 for m in self.maps):
            problems.append(("maps", f"indices must be >= 0, got {list(self.maps)}"))
        return problems


def window_indices(values: Any, lo: float, hi: float, what: str) -> tuple[int, int]:
    """(first, last) index of the stored values inside [lo, hi]; UpstreamError naming the span if none.

    A value within 1e-6 of a grid step outside a bound counts as inside (the grid formula may put
    a value meant to be 4e-8 one float64 ULP away from the literal 4e-8).
    """
    import numpy as np

    slack = 1e-6 * abs(float(values[1] - values[0])) if len(values) > 1 else 0.0
    inside = np.flatnonzero((values >= lo - slack) & (values <= hi + slack))
    if not inside.size:
        raise UpstreamError(
            f"window {what} = [{lo:.6g}, {hi:.6g}] holds no stored grid value; the grid spans "
            f"[{values[0]:.6g}, {values[-1]:.6g}] in steps of "
            f"{(values[1] - values[0]) if len(values) > 1 else 0:.3g}"
        )
    return int(inside[0]), int(inside[-1])


def run(ctx: RunContext, params: Params) -> None:
    """Windows of the selected maps; recomputed grids when recompute_steps > 0."""
    import json

    from toolkit.experiments.exp7 import heatmap
    from toolkit.numerics import grid

    sources = []
    for up in heatmap.upstream_runs(ctx, "exp7.heatmap"):
        keys = sorted(up.group["maps"])
        wanted = params.maps or tuple(range(len(keys)))
        missing = [m for m in wanted if m >= len(keys)]
        if missing:
            raise UpstreamError(f"maps {missing} do not exist: heatmap run {up.task_id} stores {len(keys)} maps")
        sources += [(up, f"maps/{keys[m]}") for m in wanted]
    steps = params.recompute_steps
    bar = ctx.progress(len(sources) * (1 + steps * steps))
    for m, (up, path) in enumerate(sources):
        view = ctx.out.create_group(f"views/{m:03d}")
        view.attrs["source_task_id"] = up.task_id
        view.attrs["source_map"] = path
        view.attrs["window"] = [params.e1_min, params.e1_max, params.e2_min, params.e2_max]
        view.attrs["e1_index"] = list(window_indices(up[f"{path}/e1"], params.e1_min, params.e1_max, "e1"))
        view.attrs["e2_index"] = list(window_indices(up[f"{path}/e2"], params.e2_min, params.e2_max, "e2"))
        bar.update()
        if steps:
            source_params = _evaluation_params(up)
            heatmap.describe(ctx, source_params, ctx.out)
            group = ctx.out.create_group(f"maps/{m:03d}")
            for key in ("prompt_key", "plane", "directions", "upstream_task_id"):
                group.attrs[key] = up.group[path].attrs[key]
            group.attrs["zoom_of"] = json.dumps({"task_id": up.task_id, "map": path})
            e1 = grid.axis_n(params.e1_min, params.e1_max, steps)
            e2 = grid.axis_n(params.e2_min, params.e2_max, steps)
            heatmap.compute_map(
                ctx, source_params, _tie_of(up, path), up[f"{path}/v1"], up[f"{path}/v2"], e1, e2, group, bar
            )
            group.create_dataset("sigma", data=up[f"{path}/sigma"])
    bar.update(bar.total - bar.done)


def _evaluation_params(up: RunView) -> heatmap.Params:
    """The heatmap run's Params (mode, arithmetic, batch size, checks), read from its stored params."""
    from toolkit.experiments.exp7 import heatmap

    return up.params_as(heatmap.Params)


def _tie_of(up: RunView, path: str) -> Any:
    from toolkit.experiments.exp7.heatmap import TiePoint

    pair = up[f"{path}/pair"]
    return TiePoint(
        key=str(up.group[path].attrs["prompt_key"]),
        prompt_ids=up[f"{path}/prompt_ids"],
        embeds=up[f"{path}/embeds"],
        x0=up[f"{path}/x0"],
        pair=(int(pair[0]), int(pair[1])),
        gap=float(up.group[path].attrs["upstream_gap"]),
        sigma=up[f"{path}/sigma"],
        directions=None,
    )
