"""Chunking and compression of large arrays (`toolkit.store.writer.compression_options`): lossless
bit for bit through the shard and the gather, checksums taken on the values, small arrays and
arrays whose writer chose a layout left alone.  Real HDF5 files, no model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def _awkward_floats(shape: tuple[int, ...]) -> np.ndarray:
    """float64 values whose bits a lossy or converting path would change: NaN payloads, -0.0,
    subnormals, infinities, and random bit patterns."""
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**64, size=shape, dtype=np.uint64)
    flat = bits.reshape(-1)
    flat[:6] = [0x7FF8000000000001, 0xFFF0000000000123, 0x8000000000000000, 1, 0x7FF0000000000000, 0]
    return bits.view(np.float64)


def _shard(folder: Path, arrays: dict[str, np.ndarray], stores: dict[str, str]) -> Path:
    from toolkit.store.shard import open_shard
    from toolkit.store.writer import CheckedGroup

    attrs = {"experiment": "exp0.demo", "exp_id": "d", "target": "cpu", "repeat": 0, "params": {}, "numerics": {}}
    with open_shard(folder, "t0", attrs) as root:
        out = CheckedGroup.for_experiment(root, "exp0.demo", stores)
        for name, data in arrays.items():
            out.create_dataset(name, data=data)
    return folder / "shards" / "t0.h5"


def test_a_201_by_201_map_is_compressed_losslessly_through_shard_and_gather(tmp_path: Path):
    import h5py

    from toolkit.store.gather import gather

    (tmp_path / "plan.json").write_text("{}")
    gap = _awkward_floats((201, 201))
    smooth = np.add.outer(np.linspace(-1, 1, 201), np.linspace(0, 2, 201)).astype(np.float32).astype(np.float64)
    argmax = (smooth > 0.5).astype(np.int64)
    stores = {"maps/000/gap / smooth": "[n1,n2] float64", "maps/000/argmax": "[n1,n2] int64"}
    _shard(tmp_path, {"maps/000/gap": gap, "maps/000/smooth": smooth, "maps/000/argmax": argmax}, stores)
    report = gather(tmp_path)
    assert report.added == ["t0"] and not report.bad_shards
    with h5py.File(tmp_path / "store.h5", "r") as handle:
        group = handle["tasks/t0/maps/000"]
        for name, expected in (("gap", gap), ("smooth", smooth), ("argmax", argmax)):
            stored = group[name]
            assert stored.chunks is not None and stored.compression == "gzip" and stored.shuffle
            assert stored.dtype == expected.dtype
            assert np.array_equal(stored[()].view(np.uint64), expected.view(np.uint64)), name
        sums = json.loads(handle["tasks/t0"].attrs["checksums"])
        for name, expected in (("gap", gap), ("smooth", smooth), ("argmax", argmax)):
            assert sums[f"maps/000/{name}"] == hashlib.sha256(expected.tobytes()).hexdigest()
        assert group["smooth"].id.get_storage_size() < smooth.nbytes / 3  # it did compress
        assert group["argmax"].id.get_storage_size() < argmax.nbytes / 20


def test_small_arrays_strings_scalars_and_chosen_layouts_are_left_alone():
    from toolkit.store.writer import COMPRESS_MIN_BYTES, compression_options

    big = np.zeros(COMPRESS_MIN_BYTES // 8, dtype=np.float64)
    assert compression_options((), {"data": big}) == {
        "chunks": True,
        "shuffle": True,
        "compression": "gzip",
        "compression_opts": 4,
    }
    assert compression_options((), {"data": big[:-1]}) == {}  # one element under the threshold
    assert compression_options((), {"data": np.array(["x" * COMPRESS_MIN_BYTES], dtype="S")}) == {}
    assert compression_options((), {"data": np.float64(1.0)}) == {}
    assert compression_options((), {"data": big, "chunks": (10,)}) == {}
    assert compression_options((), {"data": [1.0] * COMPRESS_MIN_BYTES}) == {}  # a list: left to h5py
    assert compression_options(((COMPRESS_MIN_BYTES // 4,), "f4"), {})["compression"] == "gzip"
    assert compression_options((), {"shape": (10,), "dtype": "f8"}) == {}


def test_a_shard_with_a_compressed_array_verifies_and_reads_back(tmp_path: Path):
    import h5py

    from toolkit.store.gather import verify_shard

    hidden = np.random.default_rng(1).standard_normal((48, 576)).astype(np.float32)
    path = _shard(tmp_path, {"prompts/000/final_hidden": hidden}, {"prompts/<k>/final_hidden": "[T,D]"})
    assert verify_shard(path) == ""
    with h5py.File(path, "r") as handle:
        stored = handle["prompts/000/final_hidden"]
        assert stored.compression == "gzip"
        assert np.array_equal(stored[()].view(np.uint32), hidden.view(np.uint32))
