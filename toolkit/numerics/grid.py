"""2-D grids of perturbed last-token embeddings, evaluated faithfully (bitwise = per point) or fast.

A grid point is x(e1, e2) = x0 + e1·v1 + e2·v2 rounded to the model dtype, with the arithmetic
named by `arithmetic` (recorded in the store, see `ARITHMETIC`).  Every point shares the prompt
prefix (rows 0..T-2 of the input embeddings); only the last row changes.

Evaluation paths, all giving the gap, argmax and pair logits of the native-dtype logits of the
last position:

* `point_logits` — THE reference: one full forward of [1, T, D] (no KV cache, every position
  recomputed) with `logits_to_keep=1`, one point at a time.  This is the plain per-point loop.
* faithful (`toolkit.numerics.grid_faithful`), tried in this order, each only after its own
  bitwise check on a sample against `point_logits` passed, recorded per map as `GridResult.path`:
  - `SHARED_HEAD_PATH`: the shared-prefix decoder (`toolkit.numerics.shared_prefix`: the linear
    layers compute the last row only and take the prefix rows from one [1, T, D] forward), then
    the bounded head (`toolkit.numerics.exact_head`: one batched `lm_head`, then the per-point
    GEMV's own bits for the pair and every row that can be the argmax);
  - `SHARED_PATH`: the same decoder, then `lm_head` on each point's row as [1, 1, D];
  - `FAITHFUL_PATH`: the plain decoder stack on [B, T, D], then `lm_head` per point;
  - `POINT_PATH`: one point at a time.
  On CPU (torch 2.13) the decoder stack was batch-invariant but a batched `lm_head` (M = B) was
  not bitwise equal to the per-point GEMV (M = 1) — hence the per-point head or its bounded stand-in.
* fast (`toolkit.numerics.grid_fast`) — the prefix K/V computed once, then only the last position
  for a batch of points against it, with a batched `lm_head`.  Not bitwise equal; callers must
  report agreement with the faithful values.

Distinct inputs: at small ε most grid points round to the same x, so `dedup_rows` groups points
by the exact bits of their rounded input; each distinct input is evaluated once and scattered.
A forward is a deterministic function of its input bits on a fixed machine, so this is exact.
Every batched call is padded to a full batch (copies of its last input), so every call has the
shape the check validated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.numerics.exact_head import DESCRIPTION as BOUNDED_HEAD
from toolkit.numerics.exact_head import HeadValues

if TYPE_CHECKING:
    from toolkit.numerics.grid_faithful import BatchCheck

ARITHMETIC = {
    "fp64_then_round": "x0, e1, e2, v1, v2 in float64: (x0 + e1*v1) + e2*v2 with float64 products and sums "
    "(left to right, no FMA), then ONE rounding to the model dtype (round to nearest even)",
    "dtype_sequential": "upstream exp7: e1, e2, v1, v2 rounded to the model dtype first, then "
    "fl(fl(x0 + fl(e1*v1)) + fl(e2*v2)) with separate elementwise ops in the model dtype",
}
AXIS_FORMULA = (
    "e_k = (e_min*(n-1-k) + e_max*k)/(n-1) in float64, k = 0..n-1 (endpoints exact; 0 exact "
    "at the centre of a symmetric range)"
)
POINT_PATH = "full forward of [1,T,D] inputs_embeds, use_cache=False, logits_to_keep=1 (lm_head on the last row)"
FAITHFUL_PATH = "decoder stack on [B,T,D] (full recompute, no cache), then lm_head on each point's row as [1,1,D]"
SHARED_DECODER = (
    "decoder stack on [B,T,D] with every linear layer on the last row only ([B,in]; the T-1 prefix rows are "
    "those of one [1,T,D] forward), attention and norms on all T rows"
)
SHARED_HEAD_PATH = f"{SHARED_DECODER}, then {BOUNDED_HEAD}"
SHARED_PATH = f"{SHARED_DECODER}, then lm_head on each point's row as [1,1,D]"
FAST_DECODER = (
    "prefix K/V cache of rows 0..T-2 computed once at batch 1 and repeated for B points; last row of B points as "
    "[B,1,D] against it"
)
FAST_HEAD_PATH = f"{FAST_DECODER}; then {BOUNDED_HEAD} (here: on the map's first point)"
FAST_PATH = f"{FAST_DECODER}; batched lm_head [B,1,D]"


def axis(lo: float, hi: float, step: float) -> Any:
    """Grid values from lo to hi (inclusive) spaced by step, formed as `AXIS_FORMULA` says.

    The count is round((hi - lo)/step) + 1; ValueError if step does not divide the range (within
    1e-6 of a step), so a manifest never silently gets one point fewer (upstream's int() did).
    """
    import numpy as np

    if not hi >= lo:
        raise ValueError(f"range must have max >= min, got [{lo}, {hi}]")
    if hi == lo:
        return np.array([float(lo)])
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step}")
    ratio = (hi - lo) / step
    n = round(ratio) + 1
    if abs(ratio - (n - 1)) > 1e-6:
        raise ValueError(
            f"step {step} does not divide the range [{lo}, {hi}] ({ratio:.6g} steps); "
            "choose a step that fits a whole number of times"
        )
    return axis_n(lo, hi, n)


def axis_n(lo: float, hi: float, n: int) -> Any:
    """n grid values from lo to hi inclusive, formed as `AXIS_FORMULA` says (n = 1: just lo)."""
    import numpy as np

    if n < 1:
        raise ValueError(f"an axis needs at least 1 point, got {n}")
    if n == 1:
        return np.array([float(lo)])
    k = np.arange(n, dtype=np.float64)
    return (lo * (n - 1 - k) + hi * k) / (n - 1)


def form_points(x0: Any, v1: Any, v2: Any, e1: Any, e2: Any, arithmetic: str) -> Any:
    """[n1*n2, D] rounded inputs (x0's dtype, CPU), row i*n2 + j = x(e1[i], e2[j]) per `arithmetic`."""
    import torch

    if arithmetic not in ARITHMETIC:
        raise ValueError(f"arithmetic must be one of {', '.join(ARITHMETIC)}, got {arithmetic!r}")
    x0 = x0.detach().cpu()
    dtype = x0.dtype
    e1 = torch.as_tensor(e1, dtype=torch.float64)
    e2 = torch.as_tensor(e2, dtype=torch.float64)
    v1 = torch.as_tensor(v1, dtype=torch.float64).cpu()
    v2 = torch.as_tensor(v2, dtype=torch.float64).cpu()
    rows = []
    for a in e1:  # one e1 row at a time keeps the float64 temporaries at n2 x D
        if arithmetic == "fp64_then_round":
            part = x0.double() + a * v1
            rows.append((part.unsqueeze(0) + e2[:, None] * v2).to(dtype))
        else:
            step1 = a.to(dtype) * v1.to(dtype)
            part = x0 + step1
            rows.append(part.unsqueeze(0) + e2.to(dtype)[:, None] * v2.to(dtype))
    return torch.cat(rows, dim=0)


def dedup_rows(points: Any) -> tuple[Any, Any]:
    """(distinct rows [U, D] in first-seen order, inverse [N] int64 with points[i] == distinct[inverse[i]]).

    Rows are compared by their exact bytes (so -0.0 and +0.0 are different inputs, as for the model).
    """
    import numpy as np
    import torch

    from toolkit.numerics.fpunits import exact_bits

    raw = points.contiguous()
    as_bytes = exact_bits(raw)
    seen: dict[bytes, int] = {}
    inverse = np.empty(raw.shape[0], dtype=np.int64)
    first: list[int] = []
    for i in range(raw.shape[0]):
        key = as_bytes[i].tobytes()
        index = seen.get(key)
        if index is None:
            index = seen[key] = len(first)
            first.append(i)
        inverse[i] = index
    return raw[torch.as_tensor(first, dtype=torch.long)], inverse


def with_last_rows(prefix: Any, xs: Any) -> Any:
    """[B, T, D] inputs: the shared prefix [1, T-1, D] followed by each x of xs [B, D] (`fpunits.with_row`)."""
    from toolkit.numerics.fpunits import with_row

    return with_row(prefix, xs, prefix.shape[1])


def point_logits(model: Any, prefix: Any, x: Any) -> Any:
    """Reference path: logits [V] (model dtype) of ONE point, full [1, T, D] forward (see `POINT_PATH`)."""
    import torch

    with torch.no_grad():
        out = model(inputs_embeds=with_last_rows(prefix, x.reshape(1, -1)), use_cache=False, logits_to_keep=1)
    return out.logits[0, -1]


def final_rows(model: Any, prefix: Any, xs: Any) -> Any:
    """Final-norm hidden rows [B, 1, D] of the last position of B points: the batched decoder stack."""
    import torch

    from toolkit.numerics.embedding_forward import base_model

    with torch.no_grad():
        return base_model(model)(inputs_embeds=with_last_rows(prefix, xs), use_cache=False).last_hidden_state[:, -1:]


def faithful_logits(model: Any, prefix: Any, xs: Any) -> Any:
    """Logits [B, V] of B points: batched decoder stack, per-point `lm_head` (see `FAITHFUL_PATH`)."""
    import torch

    from toolkit.numerics.forward import head_logits

    hidden = final_rows(model, prefix, xs)
    with torch.no_grad():
        return torch.cat([head_logits(model, hidden[i : i + 1])[:, -1] for i in range(hidden.shape[0])], dim=0)


def logits_values(logits: Any, pair: tuple[int, int]) -> HeadValues:
    """The stored values of logits [B, V]: logit[a] − logit[b] in float64, the argmax over the
    vocabulary, and the two logits."""
    import torch

    rows = logits.reshape(-1, logits.shape[-1])
    ab = rows[:, list(pair)].double().cpu().numpy()
    gap = ab[:, 0] - ab[:, 1]  # exact for two fp32 (or narrower) values of similar size
    return HeadValues(gap, torch.argmax(rows, dim=-1).cpu().numpy().astype("int64"), ab)


def balanced_batch(requested: int, n: int) -> int:
    """The batch size for n rows: as few batches as `requested` needs, each as small as that allows
    (961 rows at 64: 16 batches of 61, not 15 of 64 and a 64-row batch holding one row)."""
    size = max(1, min(requested, n))
    batches = max(1, -(-n // size))  # no rows: one (empty) batch, as before balancing
    return max(1, -(-n // batches))


def pad_rows(xs: Any, size: int) -> Any:
    """xs [b, D] padded to [size, D] with copies of its last row (b <= size)."""
    import torch

    if xs.shape[0] == size:
        return xs
    return torch.cat([xs, xs[-1:].expand(size - xs.shape[0], -1)], dim=0)


def evaluate_values(
    fn: Callable[[Any], HeadValues],
    xs: Any,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    first: HeadValues | None = None,
) -> tuple[Any, Any, Any]:
    """(gap float64 [U], argmax int64 [U], logits of the pair [U, 2] float64) of every row of xs.

    `fn` maps a [batch_size, D] block to its `HeadValues`; the last block is padded.  `first`: the
    values `fn` already gave for the first block (a run-time check computes them), not recomputed.
    """
    import numpy as np

    n = xs.shape[0]
    gaps, tops, pairs = np.empty(n), np.empty(n, dtype=np.int64), np.empty((n, 2))
    for start in range(0, n, batch_size):
        block = xs[start : start + batch_size]
        real = block.shape[0]
        values = first if start == 0 and first is not None else fn(pad_rows(block, batch_size))
        gaps[start : start + real] = values.gap[:real]
        tops[start : start + real] = values.argmax[:real]
        pairs[start : start + real] = values.pair[:real]
        if progress is not None:
            progress(real)
    return gaps, tops, pairs


def evaluate(
    fn: Callable[[Any], Any],
    xs: Any,
    batch_size: int,
    pair: tuple[int, int],
    progress: Callable[[int], None] | None = None,
    first: Any = None,
) -> tuple[Any, Any, Any]:
    """`evaluate_values` for `fn` mapping a [batch_size, D] block to logits [batch_size, V];
    `first`: the logits `fn` already gave for the first block."""
    known = logits_values(first, pair) if first is not None else None
    return evaluate_values(lambda block: logits_values(fn(block), pair), xs, batch_size, progress, known)


@dataclass
class GridResult:
    """Values per grid point (row-major over e1 then e2) and how they were computed."""

    gap: Any  # [N] float64 logit[a] − logit[b] from native logits
    argmax: Any  # [N] int64
    logits_ab: Any  # [N, 2] float64 the two logits
    distinct: Any  # [N] int64 index of the point's distinct rounded input
    n_distinct: int
    check: BatchCheck | None
    batch_size: int
    agreement: dict[str, Any] | None  # fast mode: sample indices, faithful and fast gaps, rates
    path: str = ""  # one of the *_PATH descriptions above: how the values were computed


def run_grid(
    model: Any,
    prefix: Any,
    points: Any,
    pair: tuple[int, int],
    mode: str,
    batch_size: int,
    check_sample: int = 8,
    dedup: bool = True,
    agreement_sample: int = 64,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> GridResult:
    """Evaluate every point of a grid (see the module docstring for `mode` faithful | fast)."""
    import numpy as np

    if mode not in ("faithful", "fast"):
        raise ValueError(f"mode must be 'faithful' or 'fast', got {mode!r}")
    device = prefix.device
    if dedup:
        xs, inverse = dedup_rows(points)
    else:
        xs, inverse = points, np.arange(points.shape[0], dtype=np.int64)
    xs = xs.to(device)
    check = None
    if mode == "faithful":
        from toolkit.numerics.grid_faithful import faithful  # balances its batches itself, within the row classes

        gap, top, ab, check, path = faithful(model, prefix, xs, pair, batch_size, check_sample, progress)
        used = check.used
    else:
        from toolkit.numerics import grid_fast

        used = batch_size = balanced_batch(batch_size, xs.shape[0])
        gap, top, ab, path = grid_fast.fast_map(model, prefix, xs, pair, batch_size, progress)
    agreement = None
    if mode == "fast":
        agreement = grid_fast.agreement(model, prefix, xs, gap, pair, agreement_sample, seed, progress)
        agreement["distinct_index"] = agreement.pop("index")  # sample indices refer to distinct inputs
    return GridResult(
        gap=gap[inverse],
        argmax=top[inverse],
        logits_ab=ab[inverse],
        distinct=inverse,
        n_distinct=int(xs.shape[0]),
        check=check,
        batch_size=used,
        agreement=agreement,
        path=path,
    )
