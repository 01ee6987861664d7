"""2-D grids of perturbed last-token embeddings, evaluated faithfully (bitwise = per point) or fast.

A grid point is x(e1, e2) = x0 + e1·v1 + e2·v2 rounded to the model dtype, with the arithmetic
named by `arithmetic` (recorded in the store, see `ARITHMETIC`).  Every point shares the prompt
prefix (rows 0..T-2 of the input embeddings); only the last row changes.

Evaluation paths, all returning the native-dtype logits of the last position:

* `point_logits` — THE reference: one full forward of [1, T, D] (no KV cache, every position
  recomputed) with `logits_to_keep=1`, one point at a time.  This is the plain per-point loop.
* `faithful_logits` — the decoder stack on a batch [B, T, D] (full recompute), then `lm_head` on
  each point's final-norm row separately ([1, 1, D], the shape `point_logits` uses).  On CPU
  (torch 2.13) the decoder stack was batch-invariant but a batched `lm_head` (M = B) was not
  bitwise equal to the per-point GEMV (M = 1).  It is only used after `batch_check` proved, on a
  sample, that it is bitwise equal to `point_logits` for this model/device/dtype/batch size.
* the shared-prefix faithful path (`SHARED_PATH`, tried first): the same batched call inside
  `toolkit.numerics.shared_prefix.shared_prefix_rows`, where the linear layers compute the last
  row only and take the prefix rows from one [1, T, D] forward; used only after its own
  `batch_check` passed, else the plain batched path, else one point at a time.
* `PrefixCache.logits` (fast) — the prefix K/V computed once, then only the last position for a
  batch of points against it, with a batched `lm_head`.  Not bitwise equal; callers must report
  agreement with the faithful values.

Distinct inputs: at small ε most grid points round to the same x, so `dedup_rows` groups points
by the exact bits of their rounded input; each distinct input is evaluated once and scattered.
A forward is a deterministic function of its input bits on a fixed machine, so this is exact.
Every batched call is padded to a full batch (copies of its last input), so every call has the
shape the check validated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
SHARED_PATH = (
    "decoder stack on [B,T,D] with every linear layer on the last row only ([B,in]; the T-1 prefix rows are "
    "those of one [1,T,D] forward), attention and norms on all T rows, then lm_head on each point's row as [1,1,D]"
)
FAST_PATH = (
    "prefix K/V cache of rows 0..T-2 computed once; last row of B points as [B,1,D] against it; batched lm_head [B,1,D]"
)


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


def faithful_logits(model: Any, prefix: Any, xs: Any) -> Any:
    """Logits [B, V] of B points: batched decoder stack, per-point `lm_head` (see `FAITHFUL_PATH`)."""
    import torch

    from toolkit.numerics.embedding_forward import base_model
    from toolkit.numerics.forward import head_logits

    with torch.no_grad():
        hidden = base_model(model)(inputs_embeds=with_last_rows(prefix, xs), use_cache=False).last_hidden_state
        return torch.cat([head_logits(model, hidden[i : i + 1, -1:, :])[:, -1] for i in range(hidden.shape[0])], dim=0)


def gap_and_argmax(logits: Any, pair: tuple[int, int]) -> tuple[Any, Any]:
    """(logit[a] − logit[b] as float64 numpy [B], argmax over the vocabulary int64 numpy [B])."""
    import torch

    rows = logits.reshape(-1, logits.shape[-1])
    ab = rows[:, list(pair)].double().cpu()
    gap = (ab[:, 0] - ab[:, 1]).numpy()  # exact for two fp32 (or narrower) values of similar size
    return gap, torch.argmax(rows, dim=-1).cpu().numpy().astype("int64")


@dataclass
class BatchCheck:
    """Outcome of comparing batched against one-at-a-time logits on a sample of inputs."""

    requested: int  # batch size asked for
    used: int  # batch size actually used (1 when the check failed)
    equal: bool  # every sampled logits row bitwise equal
    sample: int  # number of inputs compared
    max_abs_diff: float


def batch_check(
    model: Any, prefix: Any, xs: Any, batch_size: int, sample: int, batched: Callable[[Any], Any] | None = None
) -> BatchCheck:
    """Compare `batched` (default `faithful_logits`) on one full batch with `point_logits` on
    `sample` of its rows.

    The batch is the first `batch_size` rows of xs, padded with copies of the last one (the shape
    every later call has); the sampled rows include the first and the last real row.
    """
    import numpy as np
    import torch

    if batch_size <= 1:
        return BatchCheck(batch_size, 1, True, 0, 0.0)
    real = min(batch_size, xs.shape[0])
    batch = pad_rows(xs[:real], batch_size)
    batched_rows = batched(batch) if batched is not None else faithful_logits(model, prefix, batch)
    picks = sorted(set(np.linspace(0, real - 1, min(sample, real)).round().astype(int).tolist()))
    diff = 0.0
    equal = True
    for i in picks:
        single = point_logits(model, prefix, batch[i])
        equal &= bool(torch.equal(single, batched_rows[i]))
        diff = max(diff, float((single.double() - batched_rows[i].double()).abs().max()))
    return BatchCheck(batch_size, batch_size if equal else 1, equal, len(picks), diff)


def pad_rows(xs: Any, size: int) -> Any:
    """xs [b, D] padded to [size, D] with copies of its last row (b <= size)."""
    import torch

    if xs.shape[0] == size:
        return xs
    return torch.cat([xs, xs[-1:].expand(size - xs.shape[0], -1)], dim=0)


def evaluate(
    fn: Callable[[Any], Any],
    xs: Any,
    batch_size: int,
    pair: tuple[int, int],
    progress: Callable[[int], None] | None = None,
) -> tuple[Any, Any, Any]:
    """(gap float64 [U], argmax int64 [U], logits of the pair [U, 2] float64) of every row of xs.

    `fn` maps a [batch_size, D] block to logits [batch_size, V]; the last block is padded.
    """
    import numpy as np

    n = xs.shape[0]
    gaps, tops, pairs = np.empty(n), np.empty(n, dtype=np.int64), np.empty((n, 2))
    for start in range(0, n, batch_size):
        block = xs[start : start + batch_size]
        real = block.shape[0]
        logits = fn(pad_rows(block, batch_size))[:real]
        gaps[start : start + real], tops[start : start + real] = gap_and_argmax(logits, pair)
        pairs[start : start + real] = logits[:, list(pair)].double().cpu().numpy()
        if progress is not None:
            progress(real)
    return gaps, tops, pairs


class PrefixCache:
    """Fast path: the prefix K/V computed once for a batch size, reused for every block of points."""

    def __init__(self, model: Any, prefix: Any, batch_size: int) -> None:
        import torch

        from toolkit.numerics.forward import last_logits

        self.model = model
        self.batch_size = batch_size
        self.prefix_length = prefix.shape[1]
        with torch.no_grad():
            _, self.cache = last_logits(model, inputs_embeds=prefix.expand(batch_size, -1, -1), use_cache=True)

    def logits(self, xs: Any) -> Any:
        """Logits [B, V] for B = batch_size last-row inputs xs [B, D] against the cached prefix."""
        import torch

        from toolkit.numerics.forward import last_logits

        if xs.shape[0] != self.batch_size:
            raise ValueError(f"PrefixCache was built for batches of {self.batch_size}, got {xs.shape[0]}")
        with torch.no_grad():
            logits, _ = last_logits(self.model, inputs_embeds=xs.unsqueeze(1), cache=self.cache, use_cache=True)
        self._restore()
        return logits

    def _restore(self) -> None:
        extra = self.cache.get_seq_length() - self.prefix_length
        if extra > 0:
            try:
                self.cache.crop(-extra)  # transformers >= 5: a negative count removes tokens
            except ValueError:
                self.cache.crop(self.prefix_length)


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
    path: str = ""  # SHARED_PATH, FAITHFUL_PATH, POINT_PATH or FAST_PATH: how the values were computed


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
    batch_size = max(1, min(batch_size, xs.shape[0]))  # never pad beyond the number of distinct inputs
    check = None
    if mode == "faithful":
        gap, top, ab, check, path = _faithful(model, prefix, xs, pair, batch_size, check_sample, progress)
        used = check.used
    else:
        used, path = batch_size, FAST_PATH
        gap, top, ab = evaluate(PrefixCache(model, prefix, batch_size).logits, xs, used, pair, progress)
    agreement = None
    if mode == "fast":
        agreement = _agreement(model, prefix, xs, gap, pair, agreement_sample, seed, progress)
    if agreement is not None:  # sample indices refer to distinct inputs; report grid points too
        agreement["distinct_index"] = agreement.pop("index")
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


def _faithful(
    model: Any,
    prefix: Any,
    xs: Any,
    pair: tuple[int, int],
    batch_size: int,
    check_sample: int,
    progress: Callable[[int], None] | None,
) -> tuple[Any, Any, Any, BatchCheck, str]:
    """(gap, argmax, logits of the pair, the check that allowed the path, the path) of faithful mode:
    `SHARED_PATH` if its batch check passes, else `FAITHFUL_PATH` if that check passes, else one
    point at a time (`POINT_PATH`).  Each batched path is used only after its own bitwise check."""
    from toolkit.numerics.shared_prefix import SharedPrefix

    def batched(block: Any) -> Any:
        return faithful_logits(model, prefix, block)

    if batch_size > 1 and prefix.shape[1] > 0:
        shared = SharedPrefix(model, prefix, xs[0])

        def shared_batch(block: Any) -> Any:
            with shared.patched():  # only around the batch: the check's references run unpatched
                return faithful_logits(model, prefix, block)

        check = batch_check(model, prefix, xs, batch_size, check_sample, shared_batch)
        if check.equal:
            return (*evaluate(shared_batch, xs, batch_size, pair, progress), check, SHARED_PATH)
    check = batch_check(model, prefix, xs, batch_size, check_sample)
    if check.used > 1:
        return (*evaluate(batched, xs, check.used, pair, progress), check, FAITHFUL_PATH)

    def one(block: Any) -> Any:
        return point_logits(model, prefix, block[0]).unsqueeze(0)

    return (*evaluate(one, xs, 1, pair, progress), check, POINT_PATH)


def _agreement(
    model: Any,
    prefix: Any,
    xs: Any,
    fast_gap: Any,
    pair: tuple[int, int],
    sample: int,
    seed: int,
    progress: Callable[[int], None] | None,
) -> dict[str, Any]:
    """Faithful (per-point) gaps on a seeded random sample of distinct inputs vs the fast gaps."""
    import numpy as np

    rng = np.random.default_rng(seed)
    count = min(sample, xs.shape[0])
    index = np.sort(rng.choice(xs.shape[0], size=count, replace=False))
    faithful = np.empty(count)
    for k, i in enumerate(index):
        faithful[k] = gap_and_argmax(point_logits(model, prefix, xs[int(i)]), pair)[0][0]
        if progress is not None:
            progress(1)
    fast = fast_gap[index]
    same_sign = np.sign(faithful) == np.sign(fast)
    return {
        "index": index.astype(np.int64),
        "faithful_gap": faithful,
        "fast_gap": fast,
        "sign_agreement": float(same_sign.mean()) if count else float("nan"),
        "max_abs_gap_diff": float(np.abs(faithful - fast).max()) if count else float("nan"),
        "bitwise_equal": int((faithful == fast).sum()),
    }
