"""Faithful mode of a 2-D grid: the fastest evaluation path proven bitwise equal to one full
forward per point (`toolkit.numerics.grid.point_logits`) on a sample at run time.

Paths, tried in order (descriptions in `toolkit.numerics.grid`): `SHARED_HEAD_PATH` (shared-prefix
decoder + bounded head, `bounded_check`), `SHARED_PATH` (shared-prefix decoder + per-point head),
`FAITHFUL_PATH` (batched decoder + per-point head), each after its own check (`batch_check`), else
`POINT_PATH`.  The check that allowed the path is returned and stored with the map; its `note`
says why faster paths were not taken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.numerics.exact_head import BLOCK, BoundedHead
from toolkit.numerics.grid import (
    FAITHFUL_PATH,
    POINT_PATH,
    SHARED_HEAD_PATH,
    SHARED_PATH,
    HeadValues,
    balanced_batch,
    evaluate,
    evaluate_values,
    faithful_logits,
    final_rows,
    logits_values,
    pad_rows,
    point_logits,
)

if TYPE_CHECKING:
    from toolkit.numerics.row_classes import RowProbe
    from toolkit.numerics.shared_prefix import SharedPrefix
    from toolkit.numerics.tiled_linear import Tiling


@dataclass
class BatchCheck:
    """Outcome of comparing batched against one-at-a-time values on a sample of inputs."""

    requested: int  # batch size asked for
    used: int  # batch size actually used (1 when the check failed)
    equal: bool  # every sampled value bitwise equal
    sample: int  # number of inputs compared
    max_abs_diff: float
    note: str = ""  # what else was compared, or why a path was not tried


def _check_batch(xs: Any, batch_size: int, sample: int) -> tuple[Any, list[int]]:
    """The first `batch_size` rows of xs padded with copies of the last one (the shape every later
    call has), and the rows to compare: `sample` of the real ones, the first and last included."""
    import numpy as np

    real = min(batch_size, xs.shape[0])
    picks = sorted(set(np.linspace(0, real - 1, min(sample, real)).round().astype(int).tolist()))
    return pad_rows(xs[:real], batch_size), picks


def batch_check(
    model: Any, prefix: Any, xs: Any, batch_size: int, sample: int, batched: Callable[[Any], Any] | None = None
) -> tuple[BatchCheck, Any]:
    """Compare `batched` (default `faithful_logits`) on one full batch with `point_logits` on
    `sample` of its rows (`_check_batch`), every logit bitwise; also returns the batch's logits
    (the first block of the map: not computed twice)."""
    import torch

    if batch_size <= 1:
        return BatchCheck(batch_size, 1, True, 0, 0.0), None
    batch, picks = _check_batch(xs, batch_size, sample)
    batched_rows = batched(batch) if batched is not None else faithful_logits(model, prefix, batch)
    diff = 0.0
    equal = True
    for i in picks:
        single = point_logits(model, prefix, batch[i])
        equal &= bool(torch.equal(single, batched_rows[i]))
        diff = max(diff, float((single.double() - batched_rows[i].double()).abs().max()))
    return BatchCheck(batch_size, batch_size if equal else 1, equal, len(picks), diff), batched_rows


def bounded_check(
    model: Any,
    prefix: Any,
    xs: Any,
    batch_size: int,
    sample: int,
    hidden: Callable[[Any], Any],
    head: BoundedHead,
    pair: tuple[int, int],
) -> tuple[BatchCheck, HeadValues]:
    """Check the bounded head behind the decoder `hidden` (a batch [B, D] → final rows [B, 1, D]) on
    `sample` rows of one full batch: its stored values equal `point_logits`' bit for bit, and every
    vocabulary row through its GEMV blocks (in a shuffled order, each row with one of the sampled
    points) equals `point_logits`' logits.
    Also returns the batch's values (the first block of the map: not computed twice)."""
    import numpy as np

    batch, picks = _check_batch(xs, batch_size, sample)
    rows = hidden(batch)
    values = head.values(rows, pair)
    diff = 0.0
    equal = True
    for k, i in enumerate(picks):
        single = point_logits(model, prefix, batch[i])
        blocks_equal, block_diff = head.check_blocks(rows[i : i + 1], single, part=(k, len(picks)))
        want = logits_values(single.unsqueeze(0), pair)
        equal &= blocks_equal and int(want.argmax[0]) == int(values.argmax[i])
        equal &= bool(np.array_equal(want.pair[0], values.pair[i]))
        diff = max(diff, block_diff, float(np.abs(want.pair[0] - values.pair[i]).max()))
    note = (
        f"bounded head: pair logits and argmax of {len(picks)} points, and every vocabulary row (each with one of "
        f"them) through {BLOCK}-row GEMV blocks, compared with point_logits"
    )
    return BatchCheck(batch_size, batch_size if equal else 1, equal, len(picks), diff, note), values


def faithful(
    model: Any,
    prefix: Any,
    xs: Any,
    pair: tuple[int, int],
    batch_size: int,
    check_sample: int,
    progress: Callable[[int], None] | None,
) -> tuple[Any, Any, Any, BatchCheck, str]:
    """(gap, argmax, logits of the pair, the check that allowed the path, the path) of faithful mode:
    the first of `SHARED_HEAD_PATH`, `SHARED_PATH`, `FAITHFUL_PATH` whose own bitwise check passes,
    else one point at a time (`POINT_PATH`).  `batch_size` is balanced over the inputs
    (`balanced_batch`); where matmuls of that many rows round unlike the one-point forward's on this
    machine (`toolkit.numerics.row_classes.RowProbe`), the shared-prefix paths run it tiled
    (`toolkit.numerics.tiled_linear`) and then at the largest batch that fits, and the full
    recompute at the largest that fits; the check's `note` says which."""
    from toolkit.numerics.row_classes import RowProbe

    notes: list[str] = []
    refused: list[BatchCheck] = []
    length = prefix.shape[1] + 1
    probe = RowProbe(model, length)
    wanted = balanced_batch(batch_size, xs.shape[0])
    if wanted > 1 and prefix.shape[1] > 0:
        found = _shared_paths(model, prefix, xs, pair, batch_size, check_sample, progress, probe, notes, refused)
        if found is not None:
            return found
    size = _batch(probe, length, batch_size, xs.shape[0])
    check, first = batch_check(model, prefix, xs, size, check_sample)
    if size < 2 and refused:  # no batch for a full recompute: report the check that refused the last path
        check = refused[-1]
        check.used = 1
    check.requested = wanted
    check.note = "; ".join(notes + _fitted(wanted, size, length, length))
    if check.used > 1:
        return (
            *evaluate(lambda block: faithful_logits(model, prefix, block), xs, check.used, pair, progress, first),
            check,
            FAITHFUL_PATH,
        )

    def one(block: Any) -> Any:
        return point_logits(model, prefix, block[0]).unsqueeze(0)

    return (*evaluate(one, xs, 1, pair, progress), check, POINT_PATH)


def _shared_paths(
    model: Any,
    prefix: Any,
    xs: Any,
    pair: tuple[int, int],
    requested: int,
    check_sample: int,
    progress: Callable[[int], None] | None,
    probe: RowProbe,
    notes: list[str],
    refused: list[BatchCheck],
) -> tuple[Any, Any, Any, BatchCheck, str] | None:
    """`faithful`'s result by `SHARED_HEAD_PATH` or `SHARED_PATH`, or None (why: appended to `notes`,
    the checks that failed to `refused`).  First at the requested batch (balanced) with its matmuls
    tiled where the row-class probe needs it (`RowProbe.tiling`), then at the probe's largest plain
    batch up to `requested` (balanced where that fits too)."""
    from toolkit.numerics.shared_prefix import SharedPrefix

    length = probe.reference_rows
    wanted = balanced_batch(requested, xs.shape[0])
    variants: list[tuple[int, Tiling | None, list[str]]] = []
    tiling = probe.tiling(wanted) if wanted > 1 else None
    if tiling is not None:
        why = f"the row-class probe's largest height rounding like the one-point forward's {length} rows"
        variants.append((tiling.rows, tiling, [f"batch {tiling.rows}: {tiling.describe()} ({why})"]))
    size = _batch(probe, 1, requested, xs.shape[0])
    if size >= 2:
        variants.append((size, None, _fitted(wanted, size, length, 1)))
    else:
        notes.append(
            f"plain shared-prefix batch not tried: the row-class probe found no matmul of 2 to {requested} rows "
            f"rounding like the one-point forward's {length} rows on this machine"
        )
    if not variants:
        return None
    shared = SharedPrefix(model, prefix, xs[0])
    for size, tiling, fitted in variants:
        found = _shared_variant(model, prefix, xs, pair, size, tiling, shared, check_sample, progress, notes, refused)
        if found is not None:
            check = found[3]
            check.requested, check.note = wanted, "; ".join([line for line in (check.note, *fitted) if line])
            return found
    return None


def _shared_variant(
    model: Any,
    prefix: Any,
    xs: Any,
    pair: tuple[int, int],
    size: int,
    tiling: Tiling | None,
    shared: SharedPrefix,
    check_sample: int,
    progress: Callable[[int], None] | None,
    notes: list[str],
    refused: list[BatchCheck],
) -> tuple[Any, Any, Any, BatchCheck, str] | None:
    """The shared-prefix decoder at batch `size` (tiled by `tiling`): with the bounded head, else the
    per-point head, each after its own check; None when both checks fail (noted)."""
    from toolkit.numerics.exact_head import unusable_reason

    how = f"batch {size}{', tiled' if tiling else ''}"

    def shared_rows(block: Any) -> Any:
        with shared.patched(tiling):  # only around the batch: the check's references run unpatched
            return final_rows(model, prefix, block)

    reason = unusable_reason(model)
    if reason is None:
        head = BoundedHead(model)
        check, first = bounded_check(model, prefix, xs, size, check_sample, shared_rows, head, pair)
        if check.equal:
            values = evaluate_values(lambda block: head.values(shared_rows(block), pair), xs, size, progress, first)
            return (*values, check, SHARED_HEAD_PATH)
        notes.append(f"bounded head refused by its check at {how} (max |diff| {check.max_abs_diff:.3g})")
        refused.append(check)
    elif f"bounded head not usable: {reason}" not in notes:
        notes.append(f"bounded head not usable: {reason}")

    def shared_batch(block: Any) -> Any:
        with shared.patched(tiling):
            return faithful_logits(model, prefix, block)

    check, first = batch_check(model, prefix, xs, size, check_sample, shared_batch)
    if check.equal:
        check.note = "; ".join(notes)
        return (*evaluate(shared_batch, xs, size, pair, progress, first), check, SHARED_PATH)
    notes.append(f"shared-prefix decoder refused by its check at {how} (max |diff| {check.max_abs_diff:.3g})")
    refused.append(check)
    return None


def _batch(probe: RowProbe, rows_per_point: int, requested: int, n: int) -> int:
    """The batch size for n inputs: the largest up to `requested` that the row-class probe fits,
    balanced (`balanced_batch`: fewer padded rows) where the balanced size fits too."""
    if requested < 2:
        return 1
    size = probe.batch_like(rows_per_point, requested)
    balanced = balanced_batch(size, n)
    return balanced if balanced == size or probe.fits(balanced * rows_per_point) else size


def _fitted(requested: int, used: int, length: int, rows_per_point: int) -> list[str]:
    """The note (empty or one line) when the row-class probe lowered the batch size below `requested`."""
    if used >= requested:
        return []
    return [
        f"batch {used} of {requested} requested: the row-class probe found no larger matmul than "
        f"{used * rows_per_point} rows rounding like the one-point forward's {length} rows on this machine"
    ]
