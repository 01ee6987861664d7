"""Figures of the exp6 family, drawn from the store only (no model): exp6.equal_logits (the tie
search trace and σ of J) and exp6.token_flip (gap against ε and the nearest flip per direction)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.experiments.figsave import pyplot, save_figure

if TYPE_CHECKING:
    from toolkit.context import RunView


# One line per figure name (figsave's naming rule): what is plotted and which colour is which;
# `toolkit report` prints it under the figure.
CAPTIONS: dict[str, str] = {
    "token_flip": (
        "One row per upstream run and prompt: left, logit a − logit b in ULPs vs ε along each singular "
        "direction v_i (one colour per direction; | ticks: argmax flips, ★: the nearest flip); right, |ε| of "
        "the nearest argmax flip per direction (bars in the direction's colour)."
    ),
    "equal_logits": (
        "Per prompt: left, |logit a − logit b| in ULPs per forward evaluation of the search (blue circles: "
        "gradient phase, orange ×: lattice polish; red ring: the kept point, its certified gap in the "
        "legend); right, the top singular values of the Jacobian at x0 (the directions stored)."
    ),
}


def plot_token_flip(run: RunView, out_dir: Path) -> list[Path]:
    """One row per (upstream run, prompt): gap vs ε per direction (flips marked), and nearest-flip |ε|
    per direction."""
    plt = pyplot()

    rows = [
        f"sources/{source}/prompts/{key}"
        for source in sorted(run.group["sources"])
        for key in sorted(run.group[f"sources/{source}/prompts"])
    ]
    fig, axes = plt.subplots(
        len(rows), 2, figsize=(12, 4.2 * max(len(rows), 1)), squeeze=False, gridspec_kw={"width_ratios": [2.4, 1]}
    )
    for (left, right), base in zip(axes, rows):
        _gap_panel(left, run, base)
        _nearest_panel(right, run, base)
    fig.suptitle(
        f"exp6.token_flip — {run.label()}, x = x0 + ε·v_i rounded as {run.attrs.get('perturb_mode')}", fontsize=10
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return [save_figure(fig, out_dir, "token_flip", run.task_id)]


def _gap_panel(ax: Any, run: RunView, base: str) -> None:
    import numpy as np

    eps, gap, directions = run[f"{base}/eps"], run[f"{base}/gap"], run[f"{base}/directions"]
    ulp = float(run[f"{base}/logit_ulp_x0"])
    nearest, positions = run[f"{base}/nearest_flip_eps"], run[f"{base}/flip_positions"]
    nonzero = np.abs(eps[eps != 0])
    for i, index in enumerate(directions):
        color = f"C{i % 10}"
        ax.plot(eps, gap[i] / ulp, lw=0.9, color=color, label=f"v{index}")
        mine = positions[positions[:, 0] == i]
        if mine.size:
            ax.plot((mine[:, 1] + mine[:, 2]) / 2, np.zeros(len(mine)), ls="none", marker="|", ms=9, color=color)
        if np.isfinite(nearest[i]):
            at = int(np.nonzero(eps == nearest[i])[0][0])
            ax.plot([eps[at]], [gap[i, at] / ulp], ls="none", marker="*", ms=11, color=color, mec="k", mew=0.5)
    ax.axhline(0, color="0.3", lw=0.6)
    ax.set_xscale("symlog", linthresh=float(nonzero.min()) if nonzero.size else 1e-12)
    _decade_ticks(ax, nonzero)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("ε (symlog; linear below the smallest |ε| of the grid)")
    ax.set_ylabel("logit a − logit b  [ULPs of the logit at x0]")
    attrs = run.group[base].attrs
    pair = run[f"{base}/pair"]
    ax.set_title(
        f"{attrs.get('upstream_method', '?')} tie, prompt {attrs.get('prompt', '')!r}: "
        f"a={pair[0]}, b={pair[1]}; "
        "| = a/b choice flips, ★ = nearest argmax flip",
        fontsize=9,
    )
    ax.legend(
        fontsize=7,
        ncol=min(len(directions), 6),
        loc="upper center",
        framealpha=0.9,
        title="direction (right singular vector)",
        title_fontsize=7,
    )


def _nearest_panel(ax: Any, run: RunView, base: str) -> None:
    import numpy as np

    nearest, directions = np.abs(run[f"{base}/nearest_flip_eps"]), run[f"{base}/directions"]
    x = np.arange(len(directions))
    found = np.isfinite(nearest)
    ax.bar(x[found], nearest[found], color=[f"C{i % 10}" for i in x[found]])
    top = float(np.abs(run[f"{base}/eps"]).max())
    for i in x[~found]:
        ax.text(i, top, "none", ha="center", va="top", fontsize=7, rotation=90)
    ax.set_yscale("log")
    low = float(nearest[found].min()) / 3 if found.any() else top / 10
    ax.set_ylim(low, top * 1.5)
    ax.set_xticks(x, [f"v{d}" for d in directions], fontsize=8)
    ax.set_xlabel("direction (right singular vector of J at x0)")
    ax.set_ylabel("|ε| of the nearest argmax flip")
    ax.set_title(f"nearest flip per direction (grid up to ±{top:.1e})", fontsize=9)


def _decade_ticks(ax: Any, nonzero: Any) -> None:
    """Ticks at ±10^k every other decade (and 0), so labels of a long symlog axis do not collide."""
    import math

    import numpy as np
    from matplotlib.ticker import NullLocator

    if not nonzero.size:
        return
    low, high = math.floor(math.log10(nonzero.min())), math.ceil(math.log10(nonzero.max()))
    stride = max(1, (high - low) // 4)
    powers = list(range(high, low, -stride)) or [high]  # not the lowest decade: its label would touch 0
    values = [-(10.0**k) for k in powers] + [0.0] + [10.0**k for k in reversed(powers)]
    labels = [f"−1e{k}" for k in powers] + ["0"] + [f"1e{k}" for k in reversed(powers)]
    ax.set_xticks(np.array(values), labels, fontsize=7)
    ax.xaxis.set_minor_locator(NullLocator())


def plot_equal_logits(run: RunView, out_dir: Path) -> list[Path]:
    """Per prompt: |gap| in logit ULPs per evaluation (gradient phase and polish), and σ of J at x0."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()

    keys = sorted(run.group["prompts"])
    fig, axes = plt.subplots(
        len(keys), 2, figsize=(11, 3.6 * max(len(keys), 1)), squeeze=False, gridspec_kw={"width_ratios": [2.2, 1]}
    )
    for row, key in zip(axes, keys):
        base = f"prompts/{key}"
        gap_ulps, phase = np.abs(run[f"{base}/trace_gap_ulps"]), run[f"{base}/trace_phase"]
        steps = np.arange(len(gap_ulps))
        attrs = run.group[base].attrs
        ax = row[0]
        for value, name, marker in ((0, "gradient phase", "o"), (1, "lattice polish", "x")):
            mask = phase == value
            if mask.any():
                ax.plot(steps[mask], gap_ulps[mask], marker=marker, ms=4, lw=0.8, label=name)
        best = int(attrs["best_iteration"])
        ax.plot(
            [best],
            [gap_ulps[best]],
            marker="o",
            ms=13,
            mfc="none",
            mec="C3",
            mew=1.5,
            ls="none",
            clip_on=False,
            label=f"kept: certified gap {float(run[f'{base}/gap_ulps']):g} ULP",
        )
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=-0.2)  # the linear part of symlog: 0 ULP (a true tie) stays visible
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("evaluation (forward pass) index")
        ax.set_ylabel("|logit a − logit b|  [ULPs of the logit]")
        ax.set_title(
            f"prompt {int(key)}: {attrs['method']} tie of {attrs['a_token']!r} / {attrs['b_token']!r}", fontsize=9
        )
        ax.legend(fontsize=7)
        sigma = run[f"{base}/sigma"]
        spec = row[1]
        spec.plot(np.arange(1, len(sigma) + 1), sigma, marker="o")
        spec.set_xticks(np.arange(1, len(sigma) + 1))
        spec.set_xlabel("index i")
        spec.set_ylabel("σ_i of J at x0")
        spec.set_title("top singular values (directions stored)", fontsize=9)
    fig.suptitle(f"exp6.equal_logits — {run.label()}", fontsize=10)
    fig.tight_layout()
    return [save_figure(fig, out_dir, "equal_logits", run.task_id)]
