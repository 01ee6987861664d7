"""Figures of the exp4 family, drawn from the store only (no model): generate margins, compare
survival and matrix, divergence scatter and margins, internals per pair, perturbation brackets,
embedding similarity over depth.
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
    "compare_survival": (
        "Fraction of prompts whose greedy outputs are still token-identical vs generation step, one coloured "
        "step curve per pair of classes of bit-identical runs (the legend box lists each class's runs); grey "
        "dashed at 1: pairs inside a class (controls)."
    ),
    "compare_matrix": (
        "For every pair of runs (rows × columns), the fraction of prompts whose greedy outputs diverged "
        "(viridis: dark = 0, yellow = 1) and d~, the median first step where they diverged."
    ),
    "divergence_scatter": (
        "At the first divergent step d of each pair and prompt: run i's top-1 − top-2 logit margin (x) vs the"
        " cross-run change of that difference (y), log-log; one colour per pair of runs, grey dots: steps "
        "where the runs agreed, red dashed: change = margin (a flip is possible above it)."
    ),
    "divergence_margins": (
        "Histogram of the top-1 − top-2 margin at d in ULPs of the top-1 logit (log bins), one colour per "
        "logits dtype (blue first, orange second); exact ties counted in the legend."
    ),
    "embedding_similarity": (
        "Rows: prompts, columns: perturbation directions; relative L2 difference of the last position's "
        "hidden state over depth for each ε (viridis, dark = smallest ε; dashed: the first ε that diverged), "
        "with the cross-run differences at the divergent step in red."
    ),
    "generate_margins": (
        "Top-1 − top-2 logit margin at each generation step (log scale), one colour per prompt: where it is "
        "small, a rounding difference can flip the greedy token."
    ),
    "internals": (
        "Per prompt for one pair of runs: left, relative L2 difference ‖h_i − h_j‖/‖h_i‖ over depth, one "
        "colour per replayed step (the step marked = d is the first divergence); right, the same as a layer ×"
        " step heatmap (magma, bright = larger, blank = identical)."
    ),
    "perturb_until_divergence": (
        "Per prompt and direction (one colour per direction): the bracket of the threshold ε between the last"
        " identical ε (▼) and the first that diverged (▲), annotated with the divergence step d, log scale."
    ),
}


def plot_compare(run: RunView, out_dir: Path) -> list[Path]:
    """Survival curves (fraction of prompts still identical vs step) and the N×N matrix."""
    return [_survival(run, out_dir), _matrix(run, out_dir)]


def _labels(run: RunView) -> list[str]:
    return [x.decode() for x in run["run_labels"]]


def _survival(run: RunView, out_dir: Path) -> Path:
    """One curve per pair of bit-identical classes (pairs inside a class are the flat controls)."""
    import numpy as np

    from toolkit.experiments.exp4.compare import identical_classes

    plt = pyplot()

    labels = _labels(run)
    tables = {k: run[k] for k in ("first_divergence", "first_bitwise_diff", "common_length")}
    d, classes = tables["first_divergence"], identical_classes(tables)
    names = [chr(ord("A") + k) if k < 26 else f"C{k}" for k in range(len(classes))]
    horizon = int(tables["common_length"].max())
    steps = np.arange(horizon + 1)
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.axhline(1.0, color="0.5", ls="--", lw=1, label="pairs within a class (controls): identical")
    for a in range(len(classes)):
        for b in range(a + 1, len(classes)):
            pair = d[classes[a][0], classes[b][0]]
            div = np.where(pair >= 0, pair, horizon + 1)
            alive = (div[None, :] > steps[:, None]).mean(axis=1)
            ax.step(steps, alive, where="post", lw=2, label=f"[{names[a]}] vs [{names[b]}]")
    legend = "\n".join(f"[{n}] " + ", ".join(labels[i] for i in members) for n, members in zip(names, classes))
    ax.text(
        0.01,
        0.02,
        legend,
        transform=ax.transAxes,
        fontsize=6,
        va="bottom",
        family="monospace",
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"},
    )
    ax.set_xlabel("generation step")
    ax.set_ylabel("fraction of prompts still token-identical")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title("exp4: survival of identical greedy outputs, per class of bit-identical runs")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path = save_figure(fig, out_dir, "compare_survival", run.task_id)
    return path


def _matrix(run: RunView, out_dir: Path) -> Path:
    import numpy as np

    plt = pyplot()

    labels, d = _labels(run), run["first_divergence"]
    frac = (d >= 0).mean(axis=2)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 1.0 * len(labels) + 2.5))
    image = ax.imshow(frac, vmin=0, vmax=1, cmap="viridis")
    for i in range(len(labels)):
        for j in range(len(labels)):
            hit = d[i, j][d[i, j] >= 0]
            text = f"{frac[i, j]:.2f}" + (f"\nd~{np.median(hit):.0f}" if hit.size else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="w" if frac[i, j] < 0.5 else "k")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(image, ax=ax, label="fraction of prompts that diverged (d~: median first step)")
    ax.set_title("exp4: pairwise divergence")
    fig.tight_layout()
    path = save_figure(fig, out_dir, "compare_matrix", run.task_id)
    return path


def plot_divergence(run: RunView, out_dir: Path) -> list[Path]:
    """Scatter of margin vs cross-run change of the decisive difference; histogram of margins at d."""
    return [_scatter(run, out_dir), _histogram(run, out_dir)]


def _scatter(run: RunView, out_dir: Path) -> Path:
    import numpy as np

    plt = pyplot()

    labels = [x.decode() for x in run["run_labels"]]
    d, margin, change = run["divergence_step"], run["margin_top"], run["contested_change"]
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    bg_m, bg_c = run["background/margin"], run["background/change"]
    keep = (bg_m > 0) & (bg_c > 0)
    ax.scatter(
        bg_m[keep],
        bg_c[keep],
        s=6,
        color="0.75",
        label=f"agreeing steps (n={int(keep.sum())}; {int((~keep).sum())} with 0 change not shown)",
    )
    for q, (i, j) in enumerate(run["pairs"]):
        hit = d[q] >= 0
        if hit.any():
            ax.scatter(
                margin[q][hit, 0],
                change[q][hit],
                s=40,
                marker="o",
                edgecolor="k",
                zorder=3,
                label=f"flip at d: {labels[i]} vs {labels[j]}",
            )
    finite = np.concatenate([bg_m[keep], bg_c[keep], margin[..., 0][d >= 0], change[d >= 0]])
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if finite.size:
        lo, hi = finite.min() / 2, finite.max() * 2
        ax.plot([lo, hi], [lo, hi], color="C3", ls="--", lw=1, label="change = margin (flip possible above)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("top-1 − top-2 logit margin of run i (logit units, log)")
    ax.set_ylabel("|cross-run change of z(top-1) − z(top-2)| (logit units, log)")
    ax.set_title("exp4.divergence: margin vs cross-run logit change", fontsize=10)
    ax.legend(fontsize=6.5, loc="upper left")
    fig.tight_layout()
    path = save_figure(fig, out_dir, "divergence_scatter", run.task_id)
    return path


def _histogram(run: RunView, out_dir: Path) -> Path:
    """Margins at d in ULPs of the top-1 logit, log-binned, one colour per logits dtype; exact ties counted."""
    import numpy as np

    plt = pyplot()

    d, ties, pairs = run["divergence_step"], run["tie_ulps"], run["pairs"]
    dtypes = [x.decode() for x in run["run_dtypes"]]
    by_dtype: dict[str, list[float]] = {}
    for q, (i, j) in enumerate(pairs):
        for side, run_index in enumerate((i, j)):
            values = ties[q, :, side][(d[q] >= 0) & np.isfinite(ties[q, :, side])]
            by_dtype.setdefault(dtypes[run_index], []).extend(values.tolist())
    positive = [v for values in by_dtype.values() for v in values if v > 0]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    if positive:
        bins = np.geomspace(0.5, max(positive) * 2, 25)
        for n, (dtype, values) in enumerate(sorted(by_dtype.items())):
            arr = np.asarray(values)
            ax.hist(
                arr[arr > 0],
                bins=bins,
                color=f"C{n}",
                alpha=0.7,
                edgecolor="k",
                label=f"{dtype} side (n={arr.size}, exact ties: {int((arr == 0).sum())})",
            )
    ax.set_xscale("log")
    ax.set_xlabel("top-1 − top-2 margin at d (ULPs of the top-1 logit in the run's logits dtype, log)")
    ax.set_ylabel("count (pair × prompt × side)")
    never = int((d < 0).sum())
    ax.set_title(f"exp4.divergence: closeness to a tie at d ({never} pair×prompt never diverged)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = save_figure(fig, out_dir, "divergence_margins", run.task_id)
    return path


def plot_embedding_similarity(run: RunView, out_dir: Path) -> list[Path]:
    """Rows: prompts; columns: directions; relative L2 over depth per ε level, plus cross-run curves (red)."""
    plt = pyplot()

    groups = [(r, k) for r in sorted(run.group["perturb"]) for k in sorted(run.group[f"perturb/{r}/prompts"])]
    n_dirs = max(len(run.group[f"perturb/{r}/prompts/{k}/directions"]) for r, k in groups)
    fig, axes = plt.subplots(
        len(groups), n_dirs, figsize=(4.6 * n_dirs, 4.8 * len(groups)), squeeze=False, sharey="row"
    )
    for row, (r, key) in zip(axes, groups):
        g = run.group[f"perturb/{r}/prompts/{key}"]
        names = [x.decode() for x in g["directions"][()]]
        for di, (ax, name) in enumerate(zip(row, names)):
            _panel(ax, g["eps"][di], g["rel_l2"][di])
            _runs(ax, run, key)
            ax.set_title(f"prompt {int(key)}, direction {name}", fontsize=9)
            ax.set_xlabel("row: 0 = input emb., 1..L = layer, L+1 = final norm", fontsize=8)
            ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
        row[0].set_ylabel("‖h̃ − h‖ / ‖h‖ at the last position (log)")
    fig.suptitle(f"exp4.embedding_similarity — {run.label()} (colour: ε, dark = smallest)", fontsize=10)
    fig.tight_layout()
    path = save_figure(fig, out_dir, "embedding_similarity", run.task_id)
    return [path]


def _panel(ax: Any, eps: Any, rel: Any) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    cmap = plt.get_cmap("viridis")
    for li, e in enumerate(eps):
        if not np.isfinite(e):
            continue
        tag = " last identical" if li == len(eps) - 2 else " first diverged" if li == len(eps) - 1 else ""
        ax.semilogy(
            np.where(rel[li] > 0, rel[li], np.nan),
            color=cmap(li / max(len(eps) - 1, 1)),
            lw=1.2,
            ls="--" if li == len(eps) - 1 else "-",
            label=f"ε={e:.3g}{tag}",
        )


def _runs(ax: Any, run: RunView, key: str) -> None:
    import numpy as np

    if "runs" not in run.group:
        return
    for pair in sorted(run.group["runs"]):
        if key in run.group[f"runs/{pair}/prompts"]:
            h = run.group[f"runs/{pair}/prompts/{key}"]
            labels = [str(x).split(" ", 2)[-1] for x in h.attrs["labels"]]
            rel = h["rel_l2"][()]
            ax.semilogy(
                np.where(rel > 0, rel, np.nan),
                color="C3",
                lw=2,
                label=f"{labels[0]} vs {labels[1]}, step {int(h.attrs['step'])}",
            )


def plot_generate(run: RunView, out_dir: Path) -> list[Path]:
    """Per-step top-1/top-2 margin of every prompt (log scale): where a flip is cheap."""
    import numpy as np

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key in sorted(run.group["prompts"]):
        margin = run[f"prompts/{key}/margin"]
        ax.semilogy(np.arange(len(margin)), np.maximum(margin, 1e-8), lw=1, label=f"prompt {int(key)}")
    ax.set_xlabel("generation step")
    ax.set_ylabel("top-1 − top-2 logit (log)")
    ax.set_title(f"exp4.generate margins — {run.label()}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = save_figure(fig, out_dir, "generate_margins", run.task_id)
    return [path]


def plot_internals(run: RunView, out_dir: Path) -> list[Path]:
    """Per pair: relative L2 difference over layers (one line per replayed step) and a layer×step heatmap."""
    import numpy as np

    plt = pyplot()

    paths = []
    for q in sorted(run.group["pairs"]):
        pair = run.group[f"pairs/{q}"]
        keys = sorted(pair["prompts"])
        fig, axes = plt.subplots(len(keys), 2, figsize=(12, 3.4 * len(keys)), squeeze=False)
        for row, key in zip(axes, keys):
            g = pair[f"prompts/{key}"]
            steps, rel = g["steps"][()], g["rel_l2"][()]
            d = int(g.attrs["divergence_step"])
            layers = np.arange(rel.shape[1])
            for s, curve in zip(steps, rel):
                row[0].semilogy(
                    layers,
                    np.where(curve > 0, curve, np.nan),
                    marker=".",
                    lw=1,
                    label=f"step {s}" + (" = d" if s == d else ""),
                )
            row[0].set_xlabel("row: 0 = input embedding, 1..L = decoder layer, L+1 = final norm")
            row[0].set_ylabel("‖h_i − h_j‖ / ‖h_i‖")
            row[0].set_title(f"prompt {int(key)}: relative L2 difference over depth (d = {d})", fontsize=9)
            row[0].legend(fontsize=6, ncol=2)
            image = row[1].imshow(
                np.log10(np.where(rel > 0, rel, np.nan)),
                aspect="auto",
                origin="lower",
                cmap="magma",
                extent=(-0.5, rel.shape[1] - 0.5, steps[0] - 0.5, steps[-1] + 0.5),
            )
            fig.colorbar(image, ax=row[1], label="log10 relative L2 difference")
            row[1].set_xlabel("row (layer)")
            row[1].set_yticks(steps)
            row[1].set_ylabel("generation step s")
            row[1].set_title("relative L2 difference, layer × step (blank: identical)", fontsize=9)
        labels = [str(x) for x in pair.attrs["labels"]]
        fig.suptitle(f"exp4.internals — {labels[0]} vs {labels[1]}", fontsize=10)
        fig.tight_layout()
        path = save_figure(fig, out_dir, "internals", run.task_id, f"pair{q}")
        paths.append(path)
    return paths


def plot_perturb_until_divergence(run: RunView, out_dir: Path) -> list[Path]:
    """Threshold ε per prompt and direction (bracket as an error bar), coloured by divergence step."""
    import numpy as np

    plt = pyplot()

    keys = sorted(run.group["prompts"])
    fig, ax = plt.subplots(figsize=(8, 4.8))
    names = [x.decode() for x in run[f"prompts/{keys[0]}/directions"]]
    width = 0.8 / max(len(names), 1)
    for r, name in enumerate(names):
        xs = np.arange(len(keys)) + (r - (len(names) - 1) / 2) * width
        lo = np.array([run[f"prompts/{k}/eps_lower"][r] for k in keys])
        hi = np.array([run[f"prompts/{k}/eps_upper"][r] for k in keys])
        steps = [int(run[f"prompts/{k}/divergence_step"][r]) for k in keys]
        ax.vlines(xs, lo, hi, color=f"C{r}", lw=2)
        ax.scatter(xs, lo, marker="v", color=f"C{r}", s=30, label=f"{name}: last identical ε (▼), first diverged (▲)")
        ax.scatter(xs, hi, marker="^", color=f"C{r}", s=30)
        for xpos, top, step in zip(xs, hi, steps):
            if np.isfinite(top):
                ax.annotate(
                    f"d={step}", (xpos, top), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=6
                )
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(keys)), [f"prompt {int(k)}" for k in keys])
    ax.set_ylabel("ε (‖direction‖ = 1, embedding units, log)")
    ax.set_title(
        f"exp4.perturb_until_divergence — {run.label()}, scope {run.attrs.get('scope')}, {run.attrs.get('path')}",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = save_figure(fig, out_dir, "perturb_until_divergence", run.task_id)
    return [path]
