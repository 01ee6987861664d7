"""Reading the exp4.generate runs of the exp4 analyses (exp4.compare, exp4.divergence,
exp4.internals), with errors that say how to fix the manifest.

The runs themselves are chosen with `ctx.inputs.matching` (`toolkit.context`).  Runs that do not
line up (other prompts) are a manifest problem, so they raise `toolkit.errors.UpstreamError` (a
ToolkitError, exit 2) naming what to change.  `load_traces` reads the per-prompt arrays of an exp4.generate run
(prompts in key order, so runs of one campaign line up prompt by prompt).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from toolkit.errors import UpstreamError

if TYPE_CHECKING:
    from toolkit.context import RunView

TRACE_FIELDS = ("prompt_ids", "generated_ids", "topk_ids", "topk_logits", "margin")


def load_traces(run: RunView, fields: tuple[str, ...] = TRACE_FIELDS) -> list[dict[str, Any]]:
    """Per prompt (sorted keys): the named arrays of an exp4.generate run."""
    keys = sorted(run.group["prompts"])
    return [{f: run[f"prompts/{k}/{f}"] for f in fields} for k in keys]


def check_prompt_count(traces: list[list[dict[str, Any]]]) -> int:
    """The common number of prompts of the runs' traces; UpstreamError when they differ."""
    counts = {len(t) for t in traces}
    if len(counts) != 1:
        raise UpstreamError(
            "exp4.generate runs hold different numbers of prompts; analyse one campaign's runs "
            "(give every exp4.generate entry in `needs` the same prompts)"
        )
    return counts.pop()


def check_same_prompts(runs: list[RunView], traces: list[list[dict[str, Any]]]) -> None:
    """UpstreamError unless every run holds the first run's prompts (same token ids, same order)."""
    import numpy as np

    first = traces[0]
    for run, trace in zip(runs[1:], traces[1:]):
        same = len(trace) == len(first) and all(
            np.array_equal(a["prompt_ids"], b["prompt_ids"]) for a, b in zip(first, trace)
        )
        if not same:
            raise UpstreamError(
                f"run {run.task_id} ({run.label()}) has other prompts than {runs[0].task_id}; "
                "compare runs of one campaign prompt set"
            )
