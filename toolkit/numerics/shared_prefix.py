"""Many last rows behind one prompt prefix: the decoder's row-wise blocks compute the last row only.

In a batch of inputs [B, T, D] that differ only in their last row (the grid points of exp7), the
first T − 1 rows of every activation are the same for every input and do not depend on the last
row (causal attention).  Inside `shared_prefix_rows`, every decoder layer's `mlp` block and every
other `torch.nn.Linear` in the decoder layers that is called on [B, T, ·] returns the first T − 1
rows of ITS OWN output in one plain forward of [1, T, D] (captured once) and computes only row
T − 1: a linear layer as one [B, in] matmul, an `mlp` block through its own forward on [B, 1, D]
(its linear layers then run as [B, 1, in] matmuls).  Norms, rotary embeddings and the attention
itself still run on all T rows, through the model's own code, so the attention of the last row
sees exactly the keys and values of the prefix that a one-point forward computes.

Cost: the linear layers — almost all of a small model's FLOPs — and the MLP's activations drop
from B·T rows to B rows.

Rounding: the prefix rows are the one-point forward's own bits.  The last row is a matmul with
M = B rows instead of M = T; on CPU a matmul's rows are bitwise the same within a class of M
that depends on the machine (AVX2: ≥ 8; AVX-512: 2..15 and ≥ 16; `toolkit.numerics.row_classes`
picks B), but that is a property of the kernel, not a guarantee, so callers prove every use
against the one-point forward at run time (`toolkit.numerics.grid_faithful.batch_check`) and fall
back.  An `mlp` block is taken as row-wise (true of every dense MLP; a mixture-of-experts block
that groups tokens by expert may round otherwise, which that check catches).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.numerics.tiled_linear import Tiling


class SharedPrefix:
    """The prefix rows of every decoder `mlp` block's and linear layer's output, captured from one
    plain forward of `prefix` [1, T − 1, D] followed by `x` [D] (any last row: the prefix rows do
    not depend on it).  `patched()` installs the last-row-only blocks for the duration of a batch."""

    def __init__(self, model: Any, prefix: Any, x: Any) -> None:
        import torch

        from toolkit.numerics.embedding_forward import base_model, decoder_linears
        from toolkit.numerics.fpunits import with_row

        stack = base_model(model)
        mlps = [layer.mlp for layer in stack.layers if isinstance(getattr(layer, "mlp", None), torch.nn.Module)]
        linears = decoder_linears(stack.layers)
        self.rows: dict[torch.nn.Module, torch.Tensor] = {}
        length = prefix.shape[1] + 1

        def keep(module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 3 and output.shape[:2] == (1, length):
                self.rows[module] = output[0, :-1].detach().clone()

        hooks = [m.register_forward_hook(keep) for m in mlps + linears]
        try:
            with torch.no_grad():
                stack(inputs_embeds=with_row(prefix, x.reshape(1, -1), prefix.shape[1]), use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()
        self.blocks = [m for m in mlps if m in self.rows]
        inside = {id(m) for block in self.blocks for m in block.modules()}
        self.linears = [m for m in linears if m in self.rows and id(m) not in inside]
        self.inner = decoder_linears(self.blocks)  # the blocks' own linear layers: tiled, not patched to the last row

    @contextlib.contextmanager
    def patched(self, tiling: Tiling | None = None) -> Iterator[int]:
        """While active, the decoder's `mlp` blocks and other plain `nn.Linear` layers compute only
        the last row of [B, T, ·] inputs (any B, one-point forwards included: keep references
        outside); with a `tiling`, every decoder linear layer's matmul of `tiling.rows` rows runs
        as its tiles (`toolkit.numerics.tiled_linear`).  Yields the number of blocks and layers
        computing the last row only, and restores every patched module on exit."""
        import torch

        linear = tiling.linear if tiling is not None else torch.nn.functional.linear
        inner = self.inner if tiling is not None else []
        for module in self.blocks:
            module.forward = _block_last_row(module, self.rows[module])
        for module in self.linears:
            module.forward = _linear_last_row(module, self.rows[module], linear)
        for module in inner:
            module.forward = _tiled(module, linear)
        try:
            yield len(self.blocks) + len(self.linears)
        finally:
            for module in self.blocks + self.linears + inner:
                del module.forward  # back to the class's forward


@contextlib.contextmanager
def shared_prefix_rows(model: Any, prefix: Any, x: Any) -> Iterator[int]:
    """`SharedPrefix(model, prefix, x).patched()` in one step."""
    with SharedPrefix(model, prefix, x).patched() as count:
        yield count


def _tiled(module: Any, linear: Callable[..., Any]) -> Any:
    def forward(inputs: Any) -> Any:
        return linear(inputs, module.weight, module.bias)

    return forward


def _linear_last_row(module: Any, prefix_rows: Any, linear: Callable[..., Any]) -> Any:
    import torch

    length = prefix_rows.shape[0] + 1

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() != 3 or inputs.shape[1] != length:  # any other call: the plain layer
            return torch.nn.functional.linear(inputs, module.weight, module.bias)
        last = linear(inputs[:, -1], module.weight, module.bias)
        return torch.cat([prefix_rows.expand(inputs.shape[0], -1, -1), last[:, None]], dim=1)

    return forward


def _block_last_row(module: Any, prefix_rows: Any) -> Any:
    import torch

    length = prefix_rows.shape[0] + 1
    plain = type(module).forward

    def forward(inputs: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or inputs.dim() != 3 or inputs.shape[1] != length:  # any other call: the plain block
            return plain(module, inputs, *args, **kwargs)
        last = plain(module, inputs[:, -1:])
        return torch.cat([prefix_rows.expand(inputs.shape[0], -1, -1), last], dim=1)

    return forward


def last_rows_f(model: Any, input_ids: Any) -> Callable[[Any], Any] | None:
    """F(xs [B, D]) = [B, D]: the final-norm rows at the last position of the prompt `input_ids`
    [1, T] with its last embedding replaced by each row of xs, the decoder's blocks on the last row
    only (`SharedPrefix`); None for a one-token prompt (no prefix to share).  Bitwise equal to one
    input at a time only where this CPU's kernels make it so: callers prove it on a sample first
    (`toolkit.numerics.gains.Evaluator`)."""
    from toolkit.numerics.embedding_forward import base_model, prompt_embeddings
    from toolkit.numerics.fpunits import with_row

    embeds = prompt_embeddings(model, input_ids)
    last = embeds.shape[1] - 1
    if last < 1:
        return None
    shared = SharedPrefix(model, embeds[:, :last], embeds[0, last])

    def rows(xs: Any) -> Any:
        with shared.patched():
            out = base_model(model)(inputs_embeds=with_row(embeds, xs, last), use_cache=False)
        return out.last_hidden_state[:, last]

    return rows
