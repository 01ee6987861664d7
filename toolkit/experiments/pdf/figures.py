"""Figures and the CSV table of a `pdf.word_prediction` run, from the store only (no model).

The CSV is written beside the PNG under the same naming rule (`words_<task>.csv`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.experiments.figsave import pyplot, save_figure

if TYPE_CHECKING:
    from toolkit.context import RunView

# One line per figure name (figsave's naming rule): what is plotted and which colour is which;
# `toolkit report` prints it under the figure.
CAPTIONS: dict[str, str] = {
    "words": (
        "Top: probability of each word's first token given the text before it (grey dots: one word; blue: "
        "rolling mean; orange: rolling top-1 accuracy; dotted lines: page breaks); bottom left, histogram of "
        "the true token's rank (1 = greedy prediction); bottom right, cosine of the lm_head input with the "
        "true token's unembedding vs ln p (green: top-1 hit, red: miss)."
    ),
}


CSV_COLUMNS = (
    "word_index",
    "word",
    "page",
    "char_start",
    "char_end",
    "token_start",
    "token_end",
    "n_tokens",
    "window_start",
    "context_tokens",
    "scored",
    "shared_token",
    "true_id",
    "logit",
    "prob",
    "logprob_first",
    "logprob_word",
    "rank",
    "top1_match",
    "top1_id",
    "top1_prob",
    "margin",
    "cosine",
)


def words_of(run: RunView) -> list[str]:
    """The stored words as Python strings."""
    return [w.decode("utf-8") if isinstance(w, bytes) else str(w) for w in run["words"]]


def write_csv(run: RunView, path: Path) -> Path:
    """One row per word (all words; unscored ones have empty values), columns CSV_COLUMNS."""
    import csv

    import numpy as np

    cols = {name: run[name] for name in CSV_COLUMNS if name in run}
    cols["word"] = words_of(run)
    cols["n_tokens"] = np.where(cols["token_start"] >= 0, cols["token_end"] - cols["token_start"], 0)
    cols["top1_id"] = run["topk_ids"][:, 0] if run["topk_ids"].shape[1] else np.full(len(cols["word"]), -1)
    cols["top1_prob"] = run["topk_probs"][:, 0] if run["topk_probs"].shape[1] else np.full(len(cols["word"]), np.nan)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for i, scored in enumerate(cols["scored"]):
            writer.writerow([_cell(cols[name][i], bool(scored), name) for name in CSV_COLUMNS])
    return path


def _cell(value: Any, scored: bool, name: str) -> Any:
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else repr(float(value))  # repr: round-trips the float64 exactly
    if not scored and name in ("true_id", "rank", "top1_id", "window_start", "context_tokens"):
        return ""
    return value.item() if isinstance(value, np.generic) else value


def rolling_mean(values: Any, width: int) -> Any:
    """Centred moving average over `width` points ignoring NaN (NaN where a window holds none)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    kernel = np.ones(width)
    sums = np.convolve(np.where(ok, values, 0.0), kernel, mode="same")
    counts = np.convolve(ok.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def plot_word_prediction(run: RunView, out_dir: Path) -> list[Path]:
    """words_<task>.png (three panels) and words_<task>.csv."""
    import numpy as np

    plt = pyplot()

    scored = run["scored"]
    index, prob, page = run["word_index"][scored], run["prob"][scored], run["page"][scored]
    match, rank = run["top1_match"][scored], run["rank"][scored]
    fig = plt.figure(figsize=(11, 7.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.05], hspace=0.38, wspace=0.25)
    _trace(fig.add_subplot(grid[0, :]), index, prob, match, page)
    _ranks(fig.add_subplot(grid[1, 0]), rank)
    _scatter(fig.add_subplot(grid[1, 1]), run["cosine"][scored], run["logprob_first"][scored], match)
    acc = float(np.mean(match)) if match.size else float("nan")
    fig.suptitle(
        f"pdf.word_prediction — {Path(str(run.attrs.get('pdf_path', '?'))).name}, pages "
        f"{run.attrs.get('pages', '?')} — {run.label()}\n{int(scored.sum())} of {scored.size} words scored, "
        f"top-1 accuracy {acc:.3f}",
        fontsize=10,
    )
    png = save_figure(fig, out_dir, "words", run.task_id)
    return [png, write_csv(run, out_dir / f"words_{run.task_id}.csv")]


def _trace(ax: Any, index: Any, prob: Any, match: Any, page: Any) -> None:
    import numpy as np

    width = int(min(50, max(5, len(prob) // 20)))
    ax.scatter(index, prob, s=5, color="0.55", alpha=0.6, lw=0, label="one word", rasterized=True)
    ax.plot(index, rolling_mean(prob, width), color="C0", lw=1.6, label=f"mean p, {width}-word rolling window")
    ax.plot(
        index,
        rolling_mean(match.astype(float), width),
        color="C1",
        lw=1.2,
        ls="--",
        label=f"top-1 accuracy, {width}-word rolling window",
    )
    for p in np.unique(page)[1:]:
        ax.axvline(index[np.argmax(page == p)], color="0.3", lw=0.6, ls=":")
    ax.set_ylim(-0.02, 1.22)  # headroom for the legend above the data
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel("word index in the document (dotted lines: page breaks)")
    ax.set_ylabel("p(true first token)")
    ax.set_title("probability of each word's first token given the text before it", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=3, markerscale=3)


def _ranks(ax: Any, rank: Any) -> None:
    import numpy as np

    top = max(int(rank.max()) if rank.size else 1, 2)
    edges = np.unique(np.concatenate([[0.5, 1.5], 2.0 ** np.arange(1, np.ceil(np.log2(top)) + 2) + 0.5]))
    ax.hist(rank, bins=edges, color="C0", edgecolor="white")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rank of the true first token (1 = greedy prediction; log bins)")
    ax.set_ylabel("number of words")
    ax.set_title(f"rank histogram (rank 1: {int(np.sum(rank == 1))} of {rank.size})", fontsize=9)


def _scatter(ax: Any, cosine: Any, logprob: Any, match: Any) -> None:
    for hit, color, label in ((False, "C3", "top-1 miss"), (True, "C2", "top-1 hit")):
        sel = match == hit
        ax.scatter(cosine[sel], logprob[sel], s=6, alpha=0.6, color=color, lw=0, label=f"{label} ({int(sel.sum())})")
    ax.set_xlabel("cos(lm_head input, unembedding row of the true token)")
    ax.set_ylabel("ln p(true first token)")
    ax.set_title("alignment with the true token vs its log-probability", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
