"""Floating-point units, defined once: spacing (one ULP), ULP distance, exact bits, row replacement.

Every other module asks this one; no other module computes these quantities itself.

Formats: `bfloat16`, `float16`, `float32`, `float64` (`FORMATS`), named by string, numpy dtype or
torch dtype.  A format has `precision` p significand bits (implicit bit included) and normal
binades 2**emin … 2**emax.  bfloat16 is the top 16 bits of a float32: float32's exponent range
with p = 8.

**Spacing** (`spacing`, `ulp`) — one ULP of a value x in a format: the distance from |x| to the
next representable number of larger magnitude, i.e. 2**(max(e, emin) − p + 1) where 2**e ≤ |x| <
2**(e+1) (Goldberg's ulp).  For |x| a power of two this is the larger spacing of its binade (the
one above); for 0, ±0 and subnormals it is the smallest subnormal 2**(emin − p + 1).  Every
finite value below the largest finite one gets exactly `nextafter(|x|, +inf) − |x|`; the largest
finite value gets the spacing of its own binade (not inf).  x need not be representable in the
format (the binade of x itself is used, with no rounding first).  |x| ≥ 2**(emax+1), ±inf and NaN
have no spacing: NaN.  Results are float64 and exact (powers of two).

**ULP distance** (`ulp_distance`) — for two values a, b of ONE format, the number of representable
values v with min(a, b) < v ≤ max(a, b), counted on the ordered integers of the format: the
sign-magnitude bit pattern s·m maps to m for s = 0 and to −m for s = 1 (`ordered_ints`), so
adjacent floats are adjacent integers and the distance is |ord(a) − ord(b)|.  +0 and −0 are one
value (distance 0); the smallest subnormals −t and +t are 2 apart (−t, ±0, +t); ±inf count as one
step beyond ±max finite; a NaN on either side gives −1.  int64; a distance ≥ 2**63 (float64 only:
opposite signs and both |x| ≳ 2) saturates at 2**63 − 1.

**Exact bits** (`exact_bits`, `exact_bytes`, `tensor_hash`) — the unsigned-integer view of the
storage (uint16/uint32/uint64, bfloat16 included, which numpy cannot hold as a float): equal bits ⇔
equal stored values, so −0.0 ≠ +0.0 and NaNs compare by payload.  Hashes are blake2b over those
bytes (native byte order), stable across processes.

**Row replacement** (`with_row`) — the model input with one embedding row replaced by x (all other
rows untouched, no in-place write), for one x or a batch of B of them.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

    DTypeLike = str | np.dtype | type | torch.dtype
    Values = npt.ArrayLike | torch.Tensor
else:
    DTypeLike = object
    Values = object

INT64_MAX = np.iinfo(np.int64).max
_SIGNED: dict[int, type[np.signedinteger]] = {16: np.int16, 32: np.int32, 64: np.int64}
_UNSIGNED: dict[int, type[np.unsignedinteger]] = {16: np.uint16, 32: np.uint32, 64: np.uint64}


@dataclass(frozen=True)
class FloatFormat:
    """One binary floating-point format: storage width, significand precision and exponent range."""

    name: str  # "bfloat16", "float16", "float32" or "float64"
    bits: int  # storage width
    precision: int  # p: significand bits including the implicit leading bit
    emin: int  # smallest normal = 2**emin
    emax: int  # largest finite < 2**(emax+1)

    @property
    def smallest_subnormal(self) -> float:
        """2**(emin − p + 1): the spacing of every subnormal and of zero."""
        return float(np.ldexp(1.0, self.emin - self.precision + 1))

    @property
    def signed_int(self) -> type[np.signedinteger]:
        """The numpy signed integer type of the storage width."""
        return _SIGNED[self.bits]

    @property
    def unsigned_int(self) -> type[np.unsignedinteger]:
        """The numpy unsigned integer type of the storage width (the type of `exact_bits`)."""
        return _UNSIGNED[self.bits]


FORMATS: dict[str, FloatFormat] = {
    f.name: f
    for f in (
        FloatFormat("bfloat16", 16, 8, -126, 127),
        FloatFormat("float16", 16, 11, -14, 15),
        FloatFormat("float32", 32, 24, -126, 127),
        FloatFormat("float64", 64, 53, -1022, 1023),
    )
}


def float_format(dtype: DTypeLike) -> FloatFormat:
    """The `FloatFormat` of a format name, numpy dtype or torch dtype (TypeError for anything else)."""
    if isinstance(dtype, str):
        name = dtype.replace("torch.", "")
    elif _is_torch_dtype(dtype):
        name = str(dtype).replace("torch.", "")
    else:
        try:
            name = np.dtype(dtype).name  # type: ignore[arg-type]
        except TypeError:
            name = repr(dtype)
    if name not in FORMATS:
        raise TypeError(f"no floating-point units for {dtype!r}; known formats: {', '.join(FORMATS)}")
    return FORMATS[name]


def format_of(values: Values) -> FloatFormat:
    """The format a tensor or array is stored in (TypeError for non-float storage)."""
    if _is_tensor(values):
        return float_format(values.dtype)  # type: ignore[union-attr]
    return float_format(np.asarray(values).dtype)


def spacing(values: Values, dtype: DTypeLike | None = None) -> npt.NDArray[np.float64]:
    """One ULP of each value in `dtype` (default: the values' own format), float64, same shape.

    See the module docstring: 2**(max(e, emin) − p + 1) for 2**e ≤ |x| < 2**(e+1); NaN where the
    value is NaN, infinite or beyond the format's range.  Used to express logit gaps and margins in
    ULPs and to find the step below which a perturbation cannot move a coordinate.
    """
    fmt = format_of(values) if dtype is None else float_format(dtype)
    mags = np.abs(_as_float64(values))
    _, exponent = np.frexp(mags)  # mags = f·2**exponent, f in [0.5, 1): floor(log2) = exponent − 1
    binade = np.where(mags == 0, fmt.emin, np.maximum(exponent - 1, fmt.emin))
    out = np.ldexp(1.0, binade - (fmt.precision - 1))
    inside = np.isfinite(mags) & (binade <= fmt.emax)
    return np.where(inside, out, np.nan).astype(np.float64)


def ulp(value: float, dtype: DTypeLike) -> float:
    """One ULP of a single value in `dtype` (see `spacing`), as a Python float."""
    return float(spacing(np.float64(value), dtype))


def exact_bits(values: Values) -> npt.NDArray[np.unsignedinteger]:
    """The stored bit patterns as unsigned integers (uint16/32/64), same shape, on the CPU.

    For bitwise comparison (equal ⇔ same bits: −0.0 ≠ +0.0) and hashing; works for bfloat16, whose
    values numpy cannot hold as floats.
    """
    fmt = format_of(values)
    if _is_tensor(values):
        import torch

        signed = {16: torch.int16, 32: torch.int32, 64: torch.int64}[fmt.bits]
        raw = values.detach().cpu().contiguous().view(signed).numpy()  # type: ignore[union-attr]
    else:
        raw = np.asarray(values)
        if not raw.flags.c_contiguous:
            raw = raw.copy(order="C")
    return raw.view(fmt.unsigned_int)


def exact_bytes(values: Values) -> bytes:
    """The stored bytes (C order, native byte order) of a tensor or array: the key of bitwise dedup."""
    return exact_bits(values).tobytes()


def bits_hash(raw: bytes) -> int:
    """A 64-bit hash of raw bytes, stable across processes and machines (blake2b)."""
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


def tensor_hash(values: Values) -> int:
    """64-bit hash of a tensor's or array's exact bits in its own format (bf16 included)."""
    return bits_hash(exact_bytes(values))


def ordered_ints(values: Values) -> npt.NDArray[np.int64]:
    """Integers in the order of the float values (int64): m for sign 0, −m for sign 1 (±0 → 0).

    m is the bit pattern without the sign bit; adjacent representable values map to adjacent
    integers, NaN patterns map beyond ±inf.
    """
    fmt = format_of(values)
    signed = exact_bits(values).view(fmt.signed_int).astype(np.int64)
    sign_min = -(1 << (fmt.bits - 1))
    return np.where(signed < 0, sign_min - signed, signed)


def ulp_distance(a: Values, b: Values) -> npt.NDArray[np.int64]:
    """Elementwise number of representable values between a and b (one format; see the module docstring).

    int64: 0 for equal values (and for +0/−0), −1 where either side is NaN, saturated at 2**63 − 1.
    Used to count how far a perturbed or recomputed value moved in its own format.
    """
    fa, fb = format_of(a), format_of(b)
    if fa != fb:
        raise TypeError(f"ULP distance between {fa.name} and {fb.name}: cast both to one format first")
    oa, ob = ordered_ints(a), ordered_ints(b)
    hi, lo = np.maximum(oa, ob), np.minimum(oa, ob)
    with np.errstate(over="ignore"):
        apart = hi.astype(np.uint64) - lo.astype(np.uint64)  # exact: the true difference is < 2**64
    dist = np.minimum(apart, np.uint64(INT64_MAX)).astype(np.int64)
    return np.where(np.isnan(_as_float64(a)) | np.isnan(_as_float64(b)), -1, dist)


def with_row(embeds: torch.Tensor, x: torch.Tensor, position: int = -1) -> torch.Tensor:
    """`embeds` [1, T, D] with row `position` replaced by x, functional (no in-place write).

    x [D] gives one input [1, T, D]; xs [B, D] gives B inputs [B, T, D], row `position` of input b
    being xs[b].  `position` counts from the end when negative; position T appends x after the last
    row (then `embeds` holds the rows before it, as the prefix K/V cache does).  x is cast to the
    embeddings' dtype.  Used for every perturbed or searched input embedding.
    """
    import torch

    from toolkit.numerics.embedding_forward import normalise_position

    length, width = embeds.shape[1], embeds.shape[-1]
    index = length if position == length else normalise_position(position, length)
    rows = x.reshape(-1, 1, width).to(embeds.dtype)
    batch = rows.shape[0]
    return torch.cat(
        [embeds[:, :index].expand(batch, -1, -1), rows, embeds[:, index + 1 :].expand(batch, -1, -1)], dim=1
    )


def _is_tensor(values: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(values, torch.Tensor)


def _is_torch_dtype(dtype: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(dtype, torch.dtype)


def _as_float64(values: Values) -> npt.NDArray[np.float64]:
    """An exact float64 copy (every value of the four formats is a float64 value)."""
    if _is_tensor(values):
        return values.detach().double().cpu().numpy()  # type: ignore[union-attr]
    return np.asarray(values, dtype=np.float64)
