"""Derivatives of f at the prompt's own last-token embedding through a one-token forward.

f (`toolkit.numerics.embedding_forward.make_f`) recomputes all T positions, but only the last row
depends on the last token's embedding x (causal attention): the other rows' keys and values are
constants.  `last_row_f` builds g, a stand-in for f *at x only*, that differentiates through one
token's forward on the prompt's prefix KV cache — about T times fewer operations per JVP or VJP.

Rounding: the one-token forward has other matmul shapes than the full one (M = 1 row instead of
T), so its activations differ from f's in the last bits (FACTS.md: ~3e-5 in the fp32 hidden state
after 30 layers).  To keep the derivative at f's own linearisation point, every decoder layer's
output is pinned to the full forward's bits: the layer returns anchor + (out − out.detach()),
whose value is exactly the anchor (out − out is 0) and whose derivative is that of out.  So g(x)
== f(x) bit for bit — checked when g is built, and `None` is returned (with the reason) when it
does not hold — and each layer's local derivative is evaluated within one layer's rounding of
f's own state.  The prefix keys and values come from a full forward (the T-row matmuls) into a cache without
a config, whose layers keep every key: sliding-window layers (Mistral, Gemma-2) are then windowed
by the attention mask alone, as in the full forward, not by a cache that dropped keys.

g is constant in value (the anchors): never evaluate it anywhere but at x, e.g. for finite
differences; it exists for `torch.func.jvp`, `vjp`, `vmap` and `jacrev` at x.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LastRowF:
    """g (see the module docstring) or, when it could not be built, why not."""

    g: Callable[[Any], Any] | None
    reason: str


def last_row_f(model: Any, input_ids: Any, f: Callable[[Any], Any], x: Any) -> LastRowF:
    """g for f = final-norm hidden state at the last position w.r.t. that position's embedding x.

    `f`, `x` are `make_f(model, input_ids)` (last position).  g is returned only if g(x) equals
    f(x) in every bit; otherwise (or if the model's cache cannot be rebuilt from tensors) g is
    None and `reason` says what failed, so the caller can use f itself.
    """
    import torch
    from transformers import DynamicCache

    from toolkit.numerics.embedding_forward import base_model, decoder_layer_names, prompt_embeddings
    from toolkit.numerics.forward import cache_keyword
    from toolkit.numerics.hooks import capture

    embeds = prompt_embeddings(model, input_ids)
    length = embeds.shape[1]
    if length < 2:
        return LastRowF(None, "a one-token prompt has no prefix to cache")
    names = decoder_layer_names(model)
    stack = base_model(model)
    with torch.no_grad(), capture(model, names, last_position_only=True) as captured:
        stack(inputs_embeds=embeds, use_cache=False)
        anchors = [captured[name][0].clone() for name in names]
    try:
        with torch.no_grad():
            cache: Any = DynamicCache()  # no config: every layer keeps all keys; the masks apply sliding windows
            stack(inputs_embeds=embeds, use_cache=True, **{cache_keyword(stack.__class__): cache})
            prefix = [
                (layer.keys[:, :, : length - 1].clone(), layer.values[:, :, : length - 1].clone())
                for layer in cache.layers
            ]
    except (AttributeError, TypeError) as error:  # a cache that is not a DynamicCache of tensors
        return LastRowF(None, f"the prefix KV cache cannot be rebuilt ({error})")
    g = _make_g(model, prefix, names, anchors)
    try:
        with torch.no_grad():
            same = torch.equal(g(x), f(x))
    except (RuntimeError, ValueError, TypeError) as error:
        return LastRowF(None, f"the one-token forward failed ({error})")
    if not same:
        return LastRowF(None, "the one-token forward's output differs from f(x) in some bit")
    return LastRowF(
        g, "one-token forward on the prefix KV cache, layer outputs pinned to the full forward; g(x) == f(x) bitwise"
    )


def _make_g(model: Any, prefix: list[tuple[Any, Any]], names: list[str], anchors: list[Any]) -> Callable[[Any], Any]:
    from transformers import DynamicCache

    from toolkit.numerics.embedding_forward import base_model
    from toolkit.numerics.forward import cache_keyword

    modules = dict(model.named_modules())
    stack = base_model(model)
    keyword = cache_keyword(stack.__class__)

    def pin(anchor: Any) -> Callable[[Any, Any, Any], Any]:
        def hook(_module: Any, _inputs: Any, output: Any) -> Any:
            value = output[0] if isinstance(output, tuple) else output
            pinned = anchor + (value - value.detach())
            return (pinned, *output[1:]) if isinstance(output, tuple) else pinned

        return hook

    def g(x_tilde: Any) -> Any:
        cache = DynamicCache(ddp_cache_data=prefix)  # fresh (a forward appends to it), all keys kept
        handles = [modules[name].register_forward_hook(pin(anchor)) for name, anchor in zip(names, anchors)]
        try:
            out = stack(inputs_embeds=x_tilde.reshape(1, 1, -1), use_cache=True, **{keyword: cache})
        finally:
            for handle in handles:
                handle.remove()
        return out.last_hidden_state[0, -1]

    return g
