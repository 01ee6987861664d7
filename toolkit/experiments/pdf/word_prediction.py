"""pdf.word_prediction — how well the model predicts each word of a PDF from the text before it.

Text of pages first_page..last_page (`toolkit.pdftext`: PyMuPDF, whitespace collapsed by
default) is cut into whitespace-separated words and tokenised ONCE with char offsets, so each
word's tokens are its tokens in context (`toolkit.numerics.teacher_forcing`).  One full forward
per context window of `window` tokens (starts every `stride` tokens, batch size 1, no KV cache)
scores every word assigned to it (teacher forcing): the word's first token is predicted from
everything before it in the window, its later tokens from the true earlier ones.  A word is
scored in the window where it has the most left context, at least `min_context` tokens (or all
of the text before it, near the start).  Per word: logit, probability (float64 softmax of the
native logits), rank, top-k and top-1 match of the true first token, the top-1/top-2 margin, the
joint log-probability of all its tokens, and the cosine between the lm_head input at the
predicting position and the true token's unembedding row.

`lm_head` runs only on the rows the window's words read, once the first window showed those rows
bitwise equal to the logits of every row (`toolkit.numerics.teacher_forcing.WindowLogits`, attr
`logits_rows`): the stored values are those of a plain full forward of each window.

This is the fast path: a position's logits inside a longer window are not bitwise those of a
forward of exactly its prefix (other matmul shapes round differently).  `check_words` words are
recomputed per prefix (the upstream method) at run time and the largest differences stored.
Each finished window is checkpointed; a killed task resumes with the windows it had finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.experiments.pdf.figures import plot_word_prediction as plot  # noqa: F401 (re-export for the registry)

if TYPE_CHECKING:
    from toolkit.context import CheckedGroup, RunContext
    from toolkit.numerics.teacher_forcing import WindowLogits
    from toolkit.progress import Progress

PER_TARGET = True
NEEDS_MODEL = True
READS: tuple[str, ...] = ()
READS_PROMPTS = False
NEEDS_EAGER_ATTENTION = False
DIMS = {"N": "word", "T": "token", "C": "char"}  # names of the STORES letters (toolkit.store.dims)
STORES = {
    "words": "[N] fixed-length UTF-8 strings: the whitespace-separated words, in text order",
    "word_index / char_start / char_end / page": "[N] int: position, [start, end) code points in text, page",
    "token_start / token_end": "[N] int64 [start, end) token span of the word in input_ids (-1: none)",
    "window_start / context_tokens": "[N] int64 window the word was scored in, tokens of left context (-1)",
    "scored / top1_match / shared_token": "[N] bool scored; greedy top-1 == true first token; token shared",
    "true_id / rank": "[N] int64 true first token id; 1 + number of logits strictly above its logit",
    "logit / prob / logprob_first": "[N] float64 native logit, probability and log-probability of it",
    "logprob_word": "[N] float64 joint log-probability of all the word's tokens (teacher forcing)",
    "margin / cosine": "[N] float64 top-1 − top-2 logit; cos(lm_head input, unembedding row of true id)",
    "topk_ids / topk_probs": "[N,K] int64 / float64 the K most likely first tokens (ties by id)",
    "input_ids / offsets / windows": "[T] / [T,2] / [W] int64 tokens of the text, their char spans, window starts",
    "text_utf8": "[C] uint8 the extracted text (UTF-8), which char offsets index (as code points)",
}
INT_FIELDS = ("true_id", "rank")
FLOAT_FIELDS = ("logit", "prob", "logprob_first", "logprob_word", "margin", "cosine")


@dataclass(frozen=True)
class Params:
    """pdf_path (relative: from the manifest's folder); pages first_page..last_page (1-based,
    last_page null = to the end); normalize_whitespace collapses whitespace runs to one space;
    context windows of `window` tokens every `stride` tokens, a word scored with ≥ min_context
    tokens of context; top_k first-token candidates kept; check_words words recomputed per
    prefix at run time to measure the teacher-forcing difference (0: no check; each is one
    forward of the upstream method, so 8 keep the check near a sixth of a 10-page run)."""

    pdf_path: str
    first_page: int = 1
    last_page: int | None = None
    normalize_whitespace: bool = True
    window: int = 512
    stride: int = 256
    min_context: int = 128
    top_k: int = 10
    check_words: int = 8
    PATH_FIELDS = ("pdf_path",)

    def check(self) -> list[tuple[str, str]]:
        from toolkit.experiments.checks import between

        problems: list[tuple[str, str]] = []
        between(problems, "window", self.window, 2, 1_000_000, unit=" tokens")
        if not 1 <= self.min_context < self.window:
            problems.append(
                ("min_context", f"must be between 1 and window - 1 ({self.window - 1}), got {self.min_context}")
            )
        elif not 1 <= self.stride <= self.window - self.min_context:
            problems.append(
                (
                    "stride",
                    f"must be between 1 and window - min_context ({self.window - self.min_context})"
                    f" so every word gets min_context tokens of context, got {self.stride}",
                )
            )
        between(problems, "top_k", self.top_k, 1, 1000)
        between(problems, "check_words", self.check_words, 0, 100_000)
        if self.first_page < 1:
            problems.append(("first_page", f"must be >= 1 (pages count from 1), got {self.first_page}"))
        elif self.last_page is not None and self.last_page < self.first_page:
            problems.append(("last_page", f"must be >= first_page ({self.first_page}) or null, got {self.last_page}"))
        if not problems:
            from toolkit.pdftext import pdf_problems

            problems += pdf_problems(self.pdf_path, self.first_page, self.last_page)
        return problems


def run(ctx: RunContext, params: Params) -> None:
    """Score every word of the PDF's pages, one forward per window; see the module docstring."""
    import hashlib

    import numpy as np

    from toolkit.numerics.teacher_forcing import WindowLogits, assign_windows, word_token_spans
    from toolkit.pdftext import extract, split_words

    doc = extract(params.pdf_path, params.first_page, params.last_page, params.normalize_whitespace)
    words, char_start, char_end = split_words(doc.text)
    ids, offsets = _tokenize(ctx, doc.text, params.window)
    token_start, token_end = word_token_spans(offsets, char_start, char_end)
    window_start = assign_windows(token_start, token_end, params.window, params.stride, params.min_context)
    windows = sorted({int(s) for s in window_start if s >= 0})
    run_key = hashlib.sha256(doc.sha256.encode() + ids.tobytes() + window_start.tobytes()).hexdigest()
    bar = ctx.progress(len(windows) + params.check_words)
    head = WindowLogits()
    rows, resumed = _score_windows(ctx, params, ids, token_start, token_end, window_start, windows, run_key, head, bar)
    table = _table(len(words), params.top_k, rows)
    scored = window_start >= 0
    shared = np.zeros(len(words), dtype=bool)
    shared[1:] = (token_start[1:] >= 0) & (token_start[1:] < token_end[:-1])
    table.update(
        {
            "word_index": np.arange(len(words), dtype=np.int64),
            "char_start": char_start,
            "char_end": char_end,
            "page": doc.page_of(char_start),
            "token_start": token_start,
            "token_end": token_end,
            "window_start": window_start,
            "context_tokens": np.where(scored, token_start - window_start, -1),
            "scored": scored,
            "shared_token": shared,
            "input_ids": ids,
            "offsets": offsets,
            "windows": np.asarray(windows, dtype=np.int64),
            "text_utf8": np.frombuffer(doc.text.encode("utf-8"), dtype=np.uint8),
        }
    )
    check = _prefix_check(ctx, params, ids, table, head, bar)
    _write(ctx.out, words, table)
    _attrs(ctx, params, doc, table, windows, resumed, check, head.note)
    bar.update(bar.total - bar.done)


def _tokenize(ctx: RunContext, text: str, window: int) -> tuple[Any, Any]:
    """(input ids [T], char offsets [T, 2]) of the whole text, tokenizer defaults (BOS if it adds one)."""
    import numpy as np

    if not getattr(ctx.tokenizer, "is_fast", False):
        raise ValueError("pdf.word_prediction needs a fast tokenizer (char offsets); this model's is slow")
    limit = getattr(ctx.model.config, "max_position_embeddings", None)
    if limit is not None and window > limit:
        raise ValueError(f"window = {window} exceeds the model's max_position_embeddings ({limit}); lower window")
    enc = ctx.tokenizer(text, return_offsets_mapping=True, verbose=False)
    return (
        np.asarray(enc["input_ids"], dtype=np.int64),
        np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2),
    )


def _score_windows(
    ctx: RunContext,
    params: Params,
    ids: Any,
    token_start: Any,
    token_end: Any,
    window_start: Any,
    windows: list[int],
    run_key: str,
    head: WindowLogits,
    bar: Progress,
) -> tuple[dict[int, dict[str, Any]], int]:
    """Rows of every window: loaded from the checkpoint when a finished copy exists, else computed."""
    import numpy as np
    import torch

    from toolkit import faults
    from toolkit.numerics.teacher_forcing import needed_rows, score_words

    unembed = ctx.model.get_output_embeddings().weight
    ids_t = torch.as_tensor(ids, device=ctx.device)[None]
    rows: dict[int, dict[str, Any]] = {}
    resumed = 0
    for s in windows:
        key = f"window_{s:010d}"
        members = np.flatnonzero(window_start == s)
        saved = _load(ctx.checkpoint, key, run_key)
        if saved is not None:
            rows[s], resumed = saved, resumed + 1
        else:
            spans = [(int(token_start[w]), int(token_end[w])) for w in members]
            read = needed_rows(spans, s)
            logits, hidden = head(ctx.model, ids_t[:, s : s + params.window], read)
            with torch.inference_mode():
                scores = score_words(logits, hidden, unembed, ids, spans, s, params.top_k, held=read)
                rows[s] = {**scores, "word": members}
            if ctx.checkpoint is not None:
                ctx.checkpoint.save(key, rows[s], {"run_key": run_key})
            faults.checkpoint("pdf-window")  # crash tests: TOOLKIT_FAULT=pdf-window:<n>
        bar.update()
    return rows, resumed


def _load(checkpoint: Any, key: str, run_key: str) -> dict[str, Any] | None:
    """A saved window's rows, or None (none saved, or saved for another text: recomputed)."""
    if checkpoint is None or not checkpoint.has(key):
        return None
    arrays, attrs = checkpoint.load(key)
    value = attrs.get("run_key")
    return arrays if (value.decode() if isinstance(value, bytes) else value) == run_key else None


def _table(n: int, top_k: int, rows: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per-word arrays of length n (unscored words: NaN, −1, False), filled from the window rows."""
    import numpy as np

    table: dict[str, Any] = {name: np.full(n, np.nan) for name in FLOAT_FIELDS}
    table.update({name: np.full(n, -1, dtype=np.int64) for name in INT_FIELDS})
    table["top1_match"] = np.zeros(n, dtype=bool)
    table["topk_ids"] = np.full((n, top_k), -1, dtype=np.int64)
    table["topk_probs"] = np.full((n, top_k), np.nan)
    for part in rows.values():
        for name in table:
            table[name][part["word"]] = part[name]
    return table


def _prefix_check(
    ctx: RunContext, params: Params, ids: Any, table: dict[str, Any], head: WindowLogits, bar: Progress
) -> dict[str, Any]:
    """Recompute `check_words` evenly spaced scored words per prefix; the largest differences.
    The prefix's logits are those of its last `head.min_rows` rows when `head` proved row subsets of
    that size exact (then bitwise those of all rows), else of every row."""
    import numpy as np
    import torch

    scored = np.flatnonzero(table["scored"])
    picks = (
        np.unique(scored[np.linspace(0, len(scored) - 1, min(params.check_words, len(scored))).astype(int)])
        if len(scored) and params.check_words
        else np.zeros(0, dtype=np.int64)
    )
    ids_t = torch.as_tensor(ids, device=ctx.device)[None]
    logit_diff, prob_diff, agree = 0.0, 0.0, 0
    for w in picks:
        s, j = int(table["window_start"][w]), int(table["token_start"][w])
        tail = head.min_rows if head.proved and head.min_rows else j - s  # lm_head on the last rows only, as proved
        rows = np.arange(max(0, j - s - tail), j - s)
        logits, _ = head(ctx.model, ids_t[:, s:j], rows)
        row = logits[-1]
        prob = float(torch.softmax(row.double(), dim=0)[int(ids[j])])
        logit_diff = max(logit_diff, abs(float(row[int(ids[j])].double()) - float(table["logit"][w])))
        prob_diff = max(prob_diff, abs(prob - float(table["prob"][w])))
        agree += int(int(torch.argmax(row)) == int(table["topk_ids"][w, 0]))
        bar.update()
    return {"words": len(picks), "top1_agree": agree, "max_abs_logit_diff": logit_diff, "max_abs_prob_diff": prob_diff}


def _write(out: CheckedGroup, words: list[str], table: dict[str, Any]) -> None:
    import h5py
    import numpy as np

    encoded = [w.encode("utf-8") for w in words]
    width = max((len(b) for b in encoded), default=1)
    out.create_dataset(
        "words",
        data=np.array(encoded, dtype=h5py.string_dtype("utf-8", width)),
        compression="gzip" if encoded else None,
    )
    for name, value in table.items():
        big = np.asarray(value).size > 4096
        out.create_dataset(name, data=value, compression="gzip" if big else None, shuffle=big)


def _attrs(
    ctx: RunContext,
    params: Params,
    doc: Any,
    table: dict[str, Any],
    windows: list[int],
    resumed: int,
    check: dict[str, Any],
    logits_rows: str,
) -> None:
    import json

    import numpy as np

    out = ctx.out
    scored = table["scored"]
    out.attrs.update(
        {
            "pdf_path": params.pdf_path,
            "pdf_sha256": doc.sha256,
            "page_count": doc.page_count,
            "pages": f"{doc.first_page}-{doc.last_page}",
            "text_chars": len(doc.text),
            "n_words": int(scored.size),
            "n_scored": int(scored.sum()),
            "n_tokens": int(table["input_ids"].size),
            "windows_run": len(windows),
            "windows_resumed": resumed,
            "word_rule": "maximal runs of non-whitespace characters (str.split); numbers and punctuation kept",
            "token_rule": (
                "text tokenised once with offsets; a token belongs to every word whose characters it overlaps"
            ),
            "window_rule": "smallest window start (a multiple of stride) holding the whole word with >= min_context "
            "tokens before it, or start 0",
            "forward_path": "one full forward per window, batch size 1, no KV cache (numerics.kv_cache unused)",
            "logits": f"full-sequence logits in the model dtype ({ctx.numerics.dtype}); softmax in float64",
            "logits_rows": logits_rows,
            "hidden_source": "output of the final norm (the lm_head input), float64 cosine",
            "tie_rule": "top-1/top-k: stable sort of the logits, lowest id first among equal values",
            "method": "teacher forcing (fast: not bitwise equal to a forward of each prefix; see prefix_check)",
            "prefix_check": json.dumps(check),
        }
    )
    acc = float(np.mean(table["top1_match"][scored])) if scored.any() else float("nan")
    out.attrs["summary"] = (
        f"{int(scored.sum())}/{scored.size} words scored in {len(windows)} window(s) ({resumed} resumed); "
        f"top-1 accuracy {acc:.3f}; median p(first token) {np.nanmedian(table['prob']) if scored.any() else 0:.3g}; "
        f"prefix check: top-1 agree {check['top1_agree']}/{check['words']}, "
        f"max |Δlogit| {check['max_abs_logit_diff']:.3g}, max |Δp| {check['max_abs_prob_diff']:.3g}"
    )
