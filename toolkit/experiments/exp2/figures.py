"""Figures of exp2.lipschitz, drawn from the store only (no model): gain against ε per direction."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.experiments.figsave import pyplot, save_figure

if TYPE_CHECKING:
    from toolkit.context import RunView


# One line per figure name (figsave's naming rule): what is plotted and which colour is which;
# `toolkit report` prints it under the figure.
CAPTIONS: dict[str, str] = {
    "lipschitz": (
        "Per prompt: left, finite-difference gain ‖f(x̃) − f(x)‖/‖x̃ − x‖ vs ε (log-log) along each singular "
        "direction v_i (one colour each), random directions (grey dashed), v1 + noise (black dotted), and σ1 "
        "(red line); right, the top singular values σ_i of the Jacobian."
    ),
}


def plot_lipschitz(run: RunView, out_dir: Path) -> list[Path]:
    """Per prompt: gain vs ε (log-log) with σ₁ as a horizontal line, and the σ spectrum."""
    import numpy as np

    plt = pyplot()

    keys = sorted(run.group["prompts"])
    fig, axes = plt.subplots(
        len(keys), 2, figsize=(11, 3.6 * max(len(keys), 1)), squeeze=False, gridspec_kw={"width_ratios": [2.2, 1]}
    )
    for row, key in zip(axes, keys):
        base = f"prompts/{key}"
        eps, sigma = run[f"{base}/eps"], run[f"{base}/sigma"]
        gains, randoms = run[f"{base}/gain_singular"], run[f"{base}/gain_random"]
        ax = row[0]
        for i, gain in enumerate(gains):
            ax.loglog(eps, _positive(gain), marker="o", ms=3, lw=1.2, label=f"v{i + 1}")
        for i, gain in enumerate(randoms):
            ax.loglog(eps, _positive(gain), color="0.6", lw=0.8, ls="--", label="random" if i == 0 else None)
        if f"{base}/gain_noise" in run:
            ax.loglog(eps, _positive(run[f"{base}/gain_noise"]), color="k", lw=1.2, ls=":", label="v1 + noise")
        ax.axhline(sigma[0], color="C3", lw=1, label=f"σ1 = {sigma[0]:.4g}")
        ax.set_xlabel("ε")
        ax.set_ylabel("‖f(x̃) − f(x)‖ / ‖x̃ − x‖")
        ax.set_title(f"prompt {int(key)}: finite-difference gain", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        spec = row[1]
        spec.semilogy(np.arange(1, len(sigma) + 1), sigma, marker="o")
        spec.set_xticks(np.arange(1, len(sigma) + 1))
        spec.set_xlabel("index i")
        spec.set_ylabel("σ_i")
        spec.set_title("top singular values of J", fontsize=9)
    fig.suptitle(f"exp2.lipschitz — {run.label()}", fontsize=10)
    fig.tight_layout()
    path = save_figure(fig, out_dir, "lipschitz", run.task_id)
    return [path]


def _positive(values: Any) -> Any:
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    return np.where(values > 0, values, np.nan)
