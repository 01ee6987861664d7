"""`ctx.out`: the shard group of one task, through which an experiment writes, checked against the
experiment's `STORES` declaration.

`STORES` maps a dataset name pattern to its shape and meaning.  A pattern is a path whose parts may
be placeholders (`<k>`, `<upstream task id>`: one path part), globs (`trace_*`), `...` (any parts)
or `*` (one part); several names share one entry when separated by ` / `, ` | ` or `, ` (a later
name without a `/` takes the first name's folder: `prompts/<k>/sigma / residual`).  An entry whose
pattern ends in ` attrs`, or whose description starts with `attr`, declares attributes only.  The
description may start with the shape: `[K,E]` (rank 2), `[K], [K,D]` or `[n1] / [n2]` (one shape
per name), `[R,D] or [R,T,D]` (either rank), `scalar(s)` (rank 0).

`CheckedGroup` wraps the h5py group and refuses, with a `ContractError` naming the experiment and
the dataset, any dataset whose name matches no pattern or whose rank differs from every stated
rank.  It exposes only what experiments use: `create_dataset`, `create_group`, `require_group`,
`attrs`, item access, iteration and `in`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from toolkit.errors import ContractError
from toolkit.store import dims

_SEPARATORS = re.compile(r" / | \| |, ")
_SHAPE = re.compile(r"\[[^\]]*\]")
_SHAPES_PREFIX = re.compile(r"^\s*(\[[^\]]*\](?:\s*(?:,|/|or)\s*\[[^\]]*\])*)")


@dataclass(frozen=True)
class Pattern:
    """One declared dataset name: a compiled path pattern and the ranks its description allows
    (empty: not stated)."""

    text: str
    regex: re.Pattern[str]
    ranks: frozenset[int]
    shapes: tuple[tuple[str, ...], ...] = ()


def _part_regex(part: str) -> str:
    if part == "...":
        return r".+"
    if re.fullmatch(r"<[^>]+>", part) or part == "*":
        return r"[^/]+"
    pieces = re.split(r"(<[^>]+>|\*)", part)
    return "".join(r"[^/]*" if p == "*" else r"[^/]+" if p.startswith("<") else re.escape(p) for p in pieces)


def _path_regex(path: str) -> re.Pattern[str]:
    return re.compile("/".join(_part_regex(p) for p in path.strip("/").split("/")) + r"\Z")


def _ranks(description: str, count: int) -> list[frozenset[int]]:
    """The ranks allowed for each of `count` names sharing one description."""
    text = description.strip()
    if re.match(r"scalars?\b", text):
        return [frozenset({0})] * count
    prefix = _SHAPES_PREFIX.match(text)
    if not prefix:
        return [frozenset()] * count
    shapes = _SHAPE.findall(prefix.group(1))
    ranks = [0 if s.strip("[] ") == "" else s.count(",") + 1 for s in shapes]
    if len(ranks) == count and " or " not in prefix.group(1):
        return [frozenset({r}) for r in ranks]
    return [frozenset(ranks)] * count


def parse_stores(stores: Mapping[str, str]) -> tuple[Pattern, ...]:
    """The dataset patterns of a `STORES` declaration (attribute-only entries left out)."""
    patterns: list[Pattern] = []
    for key, description in stores.items():
        if key.endswith(" attrs") or description.strip().startswith("attr"):
            continue
        names = _SEPARATORS.split(key)
        folder = names[0].rsplit("/", 1)[0] + "/" if "/" in names[0] else ""
        paths = [names[0]] + [n if "/" in n else folder + n for n in names[1:]]
        stated = dims.shapes(description, len(paths))
        for path, ranks, options in zip(paths, _ranks(description, len(paths)), stated):
            patterns.append(Pattern(path, _path_regex(path), ranks, tuple(tuple(o) for o in options)))
    return tuple(patterns)


#: Arrays of at least this many bytes are chunked and compressed (smaller ones stay contiguous:
#: the filter pipeline costs more than it saves).  Chosen by benchmarks/bench_compression.py.
COMPRESS_MIN_BYTES = 64 * 1024
#: Byte shuffle + the filter below; both lossless, so the values and their checksums are unchanged.
COMPRESSION: dict[str, Any] = {"shuffle": True, "compression": "gzip", "compression_opts": 4}
_LAYOUT_KEYS = ("chunks", "compression", "compression_opts", "shuffle", "maxshape", "scaleoffset", "fletcher32")


def compression_options(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Chunking and compression for a new dataset of `create_dataset(name, *args, **kwargs)`: for a
    numeric array of `COMPRESS_MIN_BYTES` or more whose caller chose no layout; else none."""
    import numpy as np

    if any(key in kwargs for key in _LAYOUT_KEYS):
        return {}
    data = kwargs.get("data", args[2] if len(args) > 2 else None)
    if data is not None:
        if not hasattr(data, "dtype") or not hasattr(data, "nbytes"):
            return {}
        kind, nbytes, rank = data.dtype.kind, int(data.nbytes), data.ndim
    else:
        shape = kwargs.get("shape", args[0] if args else None)
        dtype = np.dtype(kwargs.get("dtype", args[1] if len(args) > 1 else "f4"))
        if shape is None:
            return {}
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        kind, nbytes, rank = dtype.kind, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, len(shape)
    if rank == 0 or kind not in "biuf" or nbytes < COMPRESS_MIN_BYTES:
        return {}
    return {"chunks": True, **COMPRESSION}


class CheckedGroup:
    """An h5py group of a task's shard whose new datasets must match the experiment's `STORES`."""

    def __init__(
        self,
        group: Any,
        experiment: str,
        patterns: tuple[Pattern, ...],
        prefix: str = "",
        letters: Mapping[str, str] | None = None,
    ) -> None:
        self._group = group
        self._experiment = experiment
        self._patterns = patterns
        self._prefix = prefix
        self._letters = dict(letters or {})

    @classmethod
    def for_experiment(
        cls, group: Any, experiment: str, stores: Mapping[str, str], letters: Mapping[str, str] | None = None
    ) -> CheckedGroup:
        """The root of a shard for `experiment`, which declares `stores` and, optionally, its own
        names for the letters of their shapes (`DIMS`, see `toolkit.store.dims`)."""
        return cls(group, experiment, parse_stores(stores), letters=letters)

    def _child(self, group: Any, name: str) -> CheckedGroup:
        return CheckedGroup(group, self._experiment, self._patterns, self._path(name) + "/", self._letters)

    @property
    def attrs(self) -> Any:
        """The group's attributes (h5py `AttributeManager`): not checked, the description says them."""
        return self._group.attrs

    @property
    def name(self) -> str:
        """The group's path inside the shard file."""
        return str(self._group.name)

    def _path(self, name: str) -> str:
        return f"{self._prefix}{name.strip('/')}"

    def check(self, path: str, rank: int | None = None) -> None:
        """`ContractError` unless dataset `path` (from the shard root) is declared with this rank."""
        found = [p for p in self._patterns if p.regex.match(path)]
        if not found:
            raise ContractError(
                f"{self._experiment} wrote dataset {path!r}, which its STORES does not declare; "
                "add it to the module's STORES (name → shape and meaning) or do not write it"
            )
        if rank is not None and not any(not p.ranks or rank in p.ranks for p in found):
            stated = sorted({r for p in found for r in p.ranks})
            raise ContractError(
                f"{self._experiment} wrote dataset {path!r} with rank {rank}, its STORES states rank "
                f"{' or '.join(map(str, stated))} ({found[0].text}); fix the data or the declaration"
            )

    def create_dataset(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """h5py's `create_dataset`, refused unless `STORES` declares the name and rank; a large
        numeric array is chunked and compressed (`compression_options`, lossless) unless the
        caller chose its layout; its dimension names are recorded (`toolkit.store.dims`)."""
        path = self._path(name)
        self.check(path)
        dataset = self._group.create_dataset(name, *args, **compression_options(args, kwargs), **kwargs)
        rank = len(dataset.shape) if dataset.shape is not None else 0
        self.check(path, rank)
        found = [p for p in self._patterns if p.regex.match(path)]
        options = [list(shape) for p in found for shape in p.shapes]
        dims.record(dataset, dims.names_for(options, rank, path.rsplit("/", 1)[-1], self._letters))
        return dataset

    def create_group(self, name: str) -> CheckedGroup:
        """A new subgroup, checked the same way."""
        return self._child(self._group.create_group(name), name)

    def require_group(self, name: str) -> CheckedGroup:
        """The subgroup `name`, created if absent, checked the same way."""
        return self._child(self._group.require_group(name), name)

    def __getitem__(self, name: str) -> Any:
        import h5py

        item = self._group[name]
        if isinstance(item, h5py.Group):
            return self._child(item, name)
        return item

    def __contains__(self, name: str) -> bool:
        return name in self._group

    def __iter__(self) -> Iterator[str]:
        """The names of the group's members, as h5py lists them."""
        return iter(self._group)

    def __len__(self) -> int:
        return len(self._group)

    def keys(self) -> Any:
        """The names of the group's members (h5py `KeysViewHDF5`)."""
        return self._group.keys()
