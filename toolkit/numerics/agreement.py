"""Agreement of repeated greedy generations, measured as the field reports it (numpy only).

The definitions, their sources and the conventions chosen where a source leaves one open are in
docs/field_metrics.md; each function's docstring names its source.  A completion is a 1-D sequence
of token ids (the generated part only, never the prompt); completions may differ in length (one
stopped at EOS).  Every function here is pure arithmetic on ids and margins, so exp4.compare (runs
of exp4.generate) and exp4.census (completions of one prompt inside drawn batches) report the same
numbers the same way.

- `unique_completions`: distinct token sequences among N completions (Thinking Machines,
  "Defeating Nondeterminism in LLM Inference", 2025: 80 unique of 1,000).
- `modal_completion`: the most common completion (ties: the one that occurs first).
- `first_divergence`: first position where two completions differ (one ending counts as differing).
- `tarr_at_n`: TARr@N, the fraction of inputs whose N raw outputs are all identical (Atil et al.,
  "Non-Determinism of 'Deterministic' LLM Settings", arXiv 2408.04667).
- `flip_mask` / `flip_rate` / `free_running_flips`: per-step flip rate, the fraction of decode steps
  whose argmax differs between two configurations given the same tokens so far (MarginGate,
  arXiv 2605.30218, as summarised in the project's field notes).
- `margin_split`: margins at flip steps against margins at all steps (MarginGate).
- `survival_curve`: fraction of pairs still identical after t tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np  # numpy only (like toolkit.numerics.fpunits): cheap to import, no torch

Completion: TypeAlias = "Sequence[int] | np.ndarray"


def _key(completion: Completion) -> tuple[int, ...]:
    return tuple(int(t) for t in np.asarray(completion, dtype=np.int64).ravel())


def completion_classes(completions: Sequence[Completion]) -> np.ndarray:
    """Class id [N] int64 of each completion: equal token sequences share an id; ids are numbered in
    order of first occurrence (completion 0 is in class 0)."""
    ids: dict[tuple[int, ...], int] = {}
    return np.array([ids.setdefault(_key(c), len(ids)) for c in completions], dtype=np.int64)


def unique_completions(completions: Sequence[Completion]) -> int:
    """Number of distinct token sequences among the completions ("unique completions of N",
    Thinking Machines 2025); two sequences are equal iff they have the same length and ids."""
    return len({_key(c) for c in completions})


def modal_completion(completions: Sequence[Completion]) -> int:
    """Index of the most common completion's first occurrence; among equally common completions the
    one whose first occurrence has the lowest index wins.  `ValueError` for no completions."""
    if len(completions) == 0:
        raise ValueError("modal_completion needs at least one completion")
    classes = completion_classes(completions)
    counts = np.bincount(classes)
    best = int(np.argmax(counts))  # first maximum = the class seen first among the ties
    return int(np.flatnonzero(classes == best)[0])


def first_divergence(a: Completion, b: Completion) -> int:
    """First index where two completions differ; -1 if they are identical.

    Positions 0..min(len)-1 are compared id by id; if they all agree and the lengths differ, the
    answer is the shorter length (one completion ended there and the other went on), so a
    completion that is a strict prefix of another diverges from it where it stops.
    """
    x, y = np.asarray(a, dtype=np.int64).ravel(), np.asarray(b, dtype=np.int64).ravel()
    common = min(x.size, y.size)
    differs = np.flatnonzero(x[:common] != y[:common])
    if differs.size:
        return int(differs[0])
    return -1 if x.size == y.size else common


def divergence_from(reference: Completion, completions: Sequence[Completion]) -> np.ndarray:
    """`first_divergence(completion, reference)` of every completion, [N] int64 (-1: identical)."""
    return np.array([first_divergence(c, reference) for c in completions], dtype=np.int64)


def tarr_at_n(outputs: Sequence[Sequence[Completion]]) -> float:
    """TARr@N: the fraction of inputs whose N raw outputs are all identical.

    `outputs[i]` holds the N outputs (token sequences) of input i, N the same for every input
    (Atil et al., arXiv 2408.04667, "total agreement rate at N runs over raw output"; here the raw
    output is the generated token sequence, a stricter test than equal detokenized strings).
    `ValueError` for no inputs, no runs, or different N per input.
    """
    sizes = {len(runs) for runs in outputs}
    if not outputs or 0 in sizes or len(sizes) != 1:
        raise ValueError(f"tarr_at_n needs the same N >= 1 runs for every input, got run counts {sorted(sizes)}")
    return float(np.mean([unique_completions(runs) == 1 for runs in outputs]))


def flip_mask(reference_argmax: Completion, argmax: Completion) -> np.ndarray:
    """[T] bool: steps where two argmax sequences computed from the same contexts differ.

    Both sequences must come from identical contexts at every step (teacher forcing: the same
    tokens so far), so each True is a flip caused by the numerics alone.  `ValueError` when the
    lengths differ (the contexts could not have been the same)."""
    x, y = np.asarray(reference_argmax, dtype=np.int64).ravel(), np.asarray(argmax, dtype=np.int64).ravel()
    if x.size != y.size:
        raise ValueError(f"flip_mask needs argmax sequences over the same steps, got {x.size} and {y.size}")
    return x != y


def flip_rate(flips: np.ndarray | Sequence[bool]) -> float:
    """Fraction of steps that flipped (per-step flip rate, MarginGate); NaN for no steps."""
    mask = np.asarray(flips, dtype=bool).ravel()
    return float(mask.mean()) if mask.size else float("nan")


def free_running_flips(a: Completion, b: Completion) -> tuple[int, int]:
    """(flips, steps with identical context) of two free-running greedy completions.

    Step s is computed from prompt + the first s generated tokens, so the contexts agree at steps
    0..d (d = `first_divergence`) and differ after it.  Steps counted: d + 1 when the argmax differs
    at a step both generated (one flip, at d), else every step both generated (no flip; a
    completion that merely ended earlier is not a flip).  This sees at most one flip per pair;
    teacher forcing (exp4.census) counts flips over the whole length.
    """
    common = min(len(a), len(b))
    d = first_divergence(a, b)
    if 0 <= d < common:
        return 1, d + 1
    return 0, common


def margin_split(margins: np.ndarray | Sequence[float], flips: np.ndarray | Sequence[bool]) -> tuple[Any, Any]:
    """(margins at the flip steps, margins at all steps), each float64 with NaNs dropped: the two
    distributions MarginGate compares (a small top-1/top-2 margin predicts most flips)."""
    m = np.asarray(margins, dtype=np.float64).ravel()
    f = np.asarray(flips, dtype=bool).ravel()
    if m.size != f.size:
        raise ValueError(f"margin_split needs one flag per margin, got {m.size} margins and {f.size} flags")
    keep = ~np.isnan(m)
    return m[keep & f], m[keep]


def replicate_classes(settings: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Class id [N] int64 per run: runs with equal settings (every key, compared by `repr`) are
    replicates of one configuration; ids numbered in order of first occurrence."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(repr(sorted(s.items())), len(ids)) for s in settings], dtype=np.int64)


def axis_pairs(settings: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    """The pairs of runs (i < j) that differ in exactly one setting, per setting (the axis), plus
    `replicates`: the pairs with equal settings.  Pairs differing in two or more settings belong to
    no axis.  Axes in the order their key first appears in `settings`."""
    keys = list(dict.fromkeys(k for s in settings for k in s))
    out: dict[str, list[tuple[int, int]]] = {}
    for i in range(len(settings)):
        for j in range(i + 1, len(settings)):
            differ = [k for k in keys if repr(settings[i].get(k)) != repr(settings[j].get(k))]
            if len(differ) <= 1:
                out.setdefault(differ[0] if differ else "replicates", []).append((i, j))
    return {k: out[k] for k in [*keys, "replicates"] if k in out}


def survival_curve(divergences: np.ndarray | Sequence[int], length: int) -> np.ndarray:
    """S[t] for t = 0..length, float64: the fraction of pairs whose first t tokens are identical.

    `divergences` are first divergence indices (-1: never diverged, counted as identical at every
    t); a pair with index d is identical for t <= d.  S[0] is 1; NaN everywhere for no pairs.
    """
    d = np.asarray(divergences, dtype=np.int64).ravel()
    t = np.arange(length + 1)
    if d.size == 0:
        return np.full(length + 1, np.nan)
    alive = (d[None, :] < 0) | (d[None, :] >= t[:, None])
    return alive.mean(axis=1)


def run_agreement(
    settings: Sequence[Mapping[str, Any]], generated: Sequence[Sequence[Completion]], margins: Sequence[Sequence[Any]]
) -> dict[str, Any]:
    """The field's metrics over N runs × P prompts of free-running greedy generation (exp4.compare).

    `settings[r]` says what run r was computed with (target, numerics, params: not the repeat), and
    `generated[r][p]` / `margins[r][p]` are its token ids and per-step margins on prompt p.
    Returns numpy arrays: `unique_completions` [P]; `replicate_class` [N] and per class `tarr` [C]
    (TARr@N_c over the P prompts) and `class_size` [C]; `flip_count` / `flip_steps` [N, N]
    (`free_running_flips` summed over prompts); `margin_at_flips` [F, 2] (run i's and run j's margin
    at each flip, i < j) and `margin_all_steps` [S] (every step of every run); and per axis of
    `axis_pairs` its pairs `pairs/<axis>` [Q, 2] and `survival/<axis>` [T+1] over pairs × prompts
    (T: the longest completion).
    """
    n, p = len(generated), len(generated[0]) if generated else 0
    classes = replicate_classes(settings)
    members = [np.flatnonzero(classes == c).tolist() for c in range(int(classes.max()) + 1 if n else 0)]
    out: dict[str, Any] = {
        "unique_completions": np.array([unique_completions([g[k] for g in generated]) for k in range(p)], np.int32),
        "replicate_class": classes.astype(np.int32),
        "class_size": np.array([len(m) for m in members], np.int32),
        "tarr": np.array([tarr_at_n([[generated[r][k] for r in m] for k in range(p)]) for m in members]),
        "flip_count": np.zeros((n, n), np.int64),
        "flip_steps": np.zeros((n, n), np.int64),
    }
    at_flips = []
    for i in range(n):
        for j in range(n):
            for k in range(p):
                flips, steps = free_running_flips(generated[i][k], generated[j][k])
                out["flip_count"][i, j] += flips
                out["flip_steps"][i, j] += steps
                if flips and i < j:
                    at = first_divergence(generated[i][k], generated[j][k])
                    at_flips.append((margins[i][k][at], margins[j][k][at]))
    out["margin_at_flips"] = np.array(at_flips, np.float64).reshape(-1, 2)
    every = [np.asarray(m, np.float64).ravel() for run in margins for m in run]
    out["margin_all_steps"] = np.concatenate(every) if every else np.zeros(0)
    horizon = max((len(g) for run in generated for g in run), default=0)
    for axis, pairs in axis_pairs(settings).items():
        where = [first_divergence(generated[i][k], generated[j][k]) for i, j in pairs for k in range(p)]
        out[f"pairs/{axis}"] = np.array(pairs, np.int32).reshape(-1, 2)
        out[f"survival/{axis}"] = survival_curve(where, horizon)
    return out


def agreement_summary(metrics: dict[str, Any], p: int) -> list[str]:
    """Text lines for `run_agreement`'s result over `p` prompts: unique completions, TARr@N per
    class size, per axis the pairs, survival at the end and the free-running flip rate, margins."""
    sizes, tarr = metrics["class_size"], metrics["tarr"]
    lines = [
        f"unique completions per prompt (of {len(metrics['replicate_class'])} runs): "
        f"{metrics['unique_completions'].tolist()}"
    ]
    for size in sorted(set(sizes.tolist())):
        chosen = tarr[sizes == size]
        lines.append(f"TARr@{size} over {p} prompts, {chosen.size} replicate class(es): {np.round(chosen, 3).tolist()}")
    for key in metrics:
        if not key.startswith("pairs/"):
            continue
        axis, pairs = key.split("/", 1)[1], metrics[key]
        flips = sum(int(metrics["flip_count"][i, j]) for i, j in pairs)
        steps = sum(int(metrics["flip_steps"][i, j]) for i, j in pairs)
        survival = metrics[f"survival/{axis}"]
        rate = f"{100 * flips / steps:.2f}%" if steps else "n/a"
        lines.append(
            f"axis {axis}: {len(pairs)} pair(s) x {p} prompt(s); identical to the end {survival[-1]:.0%}; "
            f"free-running flips {flips}/{steps} identical-context steps ({rate})"
        )
    at, every = metrics["margin_at_flips"], metrics["margin_all_steps"]
    if at.size:
        lines.append(f"margin at {len(at)} flip(s): median {np.median(at):.3g} vs all steps {np.median(every):.3g}")
    return lines
