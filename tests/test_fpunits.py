"""toolkit.numerics.fpunits pinned against brute-force definitions.

Known answers come from enumeration in this file: `numpy.nextafter` walks for float16/32/64, and for
bfloat16 all 65536 bit patterns (a bfloat16 is the top 16 bits of a float32), never from the code
under test.
"""

import hashlib
import struct

import numpy as np
import pytest
import torch

from toolkit.numerics import fpunits
from toolkit.numerics.fpunits import (
    exact_bits,
    exact_bytes,
    float_format,
    ordered_ints,
    spacing,
    tensor_hash,
    ulp,
    ulp_distance,
    with_row,
)

NP = {"float16": np.float16, "float32": np.float32, "float64": np.float64}
TORCH = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


def all_bf16() -> torch.Tensor:
    """Every bfloat16 bit pattern, as a bfloat16 tensor (built from float32 top halves)."""
    halves = np.arange(1 << 16, dtype=np.uint32) << 16
    return torch.from_numpy(halves.view(np.float32).copy()).to(torch.bfloat16)


def all_fp16() -> np.ndarray:
    return np.arange(1 << 16, dtype=np.uint16).view(np.float16)


def bf16_ladder() -> np.ndarray:
    """Sorted distinct bfloat16 values (−0 and +0 one value), ±inf included, as float64."""
    values = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    values = values[~np.isnan(values)].astype(np.float64)
    return np.unique(values)


def nextafter_spacing(x: np.ndarray) -> np.ndarray:
    """nextafter(|x|, +inf) − |x|; at ±max finite the distance to its predecessor (same binade); float64."""
    mag = np.abs(x)
    top = np.finfo(x.dtype).max
    with np.errstate(over="ignore"):
        up = np.nextafter(mag, np.array(np.inf, x.dtype))
    down = np.nextafter(mag, np.array(0, x.dtype))
    return np.where(
        mag == top, mag.astype(np.float64) - down.astype(np.float64), up.astype(np.float64) - mag.astype(np.float64)
    )


def walk(start: float, steps: int, dtype: type) -> np.ndarray:
    """`steps` consecutive representable values from `start` upwards, by repeated nextafter."""
    out = [dtype(start)]
    with np.errstate(over="ignore"):
        for _ in range(steps - 1):
            out.append(np.nextafter(out[-1], dtype(np.inf)))
    return np.array(out, dtype=dtype)


def sampled(dtype: type, n: int = 20000) -> np.ndarray:
    """Finite values of a wide format: both neighbours of every power of two, subnormals, random patterns."""
    info = np.finfo(dtype)
    powers = np.ldexp(np.ones(1, dtype), np.arange(info.minexp - info.nmant, info.maxexp)).astype(dtype)
    below = np.nextafter(powers, dtype(0))
    above = np.nextafter(powers, dtype(np.inf))
    ints = {np.float32: np.uint32, np.float64: np.uint64}[dtype]
    rng = np.random.default_rng(7)
    raw = rng.integers(0, np.iinfo(ints).max, size=n, dtype=ints, endpoint=True).view(dtype)
    values = np.concatenate([powers, below, above, raw, [dtype(0), info.max, info.smallest_normal]])
    values = values[np.isfinite(values)]
    return np.concatenate([values, -values])


# ----------------------------------------------------------------------------------------------- spacing


def test_spacing_float16_every_value_against_nextafter():
    x = all_fp16()
    finite = np.isfinite(x)
    got = spacing(x)
    assert got.dtype == np.float64 and got.shape == x.shape
    assert np.array_equal(got[finite], nextafter_spacing(x[finite]))
    assert np.isnan(got[~finite]).all()  # ±inf and every NaN pattern
    assert np.array_equal(spacing(torch.from_numpy(x.copy())), got, equal_nan=True)  # tensors give the same numbers


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_spacing_wide_formats_against_nextafter(dtype):
    x = sampled(dtype)
    assert np.array_equal(spacing(x), nextafter_spacing(x))
    assert np.array_equal(spacing(torch.from_numpy(x)), nextafter_spacing(x))


def test_spacing_bfloat16_every_bit_pattern_against_enumeration():
    x = all_bf16()
    values = x.double().numpy()
    ladder = bf16_ladder()  # sorted, −inf … +inf
    finite = np.isfinite(values)
    mag = np.abs(values[finite])
    at = np.searchsorted(ladder, mag)
    assert np.array_equal(ladder[at], mag)  # every |x| is a ladder value
    top = ladder[-2]  # largest finite
    expected = np.where(mag == top, mag - ladder[at - 1], ladder[at + 1] - mag)
    got = spacing(x)
    assert np.array_equal(got[finite], expected)
    assert np.isnan(got[~finite]).all()
    assert np.array_equal(spacing(values[finite], "bfloat16"), expected)  # by name, from float64 copies


@pytest.mark.parametrize("name", ["bfloat16", "float16", "float32", "float64"])
def test_spacing_edge_values(name):
    fmt = float_format(name)
    tiny_sub = 2.0 ** (fmt.emin - fmt.precision + 1)
    assert fmt.smallest_subnormal == tiny_sub
    assert spacing(np.array([0.0, -0.0, tiny_sub, -tiny_sub]), name).tolist() == [tiny_sub] * 4
    # a power of two gets the spacing above it (twice the one just below)
    assert ulp(1.0, name) == 2.0 ** (1 - fmt.precision) and ulp(-0.5, name) == 2.0**-fmt.precision
    assert ulp(2.0**fmt.emin, name) == tiny_sub  # smallest normal: the subnormal spacing
    top = (2 - 2.0 ** (1 - fmt.precision)) * 2.0**fmt.emax  # largest finite
    assert ulp(top, name) == 2.0 ** (fmt.emax - fmt.precision + 1)
    for missing in (np.inf, -np.inf, np.nan):
        assert np.isnan(ulp(missing, name))
    if name != "float64":
        assert np.isnan(ulp(2.0 ** (fmt.emax + 1), name))  # beyond the format's range


def test_spacing_of_values_between_representable_ones_is_their_binade():
    """x need not be representable: the spacing of the representable value at or below |x|."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-65000.0, 65000.0, 5000) * 10.0 ** rng.integers(-9, 1, 5000)
    ladder = np.unique(np.abs(all_fp16()[np.isfinite(all_fp16())]).astype(np.float64))
    below = ladder[np.searchsorted(ladder, np.abs(x), side="right") - 1]
    assert np.array_equal(spacing(x, "float16"), spacing(below, "float16"))
    assert np.array_equal(spacing(x, "float16"), nextafter_spacing(below.astype(np.float16)))


def test_ulp_takes_torch_and_numpy_dtypes_and_refuses_others():
    assert ulp(16.0, torch.float32) == ulp(16.0, np.float32) == ulp(16.0, "float32") == 2.0**-19
    assert ulp(1.0, torch.bfloat16) == 2.0**-7
    assert float_format(torch.bfloat16) is fpunits.FORMATS["bfloat16"]
    for bad in ("fp8", np.int32, torch.int64):
        with pytest.raises(TypeError, match="known formats"):
            ulp(1.0, bad)


# ------------------------------------------------------------------------------------------ ULP distance


def rank_distance(a: np.ndarray, b: np.ndarray, ladder: np.ndarray) -> np.ndarray:
    """|position(a) − position(b)| on the sorted list of distinct values (brute-force count)."""
    ia, ib = np.searchsorted(ladder, a.astype(np.float64)), np.searchsorted(ladder, b.astype(np.float64))
    assert np.array_equal(ladder[ia], a.astype(np.float64)) and np.array_equal(ladder[ib], b.astype(np.float64))
    return np.abs(ia - ib)


def pair_sample(values: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """A set with both signs, zeros, subnormals, powers of two and their neighbours, ±max, ±inf."""
    values = values[~np.isnan(values)]
    mags = np.abs(values)
    special = values[(mags == 0) | (mags == mags[np.isfinite(mags)].max()) | np.isinf(values)]
    smallest = np.sort(mags[mags > 0])[:6]
    powers = values[(mags > 0) & np.isfinite(mags) & (np.frexp(mags.astype(np.float64))[0] == 0.5)]
    chosen = np.concatenate([special, smallest, -smallest, rng.choice(powers, 40), rng.choice(values, n)])
    return np.unique(chosen)


def test_ulp_distance_float16_all_pairs_of_a_sample():
    x = all_fp16()
    ladder = np.unique(x[~np.isnan(x)].astype(np.float64))  # −0 and +0 merge: one value
    s = pair_sample(x, np.random.default_rng(0), 500)
    a, b = np.broadcast_arrays(s[:, None], s[None, :])
    assert np.array_equal(ulp_distance(a, b), rank_distance(a, b, ladder))


def test_ulp_distance_bfloat16_all_pairs_of_a_sample():
    x = all_bf16()
    s = torch.from_numpy(pair_sample(x.double().numpy(), np.random.default_rng(1), 500)).to(torch.bfloat16)
    a, b = s[:, None].expand(-1, s.numel()), s[None, :].expand(s.numel(), -1)
    assert np.array_equal(ulp_distance(a, b), rank_distance(a.double().numpy(), b.double().numpy(), bf16_ladder()))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_ulp_distance_counts_nextafter_steps_across_zero_powers_of_two_and_subnormals(dtype):
    info = np.finfo(dtype)
    tiny = 2.0 ** (info.minexp - info.nmant)  # smallest subnormal
    starts = [  # each walk of 400 consecutive values crosses the named point
        dtype(-200 * tiny),  # zero (−0 and +0 are one value)
        dtype(2.0**info.minexp - 200 * tiny),  # last subnormals → first normals
        dtype(1 - 200 * 2.0 ** -(info.nmant + 1)),  # 1 (the spacing doubles there)
        dtype(-(2 + 200 * 2.0 ** (1 - info.nmant))),  # −2 from below (negative side, binade change)
        np.nextafter(info.max, dtype(0)),  # max finite → +inf (one step)
    ]
    for start in starts:
        steps = walk(start, 400, dtype)
        if start == np.nextafter(info.max, dtype(0)):
            steps = steps[:3]  # max−, max, inf
        i = np.arange(len(steps))
        got = ulp_distance(steps[:, None], steps[None, :])
        assert np.array_equal(got, np.abs(i[:, None] - i[None, :])), start


def test_ulp_distance_zeros_nan_and_types():
    z = np.array([0.0, -0.0], np.float32)
    assert ulp_distance(z[:1], z[1:]).tolist() == [0]
    tiny = np.nextafter(np.float32(0), np.float32(1))
    assert ulp_distance(np.array([-tiny]), np.array([tiny])).tolist() == [2]
    assert ulp_distance(np.array([np.nan, 1.0], np.float32), np.array([1.0, np.nan], np.float32)).tolist() == [-1, -1]
    assert ordered_ints(np.array([-0.0, 0.0, -tiny, tiny], np.float32)).tolist() == [0, 0, -1, 1]
    with pytest.raises(TypeError, match="one format"):
        ulp_distance(np.zeros(1, np.float32), np.zeros(1, np.float64))
    with pytest.raises(TypeError, match="one format"):
        ulp_distance(torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1, dtype=torch.float16))


def test_ulp_distance_float64_beyond_int64_saturates():
    bits_of_one = struct.unpack("<q", struct.pack("<d", 1.0))[0]
    assert ulp_distance(np.array([-1.0]), np.array([1.0])).tolist() == [2 * bits_of_one]  # fits in int64
    assert ulp_distance(np.array([-2.0]), np.array([2.0])).tolist() == [2**63 - 1]  # 2**63: saturated


def test_ulp_distance_tensor_and_array_agree():
    rng = np.random.default_rng(5)
    a = rng.standard_normal(1000).astype(np.float32)
    b = (a + rng.standard_normal(1000).astype(np.float32) * 1e-6).astype(np.float32)
    assert np.array_equal(ulp_distance(torch.from_numpy(a), torch.from_numpy(b)), ulp_distance(a, b))


# ------------------------------------------------------------------------------------------- exact bits


@pytest.mark.parametrize("name", ["bfloat16", "float16", "float32", "float64"])
def test_exact_bits_round_trip(name):
    rng = np.random.default_rng(11)
    x = torch.from_numpy(rng.standard_normal((7, 5)) * 1e3).to(TORCH[name])
    x[0, 0], x[0, 1], x[0, 2] = -0.0, float("inf"), float("nan")
    bits = exact_bits(x)
    assert bits.shape == (7, 5) and bits.dtype == float_format(name).unsigned_int
    signed = {16: torch.int16, 32: torch.int32, 64: torch.int64}[float_format(name).bits]
    back = torch.from_numpy(bits.view(float_format(name).signed_int).copy()).view(signed).view(TORCH[name])
    assert torch.equal(back.view(signed), x.view(signed))  # bit for bit, NaN and −0 included
    assert exact_bytes(x) == bits.tobytes() == exact_bytes(x.t().contiguous().t())  # any strides, C order
    assert tensor_hash(x) == int.from_bytes(hashlib.blake2b(bits.tobytes(), digest_size=8).digest(), "little")
    if name != "bfloat16":
        assert np.array_equal(exact_bits(x.numpy()), bits)


def test_exact_bits_known_patterns():
    assert exact_bits(torch.tensor(1.0, dtype=torch.bfloat16)) == int.from_bytes(struct.pack(">f", 1.0)[:2], "big")
    assert exact_bits(np.float32(1.0)) == 0x3F800000
    assert exact_bits(np.array([-0.0, 0.0], np.float16)).tolist() == [0x8000, 0]
    assert exact_bytes(torch.tensor([0.0])) != exact_bytes(torch.tensor([-0.0]))  # bitwise, not ==


# -------------------------------------------------------------------------------------- row replacement


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_with_row_equals_a_plain_construction(dtype):
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, 6, 4, generator=g).to(dtype)
    x = torch.randn(4, generator=g, dtype=torch.float64)
    for position in range(-6, 6):
        plain = embeds.clone()
        plain[0, position] = x.to(dtype)
        got = with_row(embeds, x, position)
        assert got.dtype == dtype and torch.equal(got, plain)
    assert torch.equal(embeds, torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(0)).to(dtype))  # untouched
    with pytest.raises(ValueError, match="outside a prompt"):
        with_row(embeds, x, 7)


def test_with_row_batches_and_appends():
    g = torch.Generator().manual_seed(1)
    embeds = torch.randn(1, 5, 3, generator=g)
    xs = torch.randn(4, 3, generator=g)
    batch = with_row(embeds, xs, 2)
    for b in range(4):
        plain = embeds[0].clone()
        plain[2] = xs[b]
        assert torch.equal(batch[b], plain)
    appended = with_row(embeds, xs, 5)  # position T: the prefix followed by each x
    assert appended.shape == (4, 6, 3)
    for b in range(4):
        plain = torch.zeros(6, 3)
        plain[:5] = embeds[0]
        plain[5] = xs[b]
        assert torch.equal(appended[b], plain)
