"""Figures of exp5.module_lipschitz, drawn from the store only (no model): layers × modules heatmap."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.experiments.figsave import pyplot, save_figure

if TYPE_CHECKING:
    from toolkit.context import RunView


# One line per figure name (figsave's naming rule): what is plotted and which colour is which;
# `toolkit report` prints it under the figure.
CAPTIONS: dict[str, str] = {
    "module_lipschitz": (
        "Per prompt: left, σ1 of each module's Jacobian at the last position per decoder layer (viridis, "
        "bright = larger, value written in each cell); right, σ1 per layer as one coloured line per module, "
        "with the finite-difference gain at the largest ε as × in the same colour."
    ),
}


def plot_module_lipschitz(run: RunView, out_dir: Path) -> list[Path]:
    """Per prompt: heatmap of σ1 (layers × modules, log colour) and σ1 per layer with FD gains."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()

    modules = [m.decode() for m in run["modules"]]
    layers = [int(i) for i in run["layer_indices"]]
    paths = []
    for key in sorted(run.group["prompts"]):
        base = f"prompts/{key}"
        sigma, gain, eps = run[f"{base}/sigma"][..., 0], run[f"{base}/gain_v1"], run[f"{base}/eps"]
        fig, axes = plt.subplots(1, 2, figsize=(15, 4.8), gridspec_kw={"width_ratios": [1.3, 1]})
        ax = axes[0]
        image = ax.imshow(np.log10(sigma.T), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_yticks(np.arange(len(modules)), modules, fontsize=8)
        step = max(1, len(layers) // 15)
        ax.set_xticks(np.arange(0, len(layers), step), [layers[i] for i in range(0, len(layers), step)], fontsize=7)
        ax.set_xlabel("decoder layer")
        if sigma.size <= 64:  # values readable only for a few layers; the colour bar carries the rest
            for (i, j), value in np.ndenumerate(sigma):
                ax.text(
                    i,
                    j,
                    f"{value:.3g}",
                    ha="center",
                    va="center",
                    fontsize=5.5,
                    color="w" if np.log10(value) < np.log10(sigma).mean() else "k",
                )
        ax.set_title("σ1 of ∂(module output)/∂(module input) at the last position", fontsize=9)
        plt.colorbar(image, ax=ax, label="log10 σ1")
        ax = axes[1]
        for j, module in enumerate(modules):
            (line,) = ax.semilogy(layers, sigma[:, j], marker="o", ms=3, lw=1.2, label=f"{module} σ1")
            ax.semilogy(layers, gain[:, j, -1], ls="none", marker="x", ms=5, color=line.get_color())
        ax.set_xlabel("decoder layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("σ1 (lines) and finite-difference gain (×)")
        ax.set_title(f"× : ‖g(z+εv1) − g(z)‖/‖δ‖ at ε = {eps[-1]:.0e}", fontsize=9)
        ax.legend(fontsize=7)
        fig.suptitle(f"exp5.module_lipschitz — {run.label()} — prompt {int(key)}", fontsize=10)
        fig.tight_layout()
        path = save_figure(fig, out_dir, "module_lipschitz", run.task_id, f"p{key}")
        paths.append(path)
    return paths
