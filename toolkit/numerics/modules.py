"""One module of a decoder layer as a function of its own input at one position.

`layer_module_names(model, relative)` resolves, for every decoder layer, the EXACT qualified names
`<layer>.<relative>` (e.g. `model.layers.3.self_attn`) and checks each exists in
`named_modules()` — no substring matching (upstream's `"layers.1" in name` also matched layers
10–19).

`module_function(module, call, position)` turns one recorded call of a module
(`toolkit.numerics.hooks.capture_calls`: its args, kwargs and output during a forward of the
prompt) into g(z) = the module's output at `position` when its input hidden state at `position`
is replaced by z, everything else held fixed at the recorded values:

* position-wise modules (MLP, RMSNorms): the other positions do not matter at all;
* self-attention: the inputs at the OTHER positions (hence their keys and values), the RoPE
  cos/sin, the attention mask and every other argument stay as recorded; z enters the query,
  key and value of `position` itself.  With a causal mask and the last position, this is the
  exact derivative of the block's output there w.r.t. its own input there.

g runs the module on the whole recorded sequence [1, T, D] with row `position` replaced (not on
one row alone), so g(z_recorded) reproduces the recorded output bit for bit — the same GEMM shapes
as the forward.  `check_faithful` verifies that at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def layer_module_names(model: Any, relative: Sequence[str]) -> list[list[str]]:
    """[layer][module] exact names `<layer name>.<relative>`; ValueError naming what is missing."""
    from toolkit.numerics.embedding_forward import decoder_layer_names

    known = {name for name, _ in model.named_modules()}
    layers = decoder_layer_names(model)
    names = [[f"{layer}.{rel}" for rel in relative] for layer in layers]
    missing = [n for row in names for n in row if n not in known]
    if missing:
        children = sorted({n[len(layers[0]) + 1 :].split(".")[0] for n in known if n.startswith(layers[0] + ".")})
        raise ValueError(
            f"no module named {missing[0]} ({len(missing)} missing); the children of "
            f"{layers[0]} are: {', '.join(children)}"
        )
    return names


def _input_of(call: dict[str, Any]) -> tuple[Any, Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]]]:
    """(recorded input hidden states [1, T, D], rebuild(new input) -> (args, kwargs))."""
    args, kwargs = call["args"], call["kwargs"]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"], lambda h: (args, {**kwargs, "hidden_states": h})
    if args:
        return args[0], lambda h: ((h, *args[1:]), kwargs)
    raise ValueError("the recorded call has neither a positional input nor a hidden_states keyword")


def module_function(module: Any, call: dict[str, Any], position: int = -1) -> tuple[Callable[[Any], Any], Any]:
    """(g, z): g(z̃) = output row `position` of `module` with its input row `position` set to z̃.

    z is the recorded input row (model dtype, detached).  g is differentiable by torch.func.
    """
    from toolkit.numerics.embedding_forward import normalise_position
    from toolkit.numerics.fpunits import with_row

    hidden, rebuild = _input_of(call)
    if hidden.dim() != 3 or hidden.shape[0] != 1:
        raise ValueError(f"module input must have shape [1, T, D], got {tuple(hidden.shape)}")
    index = normalise_position(position, hidden.shape[1])

    def g(z: Any) -> Any:
        args, kwargs = rebuild(with_row(hidden, z, index))
        out = module(*args, **kwargs)
        return (out[0] if isinstance(out, tuple) else out)[0, index]

    return g, hidden[0, index].detach().clone()


def check_faithful(g: Callable[[Any], Any], z: Any, call: dict[str, Any], position: int = -1) -> bool:
    """True iff g(z) equals the recorded output row bit for bit."""
    import torch

    from toolkit.numerics.embedding_forward import normalise_position

    recorded = call["output"]
    index = normalise_position(position, recorded.shape[1])
    with torch.no_grad():
        return bool(torch.equal(g(z), recorded[0, index]))
