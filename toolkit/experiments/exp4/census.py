"""exp4.census — the nondeterminism census: one prompt generated N times, each inside a drawn batch.

The field's headline experiment (Thinking Machines, "Defeating Nondeterminism in LLM Inference",
2025: 1,000 greedy completions of one prompt, 80 unique): every completion of a prompt is greedy
(`toolkit.numerics.batching.greedy_in_batch`) as one row of a batch whose size, fill and row are
drawn from `seed` — sizes from `batch_sizes`, fills from `fills`, the row uniform in [0, size) —
with the task's numerics (`kv_cache`, `padding_side`, `logits_path`).  Per prompt it stores every
completion's token ids, margins and batch draw, the number of unique completions, the modal
(most common) completion and each completion's first divergence from it with both margins there
(`toolkit.numerics.agreement`; definitions and sources in docs/field_metrics.md).

Per-step flip rate with identical context (`teacher_force`): for every completion's draw, one full
forward over prompt + modal completion inside that draw's batch (`build_batch` of the extended
row, so `same` co-requests are copies of it) gives the argmax at every step of the modal
completion given exactly the modal tokens so far.  Flips are counted against (a) the modal token
itself (which was produced by the free-running path, KV cache or not) and (b) the same teacher-
forced forward computed alone (batch of 1): (b) isolates the batch, since both sides use one code
path.  `lm_head` is applied to the row's positions of the modal part in every row.

Runs per target like exp4.generate, so the censuses of several GPU types land in one store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.experiments.exp4.census_figures import plot_census as plot  # noqa: F401 (re-export for the registry)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from toolkit.context import RunContext
    from toolkit.numerics.batching import BatchDraw
    from toolkit.progress import Progress

PER_TARGET = True
NEEDS_MODEL = True
READS: tuple[str, ...] = ()
READS_PROMPTS = True
NEEDS_EAGER_ATTENTION = False
# The batch itself is drawn per completion (batch_size / batch_fill / batch_position are refused).
HONOURS_NUMERICS = frozenset({"padding_side", "logits_path"})
DIMS = {"L": "token", "T": "step", "M": "modal_step"}  # names of the STORES letters (toolkit.store.dims)
STORES = {
    "prompts/<k>/prompt_ids": "[L] int64 token ids of prompt k",
    "prompts/<k>/completion_ids": "[C,T] int64 greedy ids of every completion (-1 after its end)",
    "prompts/<k>/completion_length / completion_class": "[C] int32 steps generated; class of equal completions",
    "prompts/<k>/margin": "[C,T] float64 top-1 − top-2 logit per step (NaN after the end)",
    "prompts/<k>/batch_size / batch_position / batch_seed": "[C] int64 each completion's batch draw",
    "prompts/<k>/batch_fill": "[C] bytes fill of each completion's batch (same | others | random)",
    "prompts/<k>/unique_completions / modal_index": "scalars int64: distinct completions; first modal one",
    "prompts/<k>/first_divergence": "[C] int32 first step differing from the modal completion (-1: equal)",
    "prompts/<k>/margin_at_divergence": "[C,2] float64 margin of the completion and of the modal one there",
    "prompts/<k>/tf_argmax / tf_margin": "[C,M] argmax int64 and margin float64 teacher-forcing the modal one",
    "prompts/<k>/tf_alone_argmax / tf_alone_margin": "[M] the same forward alone (batch of 1)",
    "prompts/<k>/tf_flips_modal / tf_flips_alone": "[C] int32 steps whose argmax differs from modal / alone",
}


@dataclass(frozen=True)
class Params:
    """completions per prompt; max_new_tokens per completion; batch sizes and fills drawn from
    (uniformly, row uniform too) with `seed`; top_k kept per step; teacher_force: the flip census."""

    completions: int = 100
    max_new_tokens: int = 8
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    fills: tuple[str, ...] = ("same", "others", "random")
    seed: int = 0
    top_k: int = 5
    stop_at_eos: bool = True
    teacher_force: bool = True

    def check(self) -> list[tuple[str, str]]:
        from toolkit.experiments.checks import at_least, between
        from toolkit.numerics.batching import FILLS

        problems: list[tuple[str, str]] = []
        between(problems, "completions", self.completions, 1, 100_000)
        at_least(problems, "max_new_tokens", self.max_new_tokens, 1)
        between(problems, "top_k", self.top_k, 2, 1000)
        if not self.batch_sizes or any(not 1 <= s <= 4096 for s in self.batch_sizes):
            problems.append(
                ("batch_sizes", f"must be a non-empty list of sizes in 1..4096, got {list(self.batch_sizes)}")
            )
        bad = [f for f in self.fills if f not in FILLS]
        if not self.fills or bad:
            problems.append(("fills", f"must be a non-empty list of {', '.join(FILLS)}, got {list(self.fills)}"))
        return problems


def draws(params: Params, padding_side: str, prompt_index: int) -> list[BatchDraw]:
    """The `completions` batch draws of prompt `prompt_index`, reproducible from `params.seed`."""
    import numpy as np

    from toolkit.numerics.batching import BatchDraw

    rng = np.random.default_rng([params.seed, prompt_index])
    out = []
    for _ in range(params.completions):
        size = int(rng.choice(params.batch_sizes))
        fill = str(rng.choice(params.fills))
        position = int(rng.integers(size))
        out.append(BatchDraw(size, fill, position, padding_side, int(rng.integers(2**31))))
    return out


def run(ctx: RunContext, params: Params) -> None:
    """The census of every prompt, stored under `prompts/<k>/`; a summary line per prompt."""
    import torch

    from toolkit.experiments.exp4.generate import _stop_ids

    stop_ids = _stop_ids(ctx.model, ctx.tokenizer) if params.stop_at_eos else set()
    ids = [ctx.encode(p)[0] for p in ctx.prompts]
    tf_units = params.completions + 1 if params.teacher_force else 0
    bar = ctx.progress(len(ids) * (params.completions * params.max_new_tokens + tf_units))
    ctx.out.attrs["padding_side"] = _padding_side(ctx)
    ctx.out.attrs["logits_path"] = _logits_path(ctx)
    ctx.out.attrs["path"] = "kv_cache" if ctx.numerics.kv_cache else "full_recompute"
    ctx.out.attrs["stop_ids"] = sorted(stop_ids)
    lines = []
    with torch.inference_mode():
        for index, prompt_ids in enumerate(ids):
            key = f"prompt{index:03d}"
            if ctx.checkpoint is not None and ctx.checkpoint.has(key):
                arrays, attrs = ctx.checkpoint.load(key)
            else:
                others = [p for j, p in enumerate(ids) if j != index]
                arrays = _census(
                    ctx, params, prompt_ids, others, draws(params, _padding_side(ctx), index), stop_ids, bar
                )
                attrs = {"prompt": ctx.prompts[index], "summary": summary_line(arrays)}
                if ctx.checkpoint is not None:
                    ctx.checkpoint.save(key, arrays, attrs)
            group = ctx.out.create_group(f"prompts/{index:03d}")
            for name, value in attrs.items():
                group.attrs[name] = value
            for name, value in arrays.items():
                group.create_dataset(name, data=value)
            lines.append(f"prompt {index}: {attrs['summary']}")
    ctx.out.attrs["summary"] = "\n".join(lines)
    bar.update(bar.total - bar.done)


def _padding_side(ctx: RunContext) -> str:
    return str(getattr(ctx.numerics, "padding_side", "left"))


def _logits_path(ctx: RunContext) -> str:
    return str(getattr(ctx.numerics, "logits_path", None) or "last_row")


def _census(
    ctx: RunContext,
    params: Params,
    prompt_ids: torch.Tensor,
    others: list[torch.Tensor],
    batch_draws: list[BatchDraw],
    stop_ids: set[int],
    bar: Progress,
) -> dict[str, Any]:
    """Every completion of one prompt, the agreement measures and (optionally) the flip census."""
    import numpy as np

    from toolkit.numerics import agreement
    from toolkit.numerics.batching import build_batch, greedy_in_batch

    pad_id, vocab = _pad_id(ctx), int(ctx.model.config.vocab_size)
    c, t = params.completions, params.max_new_tokens
    out: dict[str, Any] = {
        "prompt_ids": prompt_ids.cpu().numpy().astype(np.int64),
        "completion_ids": np.full((c, t), -1, np.int64),
        "completion_length": np.zeros(c, np.int32),
        "margin": np.full((c, t), np.nan),
        "batch_size": np.array([d.size for d in batch_draws], np.int64),
        "batch_position": np.array([d.position for d in batch_draws], np.int64),
        "batch_seed": np.array([d.seed for d in batch_draws], np.int64),
        "batch_fill": np.array([d.fill for d in batch_draws], dtype="S"),
    }
    for i, draw in enumerate(batch_draws):
        batch = build_batch(prompt_ids, draw, others, pad_id, vocab)
        trace = greedy_in_batch(
            ctx.model,
            batch,
            t,
            kv_cache=ctx.numerics.kv_cache,
            logits_path=_logits_path(ctx),
            stop_ids=stop_ids,
            top_k=params.top_k,
            on_step=bar.update,
        )
        n = len(trace["ids"])
        out["completion_ids"][i, :n] = trace["ids"]
        out["completion_length"][i] = n
        out["margin"][i, :n] = trace["margin"]
        bar.update(t - n)
    completions = [row[:n] for row, n in zip(out["completion_ids"], out["completion_length"])]
    modal = agreement.modal_completion(completions)
    d = agreement.divergence_from(completions[modal], completions)
    at = np.full((c, 2), np.nan)
    both_went_on = (d >= 0) & (d < out["completion_length"]) & (d < out["completion_length"][modal])
    for k in np.flatnonzero(both_went_on):
        at[k] = (out["margin"][k, d[k]], out["margin"][modal, d[k]])
    out.update(
        completion_class=agreement.completion_classes(completions).astype(np.int32),
        unique_completions=np.int64(agreement.unique_completions(completions)),
        modal_index=np.int64(modal),
        first_divergence=d.astype(np.int32),
        margin_at_divergence=at,
    )
    if params.teacher_force:
        out.update(_flip_census(ctx, prompt_ids, completions[modal], others, batch_draws, pad_id, vocab, bar))
    return out


def _flip_census(
    ctx: RunContext,
    prompt_ids: torch.Tensor,
    modal: np.ndarray,
    others: list[torch.Tensor],
    batch_draws: list[BatchDraw],
    pad_id: int,
    vocab: int,
    bar: Progress,
) -> dict[str, Any]:
    """Teacher-force the modal completion under every draw and alone; flips per completion."""
    import dataclasses

    import numpy as np

    alone_ids, alone_margin = teacher_forced(
        ctx.model, prompt_ids, modal, dataclasses.replace(batch_draws[0], size=1, position=0), others, pad_id, vocab
    )
    bar.update()
    argmax = np.zeros((len(batch_draws), modal.size), np.int64)
    margin = np.zeros((len(batch_draws), modal.size))
    for i, draw in enumerate(batch_draws):
        argmax[i], margin[i] = teacher_forced(ctx.model, prompt_ids, modal, draw, others, pad_id, vocab)
        bar.update()
    return {
        "tf_argmax": argmax,
        "tf_margin": margin,
        "tf_alone_argmax": alone_ids,
        "tf_alone_margin": alone_margin,
        "tf_flips_modal": (argmax != modal[None, :]).sum(axis=1).astype(np.int32),
        "tf_flips_alone": (argmax != alone_ids[None, :]).sum(axis=1).astype(np.int32),
    }


def teacher_forced(
    model: Any,
    prompt_ids: torch.Tensor,
    completion: np.ndarray,
    draw: BatchDraw,
    others: list[torch.Tensor],
    pad_id: int,
    vocab: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(argmax [M], margin [M]) at every step of `completion` given its own tokens so far: one full
    forward over prompt + completion[:-1] as row `draw.position` of `draw`'s batch (pads masked,
    position ids counting real tokens, as `greedy_in_batch`); lowest id wins a tie."""
    import numpy as np
    import torch

    from toolkit.numerics.batching import build_batch
    from toolkit.numerics.greedy import ranked

    tokens = torch.as_tensor(np.asarray(completion[:-1], dtype=np.int64), device=prompt_ids.device)
    row_ids = torch.cat([prompt_ids.reshape(-1), tokens])
    batch = build_batch(row_ids, draw, others, pad_id, vocab)
    real = torch.nonzero(batch.attention_mask[batch.row]).reshape(-1)
    start = prompt_ids.numel() - 1
    keep = real[start : start + len(completion)]
    kwargs: dict[str, Any] = {"use_cache": False, "logits_to_keep": keep}
    if batch.padded:
        kwargs["attention_mask"] = batch.attention_mask
        kwargs["position_ids"] = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=batch.input_ids, **kwargs).logits[batch.row]
    values, order = ranked(logits)
    margin = (values[:, 0].double() - values[:, 1].double()).cpu().numpy()
    return order[:, 0].cpu().numpy().astype(np.int64), margin


def _pad_id(ctx: RunContext) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (pads are masked: the id only fills space)."""
    for value in (ctx.tokenizer.pad_token_id, ctx.tokenizer.eos_token_id):
        if isinstance(value, int):
            return value
    return 0


def summary_line(arrays: dict[str, Any]) -> str:
    """One line: unique completions of N, where first divergences from the modal one fall, flips."""
    import numpy as np

    c = len(arrays["completion_length"])
    d = arrays["first_divergence"]
    hit = d[d >= 0]
    where = f"first divergence median {np.median(hit):.0f}, range {hit.min()}-{hit.max()}" if hit.size else "none"
    text = f"{int(arrays['unique_completions'])} unique of {c}; {hit.size} differ from the modal one ({where})"
    if "tf_flips_alone" in arrays:
        steps = arrays["tf_argmax"].size
        text += (
            f"; teacher-forced flips vs alone {int(arrays['tf_flips_alone'].sum())}/{steps} steps, "
            f"vs modal tokens {int(arrays['tf_flips_modal'].sum())}/{steps}"
        )
        per_step = arrays["tf_argmax"].shape[1]
        sizes, flips = arrays["batch_size"], arrays["tf_flips_alone"]
        by_size = [
            f"{s}: {int(flips[sizes == s].sum())}/{int((sizes == s).sum()) * per_step}"
            for s in sorted(set(sizes.tolist()))
        ]
        text += f" (by batch size {', '.join(by_size)})"
    return text
