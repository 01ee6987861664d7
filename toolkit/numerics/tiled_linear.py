"""A linear layer on many rows as tiles that keep each row's bits: row chunks of a height whose
kernel rounds like the reference's, column tiles that fit the cache.

Where a batched path needs matmuls of few rows to keep the one-point forward's bits (on an AVX-512
CPU: at most 15 rows behind a prompt of fewer than 16 tokens, `toolkit.numerics.row_classes`), a
batch of that height streams every weight of the model from memory for a handful of rows, and its
matmuls ran at a quarter of the large-batch rate (SmolLM2's MLP: 30 vs 130 GFLOP/s).  A `Tiling`
runs a big batch instead: each linear layer's output is computed tile by tile, `height` rows by
`width` output features at a time, the weight's column tile outer so that it stays in cache for
every row chunk.  Each output element is still one matmul's dot product over the whole input, and
bitwise the reference's only where both the row height and the column split keep the kernel's
rounding: `RowProbe.tiling` proposes a tiling only after probing both, and the caller's run-time
check on real inputs still decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TILE_BYTES = 1 << 19  # weight bytes per column tile: fits a core's L2 beside its inputs (measured best 0.3-1 MB)


@dataclass(frozen=True)
class Tiling:
    """Matmuls of exactly `rows` rows as balanced row chunks of at most `height` rows and column tiles of
    `TILE_BYTES` of weight (`split_columns` False: whole columns)."""

    rows: int
    height: int
    split_columns: bool = True

    def chunks(self) -> list[int]:
        """Row chunk sizes, balanced (e.g. 88 rows at height 15: four of 15 and two of 14)."""
        count = -(-self.rows // self.height)
        small, extra = divmod(self.rows, count)
        return [small + 1] * extra + [small] * (count - extra)

    def width(self, weight: Any) -> int:
        """Output features per column tile for `weight` [out, in] (its element size), a multiple of 32."""
        if not self.split_columns:
            return int(weight.shape[0])
        per_row = int(weight.shape[1]) * weight.element_size()
        return max(32, TILE_BYTES // per_row // 32 * 32)

    def linear(self, inputs: Any, weight: Any, bias: Any = None) -> Any:
        """`torch.nn.functional.linear(inputs, weight, bias)`, tiled when inputs hold `rows` rows."""
        import torch

        flat = inputs.reshape(-1, inputs.shape[-1])
        if flat.shape[0] != self.rows:
            return torch.nn.functional.linear(inputs, weight, bias)
        out = flat.new_empty(flat.shape[0], weight.shape[0])
        width = self.width(weight)
        parts = flat.split(self.chunks())
        for start in range(0, weight.shape[0], width):
            tile = weight[start : start + width]
            tile_bias = None if bias is None else bias[start : start + width]
            row = 0
            for part in parts:
                # what linear runs on a 2-D input (mm, or addmm with the bias), written in place: no copy
                block = out[row : row + part.shape[0], start : start + width]
                if tile_bias is None:
                    torch.mm(part, tile.t(), out=block)
                else:
                    torch.addmm(tile_bias, part, tile.t(), out=block)
                row += part.shape[0]
        return out.reshape(*inputs.shape[:-1], weight.shape[0])

    def describe(self) -> str:
        """One line for the store: how the batch's matmuls were cut."""
        columns = f"column tiles of {TILE_BYTES // 1024} KiB of weight" if self.split_columns else "whole columns"
        return f"every linear layer on {self.rows} rows as row chunks of at most {self.height} and {columns}"
