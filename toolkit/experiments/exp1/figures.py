"""Figures of exp1.layer_svd, drawn from the store only (no model): per prompt, the rows × ε heatmap
of relative change, the changed fraction and the curves over rows (shared with exp3.precision).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.experiments.figsave import pyplot, save_figure

if TYPE_CHECKING:
    from toolkit.context import RunView


# One line per figure name (figsave's naming rule): what is plotted and which colour is which;
# `toolkit report` prints it under the figure.
CAPTIONS: dict[str, str] = {
    "layer_svd": (
        "Per prompt, input moved along v1 by ε: left, log10 relative L2 change of each row's hidden state "
        "(rows × ε; viridis, bright = larger, grey = bitwise equal; white dotted/dashed lines: ε where the "
        "first / half of the input coordinates can move); middle, the same change as one curve over rows per "
        "ε (plasma, dark = smallest ε; open circles: bitwise equal); right, fraction of elements whose bits "
        "changed (magma, bright = more)."
    ),
}


def plot_layer_svd(run: RunView, out_dir: Path) -> list[Path]:
    """Per prompt, direction v1: heatmap rows × ε of relative divergence, curves over rows per ε,
    and the fraction of elements whose bits changed (rows × ε)."""
    plt = pyplot()

    paths = []
    for key in sorted(run.group["prompts"]):
        base = f"prompts/{key}"
        eps = run[f"{base}/eps"]
        fig, axes = plt.subplots(1, 3, figsize=(19, 5.2), gridspec_kw={"width_ratios": [1.15, 1, 1.15]})
        heatmap_rows_eps(
            axes[0],
            eps,
            run[f"{base}/rel_l2"][0],
            run[f"{base}/eps_first_change"][0],
            run[f"{base}/eps_half_change"][0],
        )
        curves_over_rows(axes[1], eps, run[f"{base}/rel_l2"][0])
        changed_fraction(axes[2], eps, run[f"{base}/n_changed"][0] / run[f"{base}/base_states"].shape[1])
        sigma = run[f"{base}/sigma"]
        fig.suptitle(
            f"exp1.layer_svd — {run.label()} — prompt {int(key)}, direction v1 (σ1 = {sigma[0]:.4g})", fontsize=10
        )
        fig.tight_layout()
        path = save_figure(fig, out_dir, "layer_svd", run.task_id, f"p{key}")
        paths.append(path)
    return paths


def row_labels(n_rows: int) -> list[str]:
    """Tick labels of the rows: input, layer 0..L-1, final norm."""
    return ["input"] + [f"L{i}" for i in range(n_rows - 2)] + ["norm"]


def _ticks(labels: list[str], most: int) -> tuple[list[int], list[str]]:
    """About `most` evenly spaced tick positions, always the first and last row, never two adjacent."""
    step = max(1, len(labels) // most)
    last = len(labels) - 1
    shown = [i for i in range(0, len(labels), step) if last - i >= step or i == last] + [last]
    shown = sorted(set(shown))
    return shown, [labels[i] for i in shown]


def heatmap_rows_eps(ax: Any, eps: Any, rel: Any, first: float, half: float) -> None:
    """log10 relative divergence, rows (y) × ε (x); grey where exactly zero."""
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.where(rel > 0, np.log10(np.where(rel > 0, rel, 1.0)), np.nan).T  # [rows, E]
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("0.85")
    image = ax.imshow(values, aspect="auto", origin="lower", cmap=cmap, interpolation="nearest")
    ticks = np.arange(len(eps))
    ax.set_xticks(ticks, [f"{e:.0e}" for e in eps], rotation=60, fontsize=7)
    ax.set_yticks(*_ticks(row_labels(values.shape[0]), 12), fontsize=7)
    log_eps = np.log10(eps)
    for value, style, name in ((first, ":", "first input coord. can move"), (half, "--", "half can move")):
        if len(eps) > 1 and log_eps[0] <= np.log10(value) <= log_eps[-1]:
            pos = np.interp(np.log10(value), log_eps, ticks)
            ax.axvline(pos, color="w", ls=style, lw=1.2, label=name)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", framealpha=0.6)
    ax.set_xlabel("ε (intended step ‖εv‖)")
    ax.set_ylabel("row (input → decoder layers → final norm)")
    ax.set_title("log10 ‖h(x̃) − h(x)‖ / ‖h(x)‖   (grey: bitwise equal)", fontsize=9)
    plt.colorbar(image, ax=ax, label="log10 relative L2 divergence")


def changed_fraction(ax: Any, eps: Any, fraction: Any) -> None:
    """Fraction of elements whose bits changed, rows (y) × ε (x), linear 0..1."""
    import matplotlib.pyplot as plt
    import numpy as np

    image = ax.imshow(fraction.T, aspect="auto", origin="lower", cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(np.arange(len(eps)), [f"{e:.0e}" for e in eps], rotation=60, fontsize=7)
    ax.set_yticks(*_ticks(row_labels(fraction.shape[1]), 12), fontsize=7)
    ax.set_xlabel("ε (intended step ‖εv‖)")
    ax.set_ylabel("row (input → decoder layers → final norm)")
    ax.set_title("fraction of elements whose bits changed", fontsize=9)
    plt.colorbar(image, ax=ax, label="changed elements / D")


def curves_over_rows(ax: Any, eps: Any, rel: Any) -> None:
    """Relative divergence vs row, one curve per ε (zeros drawn at the bottom as open markers)."""
    import matplotlib.pyplot as plt
    import numpy as np

    colors = plt.get_cmap("plasma")(np.linspace(0.05, 0.9, len(eps)))
    rows = np.arange(rel.shape[1])
    positive = rel[rel > 0]
    floor = positive.min() / 10 if positive.size else 1e-20
    for j, e in enumerate(eps):
        values = rel[j]
        ax.semilogy(
            rows, np.where(values > 0, values, np.nan), color=colors[j], lw=1.2, marker=".", ms=3, label=f"ε={e:.0e}"
        )
        zero = values == 0
        if zero.any():
            ax.semilogy(
                rows[zero], np.full(zero.sum(), floor), ls="none", marker="o", mfc="none", ms=3, color=colors[j]
            )
    labels = row_labels(rel.shape[1])
    ax.set_xticks(*_ticks(labels, 10), fontsize=7)
    ax.set_xlabel("row (input → decoder layers → final norm)")
    ax.set_ylabel("relative L2 divergence")
    ax.set_title(f"per ε (open circles at {floor:.0e}: bitwise equal)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
