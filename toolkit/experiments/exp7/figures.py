"""Figures of the exp7 family, drawn from the store only (no model): exp7.heatmap and exp7.zoom (one
stored map as gap, sign map and input cells) and exp7.randomness (per-map panels and a summary table).

Conventions (the upstream captions were inverted, see `../shared/science/exp6_7_11_15.md` §2.2):
images are drawn with `origin="lower"`, x axis = e1 (along v_i), y axis = e2 (along v_j), i.e.
the transpose of the stored [n1, n2] array.  The sign map uses an explicit two-colour map whose
legend names the token each colour stands for, so the caption cannot disagree with the pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.experiments.figsave import pyplot, save_figure

if TYPE_CHECKING:
    from toolkit.context import RunView

# One line per figure name (figsave's naming rule): what is plotted and which colour is which;
# `toolkit report` prints it under the figure.
CAPTIONS: dict[str, str] = {
    "exp7_heatmap": (
        "Per map over the plane x0 + e1·v_i + e2·v_j: left, logit[a] − logit[b] (RdBu, red: a higher, blue: b"
        " higher, white: tie); middle, which token the model picks (blue: a, orange: b; shares in the "
        "legend); right, cells of identical rounded input (one random colour per distinct input)."
    ),
    "exp7_zoom": (
        "A window of a stored map (part _stored) or a map recomputed on a finer grid (part _recomputed), "
        "drawn as exp7.heatmap: logit gap (red: a higher, blue: b higher, white: tie), the picked token "
        "(blue: a, orange: b), and the cells of identical rounded input (one random colour each)."
    ),
    "exp7_randomness": (
        "Per map: the picked token (blue: a, orange: b), local binary entropy (viridis, bright = more mixed),"
        " gradient magnitude of the logit gap (magma, bright = steeper) and Moran's I of the sign map (red "
        "line) against shuffles of the same classes (grey histogram); part _summary: the metrics of every map"
        " as a table."
    ),
}


COLOUR_A = "#2166ac"  # blue: the model picks token a (gap > 0, or a tie with a < b)
COLOUR_B = "#f4a582"  # orange: the model picks token b


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


def token_names(run: RunView, base: str) -> tuple[str, str]:
    """Readable labels for tokens a and b (decoded strings stored at run time, with ids)."""
    pair = run[f"{base}/pair"]
    raw = run.group[base].attrs.get("pair_tokens", "[]")
    names = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    if len(names) != 2:
        names = ["", ""]
    return (f"a = {names[0]!r} (id {int(pair[0])})", f"b = {names[1]!r} (id {int(pair[1])})")


def map_figure(
    run: RunView,
    base: str,
    out_dir: Path,
    name: str,
    task_id: str,
    part: str,
    title: str,
    window: tuple[slice, slice] | None = None,
) -> Path:
    """Three panels of one map of `run` (optionally a window of it): gap, sign map, distinct-input cells;
    saved as `<out_dir>/<name>_<task_id>_<part>.png`."""
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = pyplot()

    rows, cols = window or (slice(None), slice(None))
    gap, e1, e2 = run[f"{base}/gap"][rows, cols], run[f"{base}/e1"][rows], run[f"{base}/e2"][cols]
    distinct = run[f"{base}/distinct"][rows, cols]
    name_a, name_b = token_names(run, base)
    dirs = [int(d) for d in run.group[base].attrs.get("directions", [1, 2])]
    box = extent(e1, e2)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.9))
    limit = float(np.max(np.abs(gap))) or 1.0
    im = axes[0].imshow(
        gap.T,
        origin="lower",
        extent=box,
        aspect="auto",
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        interpolation="nearest",
    )
    fig.colorbar(im, ax=axes[0], label="logit[a] − logit[b] (logits; red: a higher, blue: b higher)")
    axes[0].set_title("logit gap (colour scale centred on 0: white = tie)", fontsize=9)
    side = side_of(gap, run[f"{base}/pair"])
    axes[1].imshow(
        side.T,
        origin="lower",
        extent=box,
        aspect="auto",
        interpolation="nearest",
        cmap=ListedColormap([COLOUR_B, COLOUR_A]),
        vmin=0,
        vmax=1,
    )
    share = float(side.mean())
    axes[1].legend(
        handles=[
            Patch(color=COLOUR_A, label=f"{name_a} wins ({share:.1%})"),
            Patch(color=COLOUR_B, label=f"{name_b} wins ({1 - share:.1%})"),
        ],
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncol=2,
        frameon=False,
    )
    axes[1].set_title("which token the model picks (exact ties → lower id)", fontsize=9)
    _, codes = np.unique(distinct, return_inverse=True)
    palette = 0.25 + 0.75 * np.random.default_rng(0).random((codes.max() + 1, 3))  # one random colour per input
    axes[2].imshow(
        palette[codes.reshape(distinct.shape)].transpose(1, 0, 2),
        origin="lower",
        extent=box,
        aspect="auto",
        interpolation="nearest",
    )
    axes[2].set_title(
        f"cells of identical rounded input ({codes.max() + 1} distinct of {distinct.size};\n"
        "one random colour per distinct input)",
        fontsize=9,
    )
    for ax in axes:
        ax.set_xlabel(f"e1: step along v{dirs[0]} (embedding units)")
        ax.set_ylabel(f"e2: step along v{dirs[1]} (embedding units)")
        ax.ticklabel_format(style="sci", scilimits=(0, 0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_dir, name, task_id, part)


def plot_heatmap(run: RunView, out_dir: Path) -> list[Path]:
    """Per map: the gap (diverging, centred on 0), the sign map (legend names each token's colour),
    and the cells of identical rounded input."""
    return [
        map_figure(
            run, f"maps/{key}", out_dir, "exp7_heatmap", run.task_id, key, f"exp7.heatmap — {run.label()} — map {key}"
        )
        for key in sorted(run.group["maps"])
    ]


def plot_zoom(run: RunView, out_dir: Path) -> list[Path]:
    """Each window of a stored map, and each recomputed grid (three panels as exp7.heatmap).

    The stored window is drawn from the heatmap run it names, read through the run view
    (`run.sibling`); it is skipped when the store does not hold that run (e.g. a store holding only
    this task)."""
    paths = []
    for key in sorted(run.group["views"]):
        attrs = run.group[f"views/{key}"].attrs
        source_id = attrs["source_task_id"]
        source = run.sibling(source_id.decode() if isinstance(source_id, bytes) else str(source_id))
        if source is None:
            continue
        window = [float(v) for v in attrs["window"]]
        i0, i1 = (int(v) for v in attrs["e1_index"])
        j0, j1 = (int(v) for v in attrs["e2_index"])
        paths.append(
            map_figure(
                source,
                str(attrs["source_map"]),
                out_dir,
                "exp7_zoom",
                run.task_id,
                f"{key}_stored",
                f"exp7.zoom — stored values in the window e1 ∈ [{window[0]:.3g}, {window[1]:.3g}], "
                f"e2 ∈ [{window[2]:.3g}, {window[3]:.3g}] — {run.label()}",
                window=(slice(i0, i1 + 1), slice(j0, j1 + 1)),
            )
        )
    for key in sorted(run.group["maps"]) if "maps" in run.group else []:
        paths.append(
            map_figure(
                run,
                f"maps/{key}",
                out_dir,
                "exp7_zoom",
                run.task_id,
                f"{key}_recomputed",
                f"exp7.zoom — recomputed {run.label()} — map {key}",
            )
        )
    return paths


def plot_randomness(run: RunView, out_dir: Path) -> list[Path]:
    """Per map: sign map, local entropy, gradient magnitude, Moran null distribution; plus a summary table."""
    paths = [_map_panels(run, key, out_dir) for key in sorted(run.group["maps"])]
    paths.append(_summary(run, out_dir))
    return paths


def _map_panels(run: RunView, key: str, out_dir: Path) -> Path:
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = pyplot()

    base = f"maps/{key}"
    attrs = run.group[base].attrs
    e1, e2, classes = run[f"{base}/e1"], run[f"{base}/e2"], run[f"{base}/classes"]
    box = extent(e1, e2)
    name_a, name_b = token_names(run, base)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9.5))
    ax = axes[0, 0]
    ax.imshow(
        classes.T,
        origin="lower",
        extent=box,
        aspect="auto",
        interpolation="nearest",
        cmap=ListedColormap([COLOUR_B, COLOUR_A]),
        vmin=0,
        vmax=1,
    )
    ax.legend(
        handles=[Patch(color=COLOUR_A, label=f"{name_a} wins"), Patch(color=COLOUR_B, label=f"{name_b} wins")],
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=2,
        frameon=False,
    )
    ax.set_title(
        f"sign map: flip ratio {attrs['flip_ratio']:.3f} (i.i.d. {attrs['iid_flip_ratio']:.3f}), "
        f"{attrs['regions']} regions",
        fontsize=9,
    )
    _entropy_panel(fig, axes[0, 1], run, base, box)
    grad = run[f"{base}/gradient_magnitude"]
    im = axes[1, 0].imshow(grad.T, origin="lower", extent=box, aspect="auto", cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=axes[1, 0], label="|∇ gap| (logits per unit e)")
    axes[1, 0].set_title("gradient magnitude of logit[a] − logit[b]", fontsize=9)
    for a in (axes[0, 0], axes[0, 1], axes[1, 0]):
        dirs = [int(d) for d in attrs.get("directions", [1, 2])]
        a.set_xlabel(f"e1: step along v{dirs[0]} (embedding units)")
        a.set_ylabel(f"e2: step along v{dirs[1]} (embedding units)")
        a.ticklabel_format(style="sci", scilimits=(0, 0))
    null = run[f"{base}/moran_null"]
    ax = axes[1, 1]
    if null.size:
        ax.hist(null, bins=40, color="0.6", label=f"{null.size} shuffles of the same classes")
    if np.isfinite(attrs["morans_i"]):
        ax.axvline(attrs["morans_i"], color="C3", lw=2, label=f"observed I = {attrs['morans_i']:.3f}")
    ax.set_xlabel("Moran's I (rook weights)")
    ax.set_ylabel("count")
    ax.set_title(
        f"permutation test of spatial randomness: p = {attrs['moran_p_two_sided']:.3g} (two-sided)", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.suptitle(f"exp7.randomness — {attrs['source_label']}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_dir, "exp7_randomness", run.task_id, key)


def _entropy_panel(fig: Any, ax: Any, run: RunView, base: str, box: list[float]) -> None:
    """Local entropy drawn over the window centres it belongs to, inside the full map's extent."""
    entropy = run[f"{base}/local_entropy"]
    e1, e2 = run[f"{base}/e1"], run[f"{base}/e2"]
    window = int(run.group.attrs.get("window", 5))
    half = (window - 1) // 2
    if entropy.size and len(e1) > 1 and len(e2) > 1:
        inner = extent(e1[half : len(e1) - half], e2[half : len(e2) - half]) if window % 2 else box
        im = ax.imshow(
            entropy.T,
            origin="lower",
            extent=inner,
            aspect="auto",
            cmap="viridis",
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        fig.colorbar(im, ax=ax, label="binary entropy (bits)")
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
    mean = run.group[base].attrs["mean_local_entropy"]
    ax.set_title(f"local entropy, {window}×{window} windows (mean {mean:.3f} bit)", fontsize=9)


def _summary(run: RunView, out_dir: Path) -> Path:
    from toolkit.experiments.exp7.randomness import _fmt

    plt = pyplot()

    keys = sorted(run.group["maps"])
    cols = (
        "flip_ratio",
        "iid_flip_ratio",
        "regions",
        "morans_i",
        "moran_p_two_sided",
        "mean_local_entropy",
        "crossing_density",
        "fraction_class1",
    )
    cells = [[_fmt(run.group[f"maps/{k}"].attrs[c].item()) for c in cols] for k in keys]
    rows = [f"{k}: v{[int(d) for d in run.group[f'maps/{k}'].attrs.get('directions', [])]}" for k in keys]
    fig, ax = plt.subplots(figsize=(13, 0.9 + 0.35 * len(keys)))
    ax.axis("off")
    table = ax.table(cellText=cells, rowLabels=rows, colLabels=cols, loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    ax.set_title(f"exp7.randomness — metrics per map ({run.task_id})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_dir, "exp7_randomness", run.task_id, "summary")
