"""Differences between two stacks of per-layer states: L2, relative L2, cosine, ULPs; where they separate.

Both stacks [S, D] (one row per layer, e.g. `EmbeddingStates.hidden` plus the final norm) are
compared in float64 after an exact cast (bfloat16, float16 and float32 all embed exactly in
float64), so the measures carry no rounding of their own beyond the float64 reductions.  ULP
distances are counted in float32 (the common container of bf16 and fp32 values; one bf16 ULP is
2**16 float32 ULPs).

"Separation": the first row whose relative L2 difference exceeds `factor` times that of row 0 (the
input); with identical inputs (row 0 difference 0) it is the first row with any non-zero
difference.  -1 when no row qualifies.
"""

from __future__ import annotations

from typing import Any


def layer_metrics(a: Any, b: Any) -> dict[str, Any]:
    """Per-row measures of two [S, D] torch tensors (any float dtypes): float64 numpy arrays."""
    import numpy as np
    import torch

    from toolkit.numerics.fpunits import ulp_distance

    x, y = a.detach().double().cpu(), b.detach().double().cpu()
    diff = torch.linalg.vector_norm(x - y, dim=-1)
    norm_x, norm_y = torch.linalg.vector_norm(x, dim=-1), torch.linalg.vector_norm(y, dim=-1)
    cosine = (x * y).sum(-1) / (norm_x * norm_y).clamp_min(torch.finfo(torch.float64).tiny)
    ulps = ulp_distance(a.detach().float().cpu().numpy(), b.detach().float().cpu().numpy())
    return {
        "l2": diff.numpy(),
        "rel_l2": (diff / norm_x.clamp_min(torch.finfo(torch.float64).tiny)).numpy(),
        "cosine": cosine.numpy(),
        "ulp_max": ulps.max(axis=-1).astype(np.int64),
        "ulp_median": np.median(ulps, axis=-1).astype(np.float64),
        "n_differ": (ulps != 0).sum(axis=-1).astype(np.int64),
    }


def separation_layer(rel_l2: Any, factor: float) -> int:
    """First row (1..) separating per the module docstring's rule, or -1."""
    import numpy as np

    rel = np.asarray(rel_l2, dtype=np.float64)
    if rel[0] == 0:
        hit = np.nonzero(rel[1:] > 0)[0]
    else:
        hit = np.nonzero(rel[1:] > factor * rel[0])[0]
    return int(hit[0]) + 1 if hit.size else -1


def states_from_embeds(model: Any, embeds: Any) -> Any:
    """[L+2, D] states at the last position for input embeddings [1, T, D] (full forward, no cache):
    row 0 the input embedding, rows 1..L the decoder layer outputs, row L+1 the final-norm output —
    the rows of `embedding_forward.forward_states` plus its final norm."""
    import torch

    from toolkit.numerics.embedding_forward import decoder_layer_names
    from toolkit.numerics.hooks import capture, final_norm_name

    layers, norm = decoder_layer_names(model), final_norm_name(model)
    with torch.no_grad(), capture(model, [*layers, norm]) as captured:
        model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1)
        rows = [embeds[0, -1]] + [captured[name][0] for name in layers] + [captured[norm][0]]
    return torch.stack(rows)
