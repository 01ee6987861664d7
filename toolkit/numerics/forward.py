"""One model forward step on one code path, whatever the transformers version calls its KV cache."""

from __future__ import annotations

import inspect
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.nn import Module


@cache
def cache_keyword(model_class: type[Module]) -> str:
    """The keyword `model_class.forward` takes its KV cache by (`cache` or `past_key_values`)."""
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def last_logits(
    model: Any, input_ids: Any = None, cache: Any = None, use_cache: bool = True, inputs_embeds: Any = None
) -> tuple[Any, Any]:
    """(logits of the last position [B, V] in the model's dtype, the updated cache or None).

    The model is fed `input_ids` or `inputs_embeds` (exactly one).  With `use_cache`, the input
    holds only the positions not yet in `cache`.  Only the last position's logits are computed
    (`logits_to_keep=1`) on both the cached and the full path.  Every greedy step and every
    prefix-cache evaluation goes through here.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("last_logits needs exactly one of input_ids and inputs_embeds")
    kwargs: dict[str, Any] = {"use_cache": use_cache, "logits_to_keep": 1}
    if use_cache and cache is not None:
        kwargs[cache_keyword(model.__class__)] = cache
    if input_ids is not None:
        out = model(input_ids=input_ids, **kwargs)
    else:
        out = model(inputs_embeds=inputs_embeds, **kwargs)
    new_cache = None
    if use_cache:
        new_cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
    return out.logits[:, -1], new_cache


def head_logits(model: Any, hidden: Any) -> Any:
    """Logits from final-norm hidden states exactly as the model's own forward makes them: `lm_head`,
    then the final soft-cap where the config has one (Gemma-2: cap·tanh(logits/cap), same ops in the
    same order as `Gemma2ForCausalLM.forward`).  Code that applies `lm_head` itself goes through here,
    so a soft-capping model never yields uncapped logits."""
    import torch

    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = logits / cap
        logits = torch.tanh(logits)
        logits = logits * cap
    return logits
