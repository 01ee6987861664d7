"""Forward passes from input embeddings, with one token's embedding replaced.

Everything here runs the model on `inputs_embeds` (never on token ids), so the embedding of one
position — by default the last token, the one every upstream experiment perturbs — can be replaced
by an arbitrary vector x̃ in the model's dtype (`toolkit.numerics.fpunits.with_row`).  All other
rows are the model's own embeddings of the prompt, computed once and held fixed.

Indexing of the per-layer states returned by `forward_states` (L = number of decoder layers):

* `hidden[0]`        the input embedding row at `position`, exactly as fed (x̃);
* `hidden[1..L]`     the outputs of decoder layers 0..L-1 at `position`: the residual stream.
                     `hidden[L]` is the raw residual output of the last layer, before the final norm;
* `final_norm`       the output of the final norm at `position` (the `lm_head` input) = f(x̃);
* `last_residual`    = `hidden[L]`, named separately for clarity;
* `logits`           the `lm_head` output at `position`.

transformers' `output_hidden_states` tuple differs at its end: it has L+1 entries whose last one
is already the *post*-norm output (it replaces the last layer's raw residual, which that tuple
does not contain).  So `hidden_states[i] == hidden[i]` for i < L and `hidden_states[L] ==
final_norm`.  Tests check both statements bit for bit.

`make_f(model, input_ids)` returns f(x) = final-norm hidden state at `position` as a function of
that position's embedding x, built from pure tensor operations so that `torch.func.jvp`, `vjp`,
`vmap` and `jacrev` can differentiate it (with eager attention; see `toolkit.numerics.jacobian`).
Every forward recomputes all positions (no KV cache): on CPU a cached one-token forward is not
bitwise equal to the full forward, and f must be one function on one code path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from toolkit.numerics.fpunits import with_row


def base_model(model: Any) -> Any:
    """The decoder stack (`model.model` for Llama): its `last_hidden_state` is the final-norm output."""
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    if base is None:
        raise ValueError(f"cannot find the decoder stack of {type(model).__name__} (base_model_prefix={prefix!r})")
    return base


def decoder_linears(modules: Any) -> list[Any]:
    """Every plain `torch.nn.Linear` inside `modules` (e.g. the decoder layers, or their `mlp`
    blocks), in module order: the layers a batched decoder path runs on many rows."""
    import torch

    return [m for module in modules for m in module.modules() if type(m) is torch.nn.Linear]


def decoder_layer_names(model: Any) -> list[str]:
    """Exact module names of the decoder layers, in order (e.g. `model.layers.0` … `model.layers.29`)."""
    layers = getattr(base_model(model), "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no `layers` list in its decoder stack")
    by_id = {id(module): name for name, module in model.named_modules()}
    return [by_id[id(layer)] for layer in layers]


def prompt_embeddings(model: Any, input_ids: Any) -> Any:
    """[1, T, D] input embeddings of the prompt in the model dtype (detached, no gradient)."""
    import torch

    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must have shape [1, T], got {tuple(input_ids.shape)}")
    with torch.no_grad():
        return model.get_input_embeddings()(input_ids).detach()


def normalise_position(position: int, length: int) -> int:
    """A non-negative position index into a sequence of `length` tokens (negative counts from the end)."""
    index = position + length if position < 0 else position
    if not 0 <= index < length:
        raise ValueError(f"position {position} is outside a prompt of {length} tokens")
    return index


def final_norm_at(model: Any, embeds: Any, position: int = -1) -> Any:
    """Final-norm hidden state [D] at `position` for input embeddings `embeds` [1, T, D]."""
    out = base_model(model)(inputs_embeds=embeds, use_cache=False)
    return out.last_hidden_state[0, normalise_position(position, embeds.shape[1])]


def make_f(model: Any, input_ids: Any, position: int = -1) -> tuple[Callable[[Any], Any], Any]:
    """(f, x): f(x̃) = final-norm hidden state at `position` with that position's embedding set to x̃.

    x is the model's own embedding of the token at `position` (a detached copy, model dtype).
    f is differentiable by torch.func (it closes over the fixed embeddings of the other tokens).
    """
    embeds = prompt_embeddings(model, input_ids)
    index = normalise_position(position, embeds.shape[1])

    def f(x_tilde: Any) -> Any:
        return final_norm_at(model, with_row(embeds, x_tilde, index), index)

    return f, embeds[0, index].clone()


def make_f_rows(model: Any, input_ids: Any, position: int = -1) -> Callable[[Any], Any]:
    """F(xs [B, D]) = [B, D]: f of `make_f` for B values of the row at `position` in one batched
    forward ([B, T, D], full recompute).  Bitwise equal to f row by row only where the decoder stack
    is batch-invariant for this model, device and batch size: callers prove it on a sample first
    (`toolkit.numerics.gains.Evaluator`)."""
    embeds = prompt_embeddings(model, input_ids)
    index = normalise_position(position, embeds.shape[1])

    def rows(xs: Any) -> Any:
        inputs = with_row(embeds, xs, index)
        return base_model(model)(inputs_embeds=inputs, use_cache=False).last_hidden_state[:, index]

    return rows


@dataclass
class EmbeddingStates:
    """Per-layer states at one position (see the module docstring for the indexing)."""

    hidden: Any  # [L+1, D] model dtype: [0] input embedding, [1..L] decoder layer outputs
    final_norm: Any  # [D] final-norm output (lm_head input) = f(x̃)
    last_residual: Any  # [D] raw residual output of the last decoder layer (= hidden[L])
    logits: Any  # [V] logits at the position, model dtype
    position: int  # the non-negative position index


def forward_states(model: Any, input_ids: Any, x: Any = None, position: int = -1) -> EmbeddingStates:
    """Run the full model on the prompt's embeddings (row `position` replaced by x if given).

    Decoder-layer and final-norm outputs are captured with forward hooks on the exact modules.
    Logits: for the last position only the last row is computed (`logits_to_keep=1`, the same path
    as `toolkit.numerics.forward.last_logits`); for another position all rows are computed.
    """
    import torch

    from toolkit.numerics.hooks import capture, final_norm_name

    embeds = prompt_embeddings(model, input_ids)
    index = normalise_position(position, embeds.shape[1])
    if x is not None:
        embeds = with_row(embeds, x.detach(), index)
    layers = decoder_layer_names(model)
    norm = final_norm_name(model)
    is_last = index == embeds.shape[1] - 1
    with torch.no_grad(), capture(model, [*layers, norm], last_position_only=False) as captured:
        out = model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1 if is_last else 0)
        rows = [embeds[0, index]] + [captured[name][0, index] for name in layers]
        final = captured[norm][0, index]
    logits = out.logits[0, -1] if is_last else out.logits[0, index]
    return EmbeddingStates(
        hidden=torch.stack(rows), final_norm=final, last_residual=rows[-1], logits=logits, position=index
    )
