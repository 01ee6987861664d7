"""Figures of exp4.census, drawn from the store only (no model), one set per prompt.

- `census_unique_<task>_p<k>.png`: unique completions among the first n completions against n
  (the census's "unique completions of N", read at every N up to the stored count);
- `census_divergence_<task>_p<k>.png`: histogram of the first-divergence index from the modal
  completion (completions equal to it are counted in the title);
- `census_margins_<task>_p<k>.png`: the top-1 − top-2 margin at the divergence step against the
  margins of all steps (MarginGate's comparison), log-spaced bins shared by both.

Kept apart from `figures.py` (the rest of the exp4 family) so the census can change on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.experiments.figsave import pyplot, save_figure

if TYPE_CHECKING:
    from toolkit.context import RunView


# One line per figure name (figsave's naming rule): what is plotted and which colour is which;
# `toolkit report` prints it under the figure.
CAPTIONS: dict[str, str] = {
    "census_unique": (
        "Per prompt: unique completions among the first N completions against N (blue step line; flat "
        "where a new completion repeats one seen before)."
    ),
    "census_divergence": (
        "Per prompt: histogram (orange) of the step where each completion first differs from the modal "
        "completion; completions equal to it are counted in the title."
    ),
    "census_margins": (
        "Per prompt: density of the top-1 − top-2 logit margin over all steps (blue) and at the divergence "
        "step, both sides (orange), on shared log-spaced bins; exact ties (0, not drawn) counted in the title."
    ),
}


def plot_census(run: RunView, out_dir: Path) -> list[Path]:
    """The three census figures of every prompt of an exp4.census run."""
    paths = []
    for key in sorted(run.group["prompts"]):
        part = f"p{key}"
        paths += [
            _unique(run, key, out_dir, part),
            _divergence(run, key, out_dir, part),
            _margins(run, key, out_dir, part),
        ]
    return paths


def _completions(run: RunView, key: str) -> list[list[int]]:
    ids, lengths = run[f"prompts/{key}/completion_ids"], run[f"prompts/{key}/completion_length"]
    return [row[:n].tolist() for row, n in zip(ids, lengths)]


def _unique(run: RunView, key: str, out_dir: Path, part: str) -> Path:
    import numpy as np

    plt = pyplot()
    seen: set[tuple[int, ...]] = set()
    curve = []
    for completion in _completions(run, key):
        seen.add(tuple(completion))
        curve.append(len(seen))
    n = np.arange(1, len(curve) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(n, curve, where="post", lw=2)
    ax.set_xlabel("completions N")
    ax.set_ylabel("unique completions")
    ax.set_title(f"{curve[-1]} unique of {len(curve)} ({run.target}, {run.label()})", fontsize=9)
    return save_figure(fig, out_dir, "census_unique", run.task_id, part)


def _divergence(run: RunView, key: str, out_dir: Path, part: str) -> Path:
    import numpy as np

    plt = pyplot()
    d = run[f"prompts/{key}/first_divergence"]
    hit = d[d >= 0]
    horizon = int(run[f"prompts/{key}/completion_ids"].shape[1])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(hit, bins=np.arange(horizon + 2) - 0.5, color="C1")
    ax.set_xlabel("first divergence from the modal completion (step)")
    ax.set_ylabel("completions")
    ax.set_title(f"{hit.size} of {d.size} differ from the modal completion; {d.size - hit.size} equal it", fontsize=9)
    return save_figure(fig, out_dir, "census_divergence", run.task_id, part)


def _margins(run: RunView, key: str, out_dir: Path, part: str) -> Path:
    import numpy as np

    plt = pyplot()
    every = run[f"prompts/{key}/margin"]
    every = every[np.isfinite(every)]
    at = run[f"prompts/{key}/margin_at_divergence"]
    at = at[np.isfinite(at)]
    positive = np.concatenate([every, at])
    positive = positive[positive > 0]
    lo = positive.min() if positive.size else 1e-6
    hi = positive.max() if positive.size else 1.0
    bins = np.geomspace(lo, hi * 1.0001, 40) if hi > lo else np.array([lo * 0.5, lo * 2])
    fig, ax = plt.subplots(figsize=(6, 4))
    for values, alpha, label in ((every, 0.5, "all steps"), (at, 0.7, "at divergence, both sides")):
        if values.size:  # each set's bars sum to 1: the two distributions side by side whatever their sizes
            shown = values[values > 0]
            ax.hist(
                shown,
                bins=bins,
                weights=np.full(shown.size, 1 / values.size),
                alpha=alpha,
                label=f"{label} ({values.size})",
            )
    ax.set_xscale("log")
    ax.set_xlabel("top-1 − top-2 logit")
    ax.set_ylabel("fraction of the set")
    zeros = int((every == 0).sum() + (at == 0).sum())
    ax.set_title(f"margins; exact ties (0, not drawn): {zeros}", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "census_margins", run.task_id, part)
