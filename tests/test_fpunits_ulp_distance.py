"""ULP distances and bit hashes (toolkit.numerics.fpunits; formerly toolkit.numerics.ulp)."""

import numpy as np
import pytest

from toolkit.numerics.fpunits import bits_hash, ulp_distance


def test_adjacent_floats_are_one_ulp_apart():
    x = np.array([1.0, -1.0, 1e-30, 3.0e38], dtype=np.float32)
    up = np.nextafter(x, np.float32(np.inf))
    assert ulp_distance(x, up).tolist() == [1, 1, 1, 1]


def test_signed_zeros_are_equal_and_straddling_zero_counts_both_sides():
    zero, neg_zero = np.float32(0.0), np.float32(-0.0)
    tiny = np.nextafter(zero, np.float32(1))
    assert ulp_distance(np.array([zero]), np.array([neg_zero]))[0] == 0
    assert ulp_distance(np.array([-tiny]), np.array([tiny]))[0] == 2


def test_float64_and_known_gap():
    a = np.array([1.0], dtype=np.float64)
    assert ulp_distance(a, a + 2 * np.finfo(np.float64).eps)[0] == 2
    assert ulp_distance(np.array([1.0], np.float32), np.array([2.0], np.float32))[0] == 2**23


def test_mixed_formats_are_refused():
    with pytest.raises(TypeError):
        ulp_distance(np.zeros(1, np.float32), np.zeros(1, np.float64))


def test_bits_hash_sees_one_bit():
    a = np.array([1.0, 2.0], np.float32)
    b = a.copy()
    b.view(np.int32)[1] ^= 1
    assert bits_hash(a.tobytes()) != bits_hash(b.tobytes())
    assert bits_hash(a.tobytes()) == bits_hash(a.copy().tobytes())
