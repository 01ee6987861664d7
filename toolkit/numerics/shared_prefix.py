"""Many last rows behind one prompt prefix: the decoder's linear layers compute the last row only.

In a batch of inputs [B, T, D] that differ only in their last row (the grid points of exp7), the
first T − 1 rows of every activation are the same for every input and do not depend on the last
row (causal attention).  Inside `shared_prefix_rows`, every `torch.nn.Linear` in the decoder
layers that is called on [B, T, in] returns the first T − 1 rows of ITS OWN output in one plain
forward of [1, T, D] (captured once) and computes only row T − 1, as one [B, in] matmul.  Norms,
rotary embeddings, activations and the attention itself still run on all T rows, through the
model's own code, so the attention of the last row sees exactly the keys and values of the
prefix that a one-point forward computes.

Cost: the linear layers — almost all of a small model's FLOPs — drop from B·T rows to B rows.

Rounding: the prefix rows are the one-point forward's own bits.  The last row is a matmul with
M = B rows instead of M = T; on CPU a matmul's rows are bitwise the same for any M ≥ 8
(FACTS.md), but that is a property of the kernel, not a guarantee, so callers prove every use
against the one-point forward at run time (`toolkit.numerics.grid_faithful.batch_check`) and fall back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class SharedPrefix:
    """The prefix rows of every decoder linear layer's output, captured from one plain forward of
    `prefix` [1, T − 1, D] followed by `x` [D] (any last row: the prefix rows do not depend on it).
    `patched()` installs the last-row-only layers for the duration of a block."""

    def __init__(self, model: Any, prefix: Any, x: Any) -> None:
        import torch

        from toolkit.numerics.embedding_forward import base_model
        from toolkit.numerics.fpunits import with_row

        stack = base_model(model)
        self.linears = [m for layer in stack.layers for m in layer.modules() if type(m) is torch.nn.Linear]
        self.rows: dict[torch.nn.Module, torch.Tensor] = {}

        def keep(module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            self.rows[module] = output[0, :-1].detach().clone()

        hooks = [m.register_forward_hook(keep) for m in self.linears]
        try:
            with torch.no_grad():
                stack(inputs_embeds=with_row(prefix, x.reshape(1, -1), prefix.shape[1]), use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()

    @contextlib.contextmanager
    def patched(self) -> Iterator[int]:
        """While active, the decoder's plain `nn.Linear` layers compute only the last row of
        [B, T, ·] inputs (any B, one-point forwards included: keep references outside); yields the
        number of layers patched and restores them on exit."""
        for module in self.linears:
            module.forward = _last_row_only(module, self.rows[module])  # type: ignore[method-assign]
        try:
            yield len(self.linears)
        finally:
            for module in self.linears:
                del module.forward  # back to the class's forward


@contextlib.contextmanager
def shared_prefix_rows(model: Any, prefix: Any, x: Any) -> Iterator[int]:
    """`SharedPrefix(model, prefix, x).patched()` in one step."""
    with SharedPrefix(model, prefix, x).patched() as count:
        yield count


def _last_row_only(module: Any, prefix_rows: Any) -> Any:
    import torch

    length = prefix_rows.shape[0] + 1

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() != 3 or inputs.shape[1] != length:  # any other call: the plain layer
            return torch.nn.functional.linear(inputs, module.weight, module.bias)
        last = torch.nn.functional.linear(inputs[:, -1], module.weight, module.bias)
        return torch.cat([prefix_rows.expand(inputs.shape[0], -1, -1), last[:, None]], dim=1)

    return forward
