"""exp7.randomness — how irregular is each stored exp7 map?  (no model; all upstream maps at once)

For every map stored by exp7.heatmap (and every grid recomputed by exp7.zoom, same layout) it
computes, on the classes B = 1 where the model's argmax restricted to (a, b) picks a (exact ties:
the lower token id, as `torch.argmax` does) and on the gap G itself (`toolkit.numerics.spatial`,
definitions in docs/science_ii_exp7.md):

flip counts and ratio (with the i.i.d. reference 2p(1−p)), crossing density, connected regions
per class (4-connectivity), Moran's I with rook weights in O(n), mean local entropy over
`window`×`window` windows, the gradient magnitude of G per unit of e, and a permutation test of
Moran's I against `n_perm` seeded shuffles of the same classes (a test of spatial randomness,
not of class balance).  Upstream's six-indicator "randomness score" is not reproduced: its
chi-square tested only the 50/50 balance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.experiments.exp7.figures import plot_randomness as plot  # noqa: F401 (re-export for the registry)

if TYPE_CHECKING:
    from toolkit.context import RunContext, RunView

PER_TARGET = False
NEEDS_MODEL = False
READS: tuple[str, ...] = ("exp7.heatmap",)
READS_OPTIONAL: tuple[str, ...] = ("exp7.zoom",)  # read when an exp7.zoom id is in its needs
READS_PROMPTS = False
NEEDS_EAGER_ATTENTION = False
STORES = {
    "maps/<m>/classes": "[n1,n2] int8 1 where the model picks a over b",
    "maps/<m>/local_entropy": "[n1−w+1, n2−w+1] float64 binary entropy per valid window",
    "maps/<m>/gradient_magnitude": "[n1,n2] float64 |∇ gap| in logits per unit of e",
    "maps/<m>/gap / e1 / e2 / pair": "[n1,n2] / [n1] / [n2] / [2] copies of the source map's gap, grid and pair",
    "maps/<m>/moran_null": "[n_perm] float64 Moran's I of the shuffled maps",
    "maps/<m> attrs": "source_task_id, source_map, every scalar metric (see the module docstring)",
    "summary": "attr: one line per map",
}
METRICS = (
    "fraction_class1",
    "flip_ratio",
    "iid_flip_ratio",
    "crossing_density",
    "regions",
    "morans_i",
    "moran_p_two_sided",
    "moran_z",
    "mean_local_entropy",
    "mean_gradient",
    "max_gradient",
    "ties",
)


@dataclass(frozen=True)
class Params:
    """Local-entropy window size, permutation count and its seed."""

    window: int = 5
    n_perm: int = 999
    seed: int = 0

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if not 1 <= self.window <= 101:
            problems.append(("window", f"must be between 1 and 101, got {self.window}"))
        if not 0 <= self.n_perm <= 100_000:
            problems.append(("n_perm", f"must be between 0 and 100000, got {self.n_perm}"))
        if self.seed < 0:
            problems.append(("seed", f"must be >= 0, got {self.seed}"))
        return problems


def stored_maps(runs: list[Any]) -> list[tuple[Any, str]]:
    """(run, map path) of every grid with a `gap` under `maps/` in the given runs."""
    out = []
    for run in runs:
        if "maps" in run.group:
            out += [(run, f"maps/{key}") for key in sorted(run.group["maps"]) if f"maps/{key}/gap" in run]
    return out


def metrics(gap: Any, pair: Any, e1: Any, e2: Any, params: Params) -> tuple[dict[str, Any], dict[str, Any]]:
    """(scalar metrics, arrays) of one map."""
    import numpy as np

    from toolkit.experiments.exp7.figures import side_of
    from toolkit.numerics import spatial

    classes = side_of(gap, pair)
    flips = spatial.flips(classes)
    test = spatial.permutation_test(classes, params.n_perm, params.seed)
    entropy = spatial.local_entropy(classes, params.window)
    grad = spatial.gradient_magnitude(gap, e1, e2)
    scalars = {
        **flips,
        **spatial.fragmentation(classes),
        "morans_i": test["observed"],
        "moran_p_two_sided": test["p_two_sided"],
        "moran_p_greater": test["p_greater"],
        "moran_z": test["z_score"],
        "moran_null_mean": float(test["null"].mean()) if test["null"].size else float("nan"),
        "mean_local_entropy": float(entropy.mean()) if entropy.size else float("nan"),
        "mean_gradient": float(grad.mean()),
        "max_gradient": float(grad.max()),
        "ties": int((gap == 0).sum()),
        "cells": int(gap.size),
    }
    arrays = {
        "classes": classes,
        "local_entropy": entropy,
        "gradient_magnitude": grad,
        "moran_null": np.asarray(test["null"], dtype=np.float64),
    }
    return scalars, arrays


def run(ctx: RunContext, params: Params) -> None:
    """Metrics of every upstream map; see the module docstring."""
    from toolkit.errors import UpstreamError

    runs = ctx.inputs.matching(("exp7.heatmap", "exp7.zoom"))
    maps = stored_maps(runs)
    if not maps:
        raise UpstreamError(
            "exp7.randomness found no stored map in its exp7.heatmap / exp7.zoom runs; list the id "
            "of an exp7.heatmap (or exp7.zoom with recompute_steps > 0) entry under this entry's "
            "`needs`"
        )
    bar = ctx.progress(len(maps))
    lines = []
    ctx.out.attrs["classes"] = "1 where the model's argmax restricted to (a, b) picks a (ties: lower id)"
    ctx.out.attrs["window"] = params.window
    ctx.out.attrs["n_perm"] = params.n_perm
    for m, (source, path) in enumerate(maps):
        scalars, arrays = metrics(
            source[f"{path}/gap"], source[f"{path}/pair"], source[f"{path}/e1"], source[f"{path}/e2"], params
        )
        group = ctx.out.create_group(f"maps/{m:03d}")
        group.attrs["source_task_id"] = source.task_id
        group.attrs["source_experiment"] = source.experiment
        group.attrs["source_map"] = path
        group.attrs["source_label"] = _source_label(source, path)
        for key, value in scalars.items():
            group.attrs[key] = value
        for key, value in arrays.items():
            group.create_dataset(key, data=value)
        for key in ("gap", "e1", "e2", "pair"):
            group.create_dataset(key, data=source[f"{path}/{key}"])
        group.attrs["pair_tokens"] = source.group[path].attrs.get("pair_tokens", "[]")
        group.attrs["directions"] = source.group[path].attrs.get("directions", [1, 2])
        lines.append(f"{m:03d} {group.attrs['source_label']}: " + ", ".join(f"{k}={_fmt(scalars[k])}" for k in METRICS))
        bar.update()
    ctx.out.attrs["summary"] = "\n".join(lines)


def _source_label(run: RunView, path: str) -> str:
    attrs = run.group[path].attrs
    dirs = [int(d) for d in attrs.get("directions", [])]
    return f"{run.experiment} {run.task_id} {path} prompt {attrs.get('prompt_key', '?')} plane v{dirs}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
