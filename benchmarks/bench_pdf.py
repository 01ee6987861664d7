"""Benchmark: PDF word prediction end to end, `toolkit submit` (teacher forcing) vs one forward per word.

A `--pages`-page PDF (default 10, `--words-per-page` 560: about 5,600 words) is generated
deterministically: sentences written for this benchmark, drawn by a seeded RNG, laid out with
PyMuPDF.  Both methods score every word's first token from the same context (the window the
toolkit assigns the word at `pdf.word_prediction`'s default params: window 512, stride 256, at
least 128 tokens of context), on the packaged SmolLM2-135M in fp32, batch size 1, full recompute:

* toolkit, end to end: `python -m toolkit.cli submit` of a manifest with pdf.word_prediction at
  its default params (its run-time per-prefix check of `check_words` words and its checkpoints included);
  wall time of the command;
* per word (upstream method), end to end: one forward per word over exactly its preceding context
  in the window (full-sequence logits and the final hidden states, as upstream asked for), scored
  the same way, timed in this process on `--naive-words` evenly spaced words (default 24) and
  extrapolated to all words, plus the wall time of a fresh process that imports torch and
  transformers and loads the model (what the upstream script pays once).  The upstream script
  used the whole document prefix instead of a window — slower still than this.

Prints both, the ratio, and the largest probability difference between the store and the per-word
forwards on the timed words.  `--inner` adds teacher forcing timed in this process.  `--sample
PATH` only writes the small 2-page sample PDF used by manifests/pdf_words.yaml and exits.
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


def generated_pages(pages: int, words_per_page: int = 560, seed: int = 0) -> list[str]:
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


def forward_window(model: Any, ids: Any, norm_name: str) -> tuple[Any, Any]:
    """(logits [T, V], final-norm output [T, D]) of one full forward over `ids` [1, T], native dtype:
    the upstream method's forward (logits on every row)."""
    import torch

    from toolkit.numerics.hooks import capture

    with torch.inference_mode(), capture(model, [norm_name], last_position_only=False) as captured:
        out = model(input_ids=ids, use_cache=False)
    return out.logits[0], captured[norm_name][0]


def teacher_forcing(model: Any, data: dict[str, Any], window: int, norm: str) -> tuple[float, float, dict[int, float]]:
    """(wall s, process CPU s, word → p(first token)) scoring every word, one forward per window."""
    import numpy as np
    import torch

    from toolkit.numerics.teacher_forcing import score_words

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

    from toolkit.numerics.teacher_forcing import score_words

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


def toolkit_end_to_end(pdf: Path, root: Path, threads: int) -> tuple[float, Path]:
    """(wall s of `toolkit submit` of pdf.word_prediction at its default params, the store)."""
    import os
    import subprocess
    import sys

    manifest = root / "pdf.yaml"
    manifest.write_text(
        f"campaign: bench-pdf\noutput: {root / 'campaigns'}\nmodel: {{source: smollm2-135m, dtype: float32}}\n"
        f"targets: [cpu]\nexperiments:\n  - name: pdf.word_prediction\n    params: {{pdf_path: {pdf}}}\n"
    )
    cmd = [sys.executable, "-m", "toolkit.cli", "submit", str(manifest), "--executor", "local", "--no-plot"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench_pdf: toolkit submit failed:\n{proc.stderr[-3000:]}")
    return seconds, root / "campaigns" / "bench-pdf" / "store.h5"


def process_start_and_load(threads: int) -> float:
    """Wall s of a fresh process that imports torch + transformers and loads the packaged model:
    the fixed cost the naive script pays once, as `toolkit submit` does."""
    import os
    import subprocess
    import sys

    code = (
        "import torch, transformers\nfrom toolkit.models.loading import prepare_packaged\n"
        "transformers.AutoModelForCausalLM.from_pretrained(prepare_packaged(), dtype=torch.float32)"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return time.perf_counter() - start


def main() -> int:
    from toolkit.experiments.pdf.word_prediction import Params

    defaults = Params(pdf_path="-")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--words-per-page", type=int, default=560, help="default 560: 10 pages ~ 5,600 words")
    parser.add_argument("--naive-words", type=int, default=24, help="words timed with the per-word method")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared 2-core machine: 1)")
    parser.add_argument("--inner", action="store_true", help="also time teacher forcing in this process")
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
    from toolkit.store.reader import Store

    torch.set_num_threads(args.threads)
    window, stride, min_context = defaults.window, defaults.stride, defaults.min_context
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pdf = write_pdf(root / "bench.pdf", generated_pages(args.pages, args.words_per_page))
        ours_s, store_path = toolkit_end_to_end(pdf, root, args.threads)
        with Store(store_path) as store:
            (run,) = store.runs("pdf.word_prediction")
            stored_prob, stored_scored = run.group["prob"][()], run.group["scored"][()]
        fixed_s = process_start_and_load(args.threads)
        model, tokenizer, _ = load(
            ModelSpec(source="smollm2-135m", device="cpu"),
            Numerics(dtype="float32", attn_implementation="eager", kv_cache=False),
        )
        norm = final_norm_name(model)
        data = prepare(pdf, window, stride, min_context, tokenizer)
    scored = np.flatnonzero(data["window_start"] >= 0)
    if not np.array_equal(np.flatnonzero(stored_scored), scored):
        raise SystemExit("bench_pdf: the store scored other words than the window assignment here")
    n_windows = len(set(data["window_start"][scored].tolist()))
    print(
        f"{args.pages} pages: {len(data['words'])} words ({len(scored)} scored), {len(data['ids'])} tokens; "
        f"defaults window {window}, stride {stride}, min_context {min_context}; torch threads {args.threads}"
    )
    forward_window(model, torch.as_tensor(data["ids"][:16])[None], norm)  # warm-up
    picks = scored[np.linspace(0, len(scored) - 1, min(args.naive_words, len(scored))).astype(int)]
    pw_s, pw_cpu, pw_probs = per_word(model, data, picks, norm)
    naive_s = fixed_s + pw_s * len(scored) / len(picks)
    diff = max(abs(pw_probs[w] - float(stored_prob[w])) for w in pw_probs)
    print(
        f"per word (upstream): {len(picks)} forwards in {pw_s:.1f} s wall ({pw_cpu:.1f} s CPU); all {len(scored)} "
        f"words + process start and model load ({fixed_s:.1f} s): ~{naive_s:.0f} s (extrapolated)"
    )
    print(f"toolkit submit (pdf.word_prediction, default params, {n_windows} windows): {ours_s:.1f} s end to end")
    print(f"ratio end to end: {naive_s / ours_s:.0f}x; max |Δp| store vs per word, {len(picks)} words: {diff:.2g}")
    if args.inner:
        tf_s, tf_cpu, _ = teacher_forcing(model, data, window, norm)
        print(
            f"inner: teacher forcing {tf_s:.1f} s wall ({tf_cpu:.1f} s CPU) for {len(scored)} words; "
            f"per word {pw_s * len(scored) / len(picks):.0f} s; ratio {pw_s * len(scored) / len(picks) / tf_s:.0f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
