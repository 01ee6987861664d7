"""Named dimensions for stored arrays, so `xarray.open_dataset(store, group=..., engine="h5netcdf")`
opens a run's group with named axes and coordinates.

Where the names come from: the shape an experiment's `STORES` states (`[T,K]`, `[n1,n2]`, `[K|R,E]`,
`[L+2,D]`), each letter or expression mapped to a name by `LETTERS`, which an experiment may
override for its own meaning of a letter with a `DIMS` declaration beside `STORES` (e.g.
exp4.generate `{"T": "step", "L": "token"}`).  A letter used twice in one shape gets `_i`, `_j`
(`[N,N,P]` → `run_i, run_j, prompt`); a dataset whose stated shape does not fit its rank gets
`<dataset>_dim<axis>`.  The writer records the names on each dataset (attribute `DIMS_ATTR`) when it
is created; `attach` turns them into HDF5 dimension scales (h5py `dims`) in the dataset's group:
a 1-D dataset of the group with the dimension's name and length is its coordinate (`eps`, `e1`,
`steps`), else an int64 index `0 … n-1` is made under that name (marked `COORD_ATTR`, left out of
`RunView.datasets`).  A name already used by a dataset of another length or rank gets `_<length>`.

`attach` runs on the shard before its checksums are taken (the index coordinates are checksummed
like every dataset) and again on the store's copy after gather: HDF5's object copy does not carry
the references inside dimension scales between files, so gather drops the copied ones and attaches
again from the recorded names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: Attribute on each dataset: its dimension names, space-separated (the source `attach` reads).
DIMS_ATTR = "dimension_names"
#: Attribute on an index coordinate made by `attach` (not data the experiment wrote).
COORD_ATTR = "toolkit_index_coordinate"
_SCALE_ATTRS = ("DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME", "_Netcdf4Dimid")

#: The shared meaning of the letters in STORES shapes; an experiment's DIMS overrides a letter.
LETTERS: Mapping[str, str] = {
    "T": "token",
    "L": "layer",
    "L+2": "row",
    "K": "k",
    "D": "hidden",
    "E": "eps",
    "R": "direction",
    "N": "run",
    "P": "prompt",
    "M": "module",
    "S": "step",
    "I": "iteration",
    "Q": "pair",
    "B": "background",
    "F": "flip",
    "C": "completion",
    "W": "window",
    "n1": "e1",
    "n2": "e2",
    "n_perm": "permutation",
    "n1−w+1": "window_e1",
    "n2−w+1": "window_e2",
}
_SHAPE = re.compile(r"\[([^\]]*)\]")
_SHAPES_PREFIX = re.compile(r"^\s*(\[[^\]]*\](?:\s*(?:,|/|or)\s*\[[^\]]*\])*)")
_SUFFIXES = ("_i", "_j", "_k", "_l")


def _name(token: str, overrides: Mapping[str, str]) -> str:
    token = token.strip()
    if token in overrides:
        return overrides[token]
    if token in LETTERS:
        return LETTERS[token]
    if token.isdigit():
        return f"n{token}"
    return re.sub(r"\W+", "_", token).strip("_").lower() or "dim"


def shapes(description: str, count: int) -> list[list[list[str]]]:
    """For each of `count` names sharing one STORES description, the shapes it may have, each a
    list of per-axis tokens (`"[K|R,E]"` for two names → `[[["K","E"]], [["R","E"]]]`)."""
    prefix = _SHAPES_PREFIX.match(description.strip())
    if not prefix:
        return [[] for _ in range(count)]
    found = [[t for t in s.split(",")] if s.strip() else [] for s in _SHAPE.findall(prefix.group(1))]
    if len(found) == count and " or " not in prefix.group(1):
        return [[shape] for shape in found]
    if len(found) == 1 and any("|" in t for t in found[0]):
        return [[[t.split("|")[i] if "|" in t else t for t in found[0]]] for i in range(count)]
    return [found for _ in range(count)]


def names_for(shape_options: list[list[str]], rank: int, dataset: str, overrides: Mapping[str, str]) -> list[str]:
    """The dimension names of a dataset of `rank` from its stated shapes (the first of that rank)."""
    for tokens in shape_options:
        if len(tokens) == rank:
            names = [_name(t, overrides) for t in tokens]
            for name in set(names):
                positions = [i for i, n in enumerate(names) if n == name]
                if len(positions) > 1:
                    for suffix, i in zip(_SUFFIXES, positions):
                        names[i] = name + suffix
            return names
    return [f"{dataset}_dim{axis}" for axis in range(rank)]


def record(dataset: Any, names: list[str]) -> None:
    """Store `names` on `dataset` for `attach` (nothing for a scalar)."""
    if names:
        dataset.attrs[DIMS_ATTR] = " ".join(names)


def attach(root: Any) -> None:
    """Make the recorded names of every dataset under `root` into dimension scales (see the
    module docstring); scales copied from another file are dropped and attached again."""
    import h5py

    datasets: list[Any] = []
    root.visititems(lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
    for dataset in datasets:
        for key in _SCALE_ATTRS:
            if key in dataset.attrs:
                del dataset.attrs[key]
    recorded = {ds.name: _text(ds.attrs[DIMS_ATTR]).split() for ds in datasets if DIMS_ATTR in ds.attrs}
    for dataset in datasets:  # a 1-D dataset whose dimension bears its own name is its coordinate
        own = dataset.name.rsplit("/", 1)[-1]
        if recorded.get(dataset.name) == [own] or dataset.attrs.get(COORD_ATTR, False):
            dataset.make_scale(own)
    for dataset in datasets:
        if dataset.attrs.get("CLASS") == b"DIMENSION_SCALE":
            continue
        for axis, (name, size) in enumerate(zip(recorded.get(dataset.name, []), dataset.shape)):
            scale = _scale(dataset.parent, name, size)
            if scale is not None:
                dataset.dims[axis].attach_scale(scale)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _scale(group: Any, name: str, size: int) -> Any | None:
    """The dimension scale `name` of length `size` in `group`: a coordinate of that length, or a new
    int64 index (named `<name>_<size>` when a dataset that is not such a coordinate has the name);
    None when that name is taken too (the axis is then left without a scale)."""
    import numpy as np

    existing = group.get(name)
    if existing is not None and not _fits(existing, size):
        name = f"{name}_{size}"
        existing = group.get(name)
    if existing is None:
        from toolkit.store.writer import compression_options

        index = np.arange(size, dtype=np.int64)
        existing = group.create_dataset(name, data=index, **compression_options((), {"data": index}))
        existing.attrs[COORD_ATTR] = True
        existing.make_scale(name)
    return existing if _fits(existing, size) else None


def _fits(obj: Any, size: int) -> bool:
    import h5py

    return isinstance(obj, h5py.Dataset) and obj.shape == (size,) and obj.attrs.get("CLASS") == b"DIMENSION_SCALE"
