"""Figures shared by exp7.heatmap and exp7.zoom: one stored map as gap, sign map and input cells.

Conventions (the upstream captions were inverted, see `../shared/science/exp6_7_11_15.md` §2.2):
images are drawn with `origin="lower"`, x axis = e1 (along v_i), y axis = e2 (along v_j), i.e.
the transpose of the stored [n1, n2] array.  The sign map uses an explicit two-colour map whose
legend names the token each colour stands for, so the caption cannot disagree with the pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLOUR_A = "#2166ac"   # blue: the model picks token a (gap > 0, or a tie with a < b)
COLOUR_B = "#f4a582"   # orange: the model picks token b


def side_of(gap: Any, pair: Any) -> Any:
    """1 where the model's argmax restricted to (a, b) picks a (ties go to the lower token id), else 0."""
    import numpy as np

    a, b = int(pair[0]), int(pair[1])
    return ((gap > 0) | ((gap == 0) & (a < b))).astype(np.int8)


def extent(e1: Any, e2: Any) -> list[float]:
    """imshow extent with cell edges half a step outside the first and last grid values."""
    def edges(values: Any) -> tuple[float, float]:
        half = (values[1] - values[0]) / 2 if len(values) > 1 else 0.5e-12
        return float(values[0] - half), float(values[-1] + half)

    return [*edges(e1), *edges(e2)]


def token_names(run: Any, base: str) -> tuple[str, str]:
    """Readable labels for tokens a and b (decoded strings stored at run time, with ids)."""
    pair = run[f"{base}/pair"]
    raw = run.group[base].attrs.get("pair_tokens", "[]")
    names = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    if len(names) != 2:
        names = ["", ""]
    return (f"a = {names[0]!r} (id {int(pair[0])})", f"b = {names[1]!r} (id {int(pair[1])})")


def map_figure(run: Any, base: str, path: Path, title: str, window: tuple[slice, slice] | None = None) -> Path:
    """Three panels of one map (optionally a window of it): gap, sign map, distinct-input cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    rows, cols = window or (slice(None), slice(None))
    gap, e1, e2 = run[f"{base}/gap"][rows, cols], run[f"{base}/e1"][rows], run[f"{base}/e2"][cols]
    distinct = run[f"{base}/distinct"][rows, cols]
    name_a, name_b = token_names(run, base)
    dirs = [int(d) for d in run.group[base].attrs.get("directions", [1, 2])]
    box = extent(e1, e2)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.9))
    limit = float(np.max(np.abs(gap))) or 1.0
    im = axes[0].imshow(gap.T, origin="lower", extent=box, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                        interpolation="nearest")
    fig.colorbar(im, ax=axes[0], label="logit[a] − logit[b] (logits; red: a higher, blue: b higher)")
    axes[0].set_title("logit gap (colour scale centred on 0: white = tie)", fontsize=9)
    side = side_of(gap, run[f"{base}/pair"])
    axes[1].imshow(side.T, origin="lower", extent=box, aspect="auto", interpolation="nearest",
                   cmap=ListedColormap([COLOUR_B, COLOUR_A]), vmin=0, vmax=1)
    share = float(side.mean())
    axes[1].legend(handles=[Patch(color=COLOUR_A, label=f"{name_a} wins ({share:.1%})"),
                            Patch(color=COLOUR_B, label=f"{name_b} wins ({1 - share:.1%})")],
                   fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    axes[1].set_title("which token the model picks (exact ties → lower id)", fontsize=9)
    _, codes = np.unique(distinct, return_inverse=True)
    palette = 0.25 + 0.75 * np.random.default_rng(0).random((codes.max() + 1, 3))  # one random colour per input
    axes[2].imshow(palette[codes.reshape(distinct.shape)].transpose(1, 0, 2), origin="lower", extent=box,
                   aspect="auto", interpolation="nearest")
    axes[2].set_title(f"cells of identical rounded input ({codes.max() + 1} distinct of {distinct.size};\n"
                      "one random colour per distinct input)", fontsize=9)
    for ax in axes:
        ax.set_xlabel(f"e1: step along v{dirs[0]} (embedding units)")
        ax.set_ylabel(f"e2: step along v{dirs[1]} (embedding units)")
        ax.ticklabel_format(style="sci", scilimits=(0, 0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
