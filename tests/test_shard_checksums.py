"""`dataset_checksums` (what workers record and gather compares) against hashlib over the arrays'
own bytes, for every layout and dtype the hashing reads differently: contiguous, chunked and
compressed with chunks that split the other axes, rows larger than a slice, more rows than a slice,
scalars, empty arrays, fixed and variable-length strings, compound and big-endian types."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest

from toolkit.store import shard
from toolkit.store.shard import dataset_checksums


def _raw(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def _vlen(items: list[str]) -> str:
    digest = hashlib.sha256()
    for item in items:
        raw = item.encode("utf-8")
        digest.update(len(raw).to_bytes(8, "little") + raw)
    return digest.hexdigest()


@pytest.fixture(params=[shard.HASH_SLICE_BYTES, 4096], ids=["default-slice", "4-KiB-slices"])
def slice_bytes(request, monkeypatch):
    """The default slice and a small one, so that every array below spans many slices."""
    monkeypatch.setattr(shard, "HASH_SLICE_BYTES", request.param)
    return request.param


def test_checksums_equal_hashlib_over_the_arrays_bytes(tmp_path, slice_bytes):
    rng = np.random.default_rng(7)
    arrays = {
        "contiguous": rng.standard_normal(300_001, dtype=np.float32),
        "rows/2d": rng.standard_normal((1_001, 37)),
        "rows/wide": rng.standard_normal((3, 70_000), dtype=np.float32),  # one row > the default slice
        "int": rng.integers(-(2**40), 2**40, size=(17, 5, 3)),
        "big_endian": rng.standard_normal(999).astype(">f4"),
        "compound": np.array([(i, i / 3) for i in range(513)], dtype=[("a", "<i2"), ("b", "<f8")]),
        "fixed": np.array([b"alpha", b"be", b"", b"gamma-delta"] * 300, dtype="S11"),
        "bool": rng.integers(0, 2, size=(77, 9)).astype(bool),
        "scalar": np.float64(np.pi),
        "empty": np.zeros((0, 4), np.float32),
    }
    gzip_split = rng.standard_normal((2_003, 45), dtype=np.float32)  # chunks of (64, 7) split both axes
    lzf_rows = rng.integers(0, 9, size=(5_000,), dtype=np.int8)
    texts = ["", "ε-δ", "a longer line of text\n", "x" * 5_000]
    with h5py.File(tmp_path / "s.h5", "w") as out:
        for name, values in arrays.items():
            out.create_dataset(name, data=values)
        out.create_dataset("gzip_split", data=gzip_split, chunks=(64, 7), compression="gzip", shuffle=True)
        out.create_dataset("lzf_rows", data=lzf_rows, chunks=(333,), compression="lzf")
        out.create_dataset("vlen", data=texts, dtype=h5py.string_dtype())
    expected = {name: _raw(np.asarray(values)) for name, values in arrays.items()}
    expected |= {"gzip_split": _raw(gzip_split), "lzf_rows": _raw(lzf_rows)}
    expected["vlen"] = _vlen(texts)
    with h5py.File(tmp_path / "s.h5", "r") as handle:
        assert dataset_checksums(handle) == dict(sorted(expected.items()))
