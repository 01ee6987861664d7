"""Reading the upstream runs of the exp4 analyses, with errors that say how to fix the manifest.

exp4.compare, exp4.divergence and exp4.internals read exp4.generate runs; exp4.embedding_similarity
reads exp4.perturb_until_divergence runs.  A missing or incompatible upstream run is a manifest
problem, so it raises `toolkit.errors.UpstreamError` (a ToolkitError, exit 2) naming the entry to
add or the sweep to change.  `load_traces` reads the per-prompt arrays of an exp4.generate run
(prompts in key order, so runs of one campaign line up prompt by prompt).
"""

from __future__ import annotations

from typing import Any

from toolkit.errors import UpstreamError

TRACE_FIELDS = ("prompt_ids", "generated_ids", "topk_ids", "topk_logits", "margin")
_ADD_GENERATE = ("list an exp4.generate entry swept over at least two numerics (e.g. sweep: {dtype: [float32, "
                 "bfloat16]}) or with repeats >= 2 under this entry's `needs`")


def generate_runs(ctx: Any, consumer: str) -> list[Any]:
    """The exp4.generate runs among the task's inputs (stable order); UpstreamError unless >= 2."""
    runs = ctx.inputs.runs("exp4.generate")
    if len(runs) < 2:
        raise UpstreamError(f"{consumer} needs at least 2 exp4.generate runs, found {len(runs)}; {_ADD_GENERATE}")
    return runs


def load_traces(run: Any, fields: tuple[str, ...] = TRACE_FIELDS) -> list[dict[str, Any]]:
    """Per prompt (sorted keys): the named arrays of an exp4.generate run."""
    keys = sorted(run.group["prompts"])
    return [{f: run[f"prompts/{k}/{f}"] for f in fields} for k in keys]


def check_prompt_count(traces: list[list[dict[str, Any]]]) -> int:
    """The common number of prompts of the runs' traces; UpstreamError when they differ."""
    counts = {len(t) for t in traces}
    if len(counts) != 1:
        raise UpstreamError("exp4.generate runs hold different numbers of prompts; analyse one campaign's runs "
                            "(give every exp4.generate entry in `needs` the same prompts)")
    return counts.pop()


def check_same_prompts(runs: list[Any], traces: list[list[dict[str, Any]]]) -> None:
    """UpstreamError unless every run holds the first run's prompts (same token ids, same order)."""
    import numpy as np

    first = traces[0]
    for run, trace in zip(runs[1:], traces[1:]):
        same = len(trace) == len(first) and all(
            np.array_equal(a["prompt_ids"], b["prompt_ids"]) for a, b in zip(first, trace))
        if not same:
            raise UpstreamError(f"run {run.task_id} ({run.label()}) has other prompts than {runs[0].task_id}; "
                                "compare runs of one campaign prompt set")
