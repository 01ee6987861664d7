"""Distances in units in the last place (ULP) and bit-exact hashes of floating-point data.

ULP distance between two floats of one format is the number of representable values between
them: map each float to an integer that is monotonic in the float's value, subtract.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

_INT_OF = {np.dtype(np.float16): np.int16, np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


def ordered_ints(values: Any) -> np.ndarray:
    """Integers in the same order as the floats (±0 both map to 0); as int64 (float16/32) or object-free int64."""
    arr = np.asarray(values)
    if arr.dtype not in _INT_OF:
        raise TypeError(f"ULP distances need float16/32/64 arrays, got {arr.dtype}")
    as_int = arr.view(_INT_OF[arr.dtype]).astype(np.int64)
    bits = arr.dtype.itemsize * 8
    sign_min = -(1 << (bits - 1))
    return np.where(as_int < 0, sign_min - as_int, as_int)


def ulp_distance(a: Any, b: Any) -> np.ndarray:
    """Elementwise |a - b| counted in ULPs of the arrays' common float format (NaN inputs: -1)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != b.dtype:
        raise TypeError(f"ULP distance between {a.dtype} and {b.dtype}: cast both to one format first")
    dist = np.abs(ordered_ints(a) - ordered_ints(b))
    return np.where(np.isnan(a) | np.isnan(b), -1, dist)


def bits_hash(raw: bytes) -> int:
    """A 64-bit hash of raw bytes, stable across processes and machines (blake2b)."""
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


def tensor_hash(tensor: Any) -> int:
    """64-bit hash of a torch tensor's exact bits in its native dtype (bf16 included)."""
    import torch

    t = tensor.detach().contiguous().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return bits_hash(t.numpy().tobytes())
