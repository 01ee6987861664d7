"""Figures of exp3.precision and exp3.compare, drawn from the store only (no model): gain and
deviation over the coloured regime bands, and the regimes compared across dtypes.
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
    "precision": (
        "Per prompt, direction v1: gain ‖Δf‖/‖δ‖ vs ε (black line), σ1 (black dashed), deviation from linear "
        "‖Δf − Jδ‖/‖Jδ‖ (purple, right axis; dotted: signal tolerance), and the regime of each ε as a "
        "background band (light grey absorbed_input, grey absorbed_output, green signal, blue nonlinear, red "
        "chaotic)."
    ),
    "precision_compare": (
        "Per prompt: left, regime of the response to x + ε·v1 for every dtype (rows) and ε (columns; light "
        "grey absorbed_input, grey absorbed_output, green signal, blue nonlinear, red chaotic; black dots: "
        "within tolerance of float64's response); right, gain vs ε, one colour per dtype, with that dtype's "
        "σ1 dotted in the same colour."
    ),
}


REGIME_COLORS = ("0.85", "0.55", "tab:green", "tab:blue", "tab:red")


def plot_precision(run: RunView, out_dir: Path) -> list[Path]:
    """Per prompt: gain and deviation vs ε over regime bands (v1), and the per-row heatmap (+v1)."""
    from toolkit.experiments.exp1.figures import heatmap_rows_eps

    plt = pyplot()

    paths = []
    for key in sorted(run.group["prompts"]):
        base = f"prompts/{key}"
        eps, sigma = run[f"{base}/eps"], run[f"{base}/sigma"]
        fig, axes = plt.subplots(1, 2, figsize=(14, 6.2), gridspec_kw={"width_ratios": [1, 1.1]})
        gain_panel(
            axes[0],
            eps,
            run[f"{base}/gain"][0],
            run[f"{base}/deviation"][0],
            run[f"{base}/regime"][0],
            sigma[0],
            float(run.attrs["signal_tol"]),
        )
        heatmap_rows_eps(
            axes[1],
            eps,
            run[f"{base}/rel_l2"][0],
            run[f"{base}/eps_first_change"][0],
            run[f"{base}/eps_half_change"][0],
        )
        fig.suptitle(f"exp3.precision — {run.label()} — prompt {int(key)}, direction v1", fontsize=10)
        fig.tight_layout()
        path = save_figure(fig, out_dir, "precision", run.task_id, f"p{key}")
        paths.append(path)
    return paths


def gain_panel(ax: Any, eps: Any, gain: Any, deviation: Any, regime: Any, sigma: float, tol: float) -> None:
    """Gain (left axis) and deviation from linear (right axis) vs ε, regime of each ε as a band."""
    import numpy as np
    from matplotlib.patches import Patch

    from toolkit.numerics.regimes import REGIMES

    edges = np.sqrt(eps[1:] * eps[:-1]) if len(eps) > 1 else np.array([])
    lows = np.concatenate([[eps[0] / 2], edges])
    highs = np.concatenate([edges, [eps[-1] * 2]])
    for low, high, code in zip(lows, highs, regime):
        ax.axvspan(low, high, color=REGIME_COLORS[int(code)], alpha=0.35, lw=0)
    ax.loglog(eps, np.where(gain > 0, gain, np.nan), "k-o", ms=4, lw=1.4, label="gain ‖Δf‖/‖δ‖")
    ax.axhline(sigma, color="k", ls="--", lw=1, label=f"σ1 = {sigma:.4g}")
    ax.set_xlabel("ε (intended step ‖εv1‖)")
    ax.set_ylabel("finite-difference gain")
    twin = ax.twinx()
    twin.loglog(
        eps,
        np.where(deviation > 0, deviation, np.nan),
        color="tab:purple",
        marker="s",
        ms=3,
        lw=1,
        label="deviation ‖Δf − Jδ‖/‖Jδ‖",
    )
    twin.axhline(tol, color="tab:purple", ls=":", lw=1, label=f"signal tolerance {tol:g}")
    twin.set_ylabel("relative deviation from linear", color="tab:purple")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    handles += [Patch(color=c, alpha=0.35, label=n) for c, n in zip(REGIME_COLORS, REGIMES)]
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    ax.set_xlim(lows[0], highs[-1])
    ax.set_title("gain and regime per ε", fontsize=9)


def plot_compare(run: RunView, out_dir: Path) -> list[Path]:
    """Per prompt: regime map (dtypes × ε) and gain vs ε for every dtype with each σ1."""
    import json

    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = pyplot()

    names = json.loads(run.attrs["regime_names"])
    dtypes = [d.decode() for d in run["dtypes"]]
    tol = max(json.loads(run.attrs["signal_tol"]))
    paths = []
    for key in sorted(run.group["prompts"]):
        base = f"prompts/{key}"
        eps, regime, gain, sigma = run[f"{base}/eps"], run[f"{base}/regime"], run[f"{base}/gain"], run[f"{base}/sigma"]
        fig, axes = plt.subplots(1, 2, figsize=(14, 4.6 + 0.3 * len(dtypes)), gridspec_kw={"width_ratios": [1.1, 1]})
        ax = axes[0]
        ax.imshow(
            regime,
            aspect="auto",
            cmap=ListedColormap(REGIME_COLORS),
            vmin=-0.5,
            vmax=len(names) - 0.5,
            interpolation="nearest",
        )
        agree = run[f"{base}/relative_to_float64"] <= tol if f"{base}/relative_to_float64" in run else regime < 0
        agree[[d == "float64" for d in dtypes]] = False  # the reference itself
        rows, cols = np.nonzero(agree)
        ax.plot(cols, rows, ls="none", marker="o", ms=4, color="k", label=f"response within {tol:g} of float64's")
        if rows.size:
            ax.legend(fontsize=7, loc="upper left", framealpha=0.8)
        ax.set_yticks(np.arange(len(dtypes)), dtypes)
        ax.set_xticks(np.arange(len(eps)), [f"{e:.0e}" for e in eps], rotation=60, fontsize=7)
        ax.set_xlabel("ε (intended step ‖εv1‖)")
        ax.set_title("regime of the response to x + ε·v1", fontsize=9)
        fig.legend(
            handles=[Patch(color=c, label=n) for c, n in zip(REGIME_COLORS, names)],
            fontsize=8,
            loc="lower center",
            ncol=len(names),
            title="regime (toolkit.numerics.regimes)",
            title_fontsize=8,
        )
        ax = axes[1]
        for i, dtype in enumerate(dtypes):
            (line,) = ax.loglog(eps, np.where(gain[i] > 0, gain[i], np.nan), marker="o", ms=3, lw=1.3, label=dtype)
            ax.axhline(sigma[i], color=line.get_color(), ls=":", lw=0.9)
        ax.set_xlabel("ε (intended step ‖εv1‖)")
        ax.set_ylabel("gain ‖f(x̃) − f(x)‖ / ‖x̃ − x‖")
        ax.set_title("finite-difference gain along v1 (dotted: σ1 of each dtype)", fontsize=9)
        ax.legend(fontsize=7)
        fig.suptitle(f"exp3.compare — prompt {int(key)}", fontsize=10)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        path = save_figure(fig, out_dir, "precision_compare", run.task_id, f"p{key}")
        paths.append(path)
    return paths
