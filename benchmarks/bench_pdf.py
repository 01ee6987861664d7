"""Benchmark: PDF word prediction, teacher forcing (toolkit) vs one forward per word (upstream).

A `--pages`-page PDF (default 10) is generated deterministically: sentences written for this
benchmark, drawn by a seeded RNG, laid out with PyMuPDF.  Both methods score every word's first
token from the same context (the window the toolkit assigns the word: `--window` tokens every
`--stride`, at least `--min-context` tokens of context), on the packaged SmolLM2-135M in fp32
with eager attention, batch size 1, full recompute:

* teacher forcing (toolkit, `pdf.word_prediction`): one forward per window scores all the words
  assigned to it (`toolkit.numerics.teacher_forcing.forward_window` + `score_words`);
* per word (upstream method): one forward per word over exactly its preceding context in the
  window (full-sequence logits and the final hidden states, as upstream asked for), scored the
  same way.  The upstream script used the whole document prefix instead of a window — its
  forwards grow to the full document length, so it is slower still than this.

The per-word method is timed on `--naive-words` evenly spaced words (default 24) and extrapolated
to all words: on 2 CPU cores, all ~3,400 words would take about 4 hours.  Both wall time and
process CPU time are printed (one torch thread: CPU time is the work, wall time also counts
waiting for a busy machine).  It also prints how far
the two methods' probabilities are apart on that subset.  `--sample PATH` only writes the small
2-page sample PDF used by manifests/pdf_words.yaml and exits.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

SENTENCES = [
    "The river rose slowly after three days of rain, and the ferry stopped running before noon.",
    "A baker in the old quarter starts the ovens at four, long before the first customers arrive.",
    "Most maps of the valley still show the railway line that closed forty years ago.",
    "When the wind turns to the north, the harbour fills with small boats waiting for calm water.",
    "The committee met twice in March but could not agree on the colour of the new bridge.",
    "Children in the village learn to swim in the lake, which stays cold until late June.",
    "Every computer stores real numbers with a fixed number of binary digits.",
    "Adding a very small number to a very large one can leave the large number unchanged.",
    "The order in which numbers are added changes the rounding, so the sum can change too.",
    "Two graphics cards may split the same matrix product into different blocks of work.",
    "A language model turns its final hidden state into one score for every word piece.",
    "When the two highest scores are almost equal, a tiny rounding change can swap them.",
    "The library opens at nine on weekdays and closes early on the first Friday of each month.",
    "Her grandfather kept bees behind the barn and sold the honey at the Saturday market.",
    "The museum moved its collection of clocks to the east wing while the roof was repaired.",
    "Engineers tested the pump for six hours at full pressure before signing the report.",
    "Single precision keeps about seven decimal digits, and half precision only about three.",
    "Researchers repeat each measurement several times to see how much the result varies.",
    "A careful experiment records every setting that could change the outcome.",
    "The train from the coast arrives at half past eleven, unless the tunnel is closed for work.",
    "On clear nights the observatory lets visitors look at the rings of Saturn.",
    "The garden behind the school grows beans, potatoes and a few stubborn sunflowers.",
    "Nobody remembers why the clock on the church tower runs exactly seven minutes fast.",
    "The storm knocked down two old oak trees and cut the power for most of the evening.",
]
SAMPLE_PAGES = [
    "Numbers inside a computer are stored with a fixed number of binary digits. A sum such as one "
    "tenth plus two tenths is rounded at every step, so the result is close to, but not exactly, "
    "three tenths. Most of the time nobody notices. A language model, however, makes a long chain "
    "of decisions, and each one picks the word piece with the highest score.",
    "When two scores are almost tied, a difference in the last binary digit can decide which word "
    "comes next. After that, the two runs read different text and may never agree again. This "
    "short document exists only to give the toolkit something to read: every sentence was "
    "written for it, and it carries no copyright.",
]


def write_pdf(path: Path, pages: list[str]) -> Path:
    """One text box per page (Helvetica 11 pt, A4-like page)."""
    import pymupdf

    doc = pymupdf.open()
    for text in pages:
        page = doc.new_page()
        left = page.insert_textbox(pymupdf.Rect(60, 60, 535, 790), text, fontsize=11)
        if left < 0:
            raise ValueError(f"page text does not fit ({-left:.0f} points too long)")
    doc.save(str(path), garbage=4, deflate=True)
    doc.close()
    return path


def generated_pages(pages: int, words_per_page: int = 330, seed: int = 0) -> list[str]:
    """Deterministic page texts: seeded draws from SENTENCES until each page has enough words."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(pages):
        text: list[str] = []
        while sum(len(s.split()) for s in text) < words_per_page:
            text.append(SENTENCES[int(rng.integers(len(SENTENCES)))])
        out.append(" ".join(text))
    return out


def prepare(pdf: Path, window: int, stride: int, min_context: int, tokenizer: Any) -> dict[str, Any]:
    """Text, words, tokens and window assignment exactly as the experiment computes them."""
    import numpy as np

    from toolkit.numerics.teacher_forcing import assign_windows, word_token_spans
    from toolkit.pdftext import extract, split_words

    doc = extract(str(pdf))
    words, starts, ends = split_words(doc.text)
    enc = tokenizer(doc.text, return_offsets_mapping=True, verbose=False)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    token_start, token_end = word_token_spans(enc["offset_mapping"], starts, ends)
    window_start = assign_windows(token_start, token_end, window, stride, min_context)
    return {
        "words": words,
        "ids": ids,
        "token_start": token_start,
        "token_end": token_end,
        "window_start": window_start,
    }


def teacher_forcing(model: Any, data: dict[str, Any], window: int, norm: str) -> tuple[float, float, dict[int, float]]:
    """(wall s, process CPU s, word → p(first token)) scoring every word, one forward per window."""
    import numpy as np
    import torch

    from toolkit.numerics.teacher_forcing import forward_window, score_words

    ids_t = torch.as_tensor(data["ids"])[None]
    unembed = model.get_output_embeddings().weight
    probs: dict[int, float] = {}
    start, cpu = time.perf_counter(), time.process_time()
    for s in sorted({int(s) for s in data["window_start"] if s >= 0}):
        members = np.flatnonzero(data["window_start"] == s)
        logits, hidden = forward_window(model, ids_t[:, s : s + window], norm)
        spans = [(int(data["token_start"][w]), int(data["token_end"][w])) for w in members]
        with torch.inference_mode():
            rows = score_words(logits, hidden, unembed, data["ids"], spans, s, 10)
        probs.update(zip(members.tolist(), rows["prob"].tolist()))
    return time.perf_counter() - start, time.process_time() - cpu, probs


def per_word(model: Any, data: dict[str, Any], picks: Any, norm: str) -> tuple[float, float, dict[int, float]]:
    """(wall s, process CPU s, word → p(first token)) with one forward per word over exactly its prefix."""
    import torch

    from toolkit.numerics.teacher_forcing import forward_window, score_words

    ids_t = torch.as_tensor(data["ids"])[None]
    unembed = model.get_output_embeddings().weight
    probs: dict[int, float] = {}
    start, cpu = time.perf_counter(), time.process_time()
    for w in picks:
        s, j = int(data["window_start"][w]), int(data["token_start"][w])
        logits, hidden = forward_window(model, ids_t[:, s:j], norm)
        with torch.inference_mode():
            probs[int(w)] = float(score_words(logits, hidden, unembed, data["ids"], [(j, j + 1)], s, 10)["prob"][0])
    return time.perf_counter() - start, time.process_time() - cpu, probs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--min-context", type=int, default=64)
    parser.add_argument("--naive-words", type=int, default=24, help="words timed with the per-word method")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared 2-core machine: 1)")
    parser.add_argument("--sample", type=Path, help="only write the 2-page sample PDF to this path")
    args = parser.parse_args()
    if args.sample:
        write_pdf(args.sample, SAMPLE_PAGES)
        print(f"wrote {args.sample} ({args.sample.stat().st_size} bytes)")
        return 0

    import numpy as np
    import torch

    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models.loading import load
    from toolkit.numerics.hooks import final_norm_name
    from toolkit.numerics.teacher_forcing import forward_window

    torch.set_num_threads(args.threads)
    model, tokenizer, _ = load(
        ModelSpec(source="smollm2-135m", device="cpu"),
        Numerics(dtype="float32", attn_implementation="eager", kv_cache=False),
    )
    norm = final_norm_name(model)
    with tempfile.TemporaryDirectory() as tmp:
        pdf = write_pdf(Path(tmp) / "bench.pdf", generated_pages(args.pages))
        data = prepare(pdf, args.window, args.stride, args.min_context, tokenizer)
    scored = np.flatnonzero(data["window_start"] >= 0)
    n_windows = len(set(data["window_start"][scored].tolist()))
    print(
        f"{args.pages} pages: {len(data['words'])} words ({len(scored)} scored), {len(data['ids'])} tokens; "
        f"window {args.window}, stride {args.stride}, min_context {args.min_context}; torch threads {args.threads}"
    )
    forward_window(model, torch.as_tensor(data["ids"][:16])[None], norm)  # warm-up
    tf_s, tf_cpu, tf_probs = teacher_forcing(model, data, args.window, norm)
    picks = scored[np.linspace(0, len(scored) - 1, min(args.naive_words, len(scored))).astype(int)]
    pw_s, pw_cpu, pw_probs = per_word(model, data, picks, norm)
    tf_rate, pw_rate = len(scored) / tf_s, len(picks) / pw_s
    diff = max(abs(pw_probs[w] - tf_probs[w]) for w in pw_probs)
    print(
        f"teacher forcing: {n_windows} forwards, {tf_s:.1f} s wall ({tf_cpu:.1f} s CPU) for {len(scored)} words "
        f"= {tf_rate:.1f} words/s ({len(scored) / tf_cpu:.1f} per CPU s)"
    )
    print(
        f"per word:        {len(picks)} forwards, {pw_s:.1f} s wall ({pw_cpu:.1f} s CPU) for {len(picks)} words "
        f"= {pw_rate:.2f} words/s ({len(picks) / pw_cpu:.2f} per CPU s); all {len(scored)} words: "
        f"~{len(scored) / pw_rate / 60:.0f} min (extrapolated)"
    )
    cpu_ratio = (len(scored) / tf_cpu) / (len(picks) / pw_cpu)
    print(
        f"ratio: teacher forcing is {tf_rate / pw_rate:.0f}x faster (wall), {cpu_ratio:.0f}x (CPU); "
        f"max |Δp| on the {len(picks)} words: {diff:.2g}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
