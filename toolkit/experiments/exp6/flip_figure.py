"""The exp6.token_flip figure, drawn from the store only (no model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(run: Any, out_dir: Path) -> list[Path]:
    """One row per (upstream run, prompt): gap vs ε per direction, and nearest-flip |ε| per direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [f"sources/{source}/prompts/{key}" for source in sorted(run.group["sources"])
            for key in sorted(run.group[f"sources/{source}/prompts"])]
    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 4.2 * max(len(rows), 1)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.4, 1]})
    for (left, right), base in zip(axes, rows):
        _gap_panel(left, run, base)
        _nearest_panel(right, run, base)
    fig.suptitle(f"exp6.token_flip — {run.label()}, x = x0 + ε·v_i rounded as {run.attrs.get('perturb_mode')}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    path = out_dir / f"token_flip_{run.task_id}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _gap_panel(ax: Any, run: Any, base: str) -> None:
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
    ax.set_title(f"{attrs.get('upstream_method', '?')} tie, prompt {attrs.get('prompt', '')!r}: "
                 f"a={pair[0]}, b={pair[1]}; "
                 "| = a/b choice flips, ★ = nearest argmax flip", fontsize=9)
    ax.legend(fontsize=7, ncol=min(len(directions), 6), loc="upper center", framealpha=0.9,
              title="direction (right singular vector)", title_fontsize=7)


def _nearest_panel(ax: Any, run: Any, base: str) -> None:
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
    values = [-(10.0 ** k) for k in powers] + [0.0] + [10.0 ** k for k in reversed(powers)]
    labels = [f"−1e{k}" for k in powers] + ["0"] + [f"1e{k}" for k in reversed(powers)]
    ax.set_xticks(np.array(values), labels, fontsize=7)
    ax.xaxis.set_minor_locator(NullLocator())
