"""Model forward passes on one code path, whatever the transformers version calls its KV cache."""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=None)
def _cache_keyword(model_class: type) -> str:
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def last_logits(model: Any, input_ids: Any, cache: Any = None, use_cache: bool = True) -> tuple[Any, Any]:
    """(logits of the last position [B, V] in the model's dtype, the updated cache or None).

    With `use_cache`, `input_ids` holds only the positions not yet in `cache`.  Only the last
    position's logits are computed (`logits_to_keep=1`) on both the cached and the full path.
    """
    kwargs: dict[str, Any] = {"use_cache": use_cache, "logits_to_keep": 1}
    if use_cache and cache is not None:
        kwargs[_cache_keyword(type(model))] = cache
    out = model(input_ids=input_ids, **kwargs)
    new_cache = None
    if use_cache:
        new_cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
    return out.logits[:, -1], new_cache
