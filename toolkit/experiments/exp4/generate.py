"""exp4.generate — greedy generation with per-step numeric traces, one run per (target, repeat).

Each step appends the argmax token id to the context (never re-tokenizing text), with a KV cache
or a full recompute as `numerics.kv_cache` says.  Each prompt is computed as row
`numerics.batch_position` of a batch of `numerics.batch_size` rows filled by `numerics.batch_fill`
(`toolkit.numerics.batching`; random co-requests are drawn from the prompt's index, so replicates
share them), padded on `numerics.padding_side`; `numerics.logits_path` says whether `lm_head` is
applied to the last row only (null: the default, today's path) or to all rows.  Row i of every
per-step array is the prediction for generated token i. Logits are read in the model's native
dtype: top-k values are stored as exact fp32 copies and every full logits row is hashed
bit-exactly, so a later comparison finds the first step whose logits differ in any bit. The final
hidden state is captured at the output of the model's final norm — the true `lm_head` input (the
upstream script normalised it twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.experiments.exp4.figures import plot_generate as plot  # noqa: F401 (re-export for the registry)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from toolkit.context import CheckedGroup, RunContext
    from toolkit.progress import Progress

PER_TARGET = True
NEEDS_MODEL = True
READS: tuple[str, ...] = ()
READS_PROMPTS = True  # its tasks read the manifest's prompts
NEEDS_EAGER_ATTENTION = False
HONOURS_NUMERICS = frozenset({"batch_size", "batch_fill", "batch_position", "padding_side", "logits_path"})
DIMS = {"T": "step", "L": "token"}  # names of the STORES letters (toolkit.store.dims)
STORES = {
    "prompts/<k>/prompt_ids": "[L] int64 token ids of prompt k (tokenizer defaults)",
    "prompts/<k>/generated_ids": "[T] int64 greedy token ids (argmax, lowest id wins a tie)",
    "prompts/<k>/topk_ids": "[T,K] int64 ids of the K largest logits per step (stable: ties by id)",
    "prompts/<k>/topk_logits": "[T,K] float32 exact copies of those logits (native dtype values)",
    "prompts/<k>/margin": "[T] float64 top-1 minus top-2 logit",
    "prompts/<k>/logits_hash": "[T] uint64 blake2b of the full logits row's native bits",
    "prompts/<k>/final_hidden": "[T,D] final-norm output at the last position (fp32 copy; fp64 kept)",
}
TIE_RULE = "argmax picks the lowest token id among equal maxima"


@dataclass(frozen=True)
class Params:
    """max_new_tokens: steps per prompt; top_k: logits kept per step; stop_at_eos: stop at EOS."""

    max_new_tokens: int = 64
    top_k: int = 20
    stop_at_eos: bool = True
    store_hidden: bool = True

    def check(self) -> list[tuple[str, str]]:
        from toolkit.experiments.checks import at_least, between

        problems: list[tuple[str, str]] = []
        at_least(problems, "max_new_tokens", self.max_new_tokens, 1)
        between(problems, "top_k", self.top_k, 2, 1000)
        return problems


def run(ctx: RunContext, params: Params) -> None:
    """Generate greedily for every prompt and store the per-step traces under `prompts/<k>/`."""
    import torch

    from toolkit import faults
    from toolkit.numerics.hooks import final_norm_name

    stop_ids = _stop_ids(ctx.model, ctx.tokenizer) if params.stop_at_eos else set()
    norm = final_norm_name(ctx.model)
    bar = ctx.progress(len(ctx.prompts) * params.max_new_tokens)
    ctx.out.attrs["tie_rule"] = TIE_RULE
    ctx.out.attrs["final_hidden_source"] = f"output of module {norm!r} (the lm_head input)"
    ctx.out.attrs["path"] = "kv_cache" if ctx.numerics.kv_cache else "full_recompute"
    ctx.out.attrs["stop_ids"] = sorted(stop_ids)
    ctx.out.attrs["logits_dtype"] = str(ctx.numerics.dtype)
    ctx.out.attrs["logits_path"] = ctx.numerics.logits_path or "last_row"
    ctx.out.attrs["batch"] = (
        f"row {ctx.numerics.batch_position} of {ctx.numerics.batch_size}, fill {ctx.numerics.batch_fill}, "
        f"padding {ctx.numerics.padding_side}, random co-requests seeded by the prompt index"
    )
    others = _other_prompts(ctx)
    resumed = 0
    with torch.inference_mode():
        for index, prompt in enumerate(ctx.prompts):
            key = f"prompt{index:03d}"
            if ctx.checkpoint is not None and ctx.checkpoint.has(key):  # resumed after preemption
                arrays, attrs = ctx.checkpoint.load(key)
                resumed += 1
            else:
                steps = _generate(ctx, index, prompt, others, params, stop_ids, norm, bar)
                arrays, attrs = _arrays(prompt, steps)
                if ctx.checkpoint is not None:
                    ctx.checkpoint.save(key, arrays, attrs)
                faults.checkpoint("generate-prompt")  # crash tests: TOOLKIT_FAULT=generate-prompt:<n>
            _write(ctx.out.create_group(f"prompts/{index:03d}"), arrays, attrs)
    ctx.out.attrs["prompts_resumed"] = resumed  # prompts loaded from the checkpoint of a preempted run
    bar.update(bar.total - bar.done)


def _stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(configured if isinstance(configured, (list, tuple)) else [configured] if configured is not None else [])
    return {int(i) for i in ids}


def _other_prompts(ctx: RunContext) -> list[Any]:
    """Token ids of every prompt (CPU), read by an `others` fill; [] when no batch needs them."""
    if ctx.numerics.batch_size == 1 or ctx.numerics.batch_fill != "others":
        return []
    return [ctx.encode(p)[0].cpu() for p in ctx.prompts]


def _generate(
    ctx: RunContext,
    index: int,
    prompt: str,
    every_prompt: list[Any],
    params: Params,
    stop_ids: set[int],
    norm: str,
    bar: Progress,
) -> dict[str, Any]:
    """The per-step trace of prompt `index`, generated as its row of the task's batch."""
    from toolkit.numerics.batching import BatchDraw, build_batch, greedy_in_batch

    n = ctx.numerics
    prompt_ids = ctx.encode(prompt)
    draw = BatchDraw(n.batch_size, n.batch_fill, n.batch_position, n.padding_side, seed=index)
    others = every_prompt[index + 1 :] + every_prompt[:index]  # the other prompts, from the next one on
    pad_id = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else ctx.tokenizer.eos_token_id
    vocab = int(ctx.model.config.vocab_size)
    batch = build_batch(prompt_ids, draw, others, int(pad_id or 0), vocab)
    return greedy_in_batch(
        ctx.model,
        batch,
        params.max_new_tokens,
        kv_cache=n.kv_cache,
        logits_path=n.logits_path or "last_row",
        stop_ids=stop_ids,
        top_k=params.top_k,
        on_step=bar.update,
        hidden=norm if params.store_hidden else None,
    )


def _arrays(prompt: str, steps: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored form of one prompt's trace: (datasets, attributes)."""
    import numpy as np
    import torch

    arrays = {
        "prompt_ids": steps["prompt_ids"][0].numpy().astype(np.int64),
        "generated_ids": np.asarray(steps["ids"], dtype=np.int64),
        "topk_ids": torch.stack(steps["topk_ids"]).numpy().astype(np.int64),
        "topk_logits": torch.stack(steps["topk_logits"]).numpy().astype(np.float32),
        "margin": np.asarray(steps["margin"], dtype=np.float64),
        "logits_hash": np.asarray(steps["hash"], dtype=np.uint64),
    }
    if steps["hidden"][0] is not None:
        hidden = torch.stack(steps["hidden"])
        arrays["final_hidden"] = (hidden if hidden.dtype == torch.float64 else hidden.float()).numpy()
    attrs = {"prompt": prompt, "stop_reason": steps["stop_reason"][0], "n_steps": len(steps["ids"])}
    return arrays, attrs


def _write(group: CheckedGroup, arrays: dict[str, Any], attrs: dict[str, Any]) -> None:
    for name, value in attrs.items():
        group.attrs[name] = value
    for name, value in arrays.items():
        if name == "final_hidden":
            group.create_dataset(name, data=value, chunks=True, compression="gzip", compression_opts=1, shuffle=True)
        else:
            group.create_dataset(name, data=value)
