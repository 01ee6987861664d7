"""Read-only views of store.h5 for downstream experiments, plots and `toolkit show`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from toolkit.errors import StoreError
from toolkit.store.journal import wait_settled
from toolkit.store.schema import check_schema

JSON_ATTRS = ("params", "numerics", "model", "provenance", "inputs", "checksums")

_P = TypeVar("_P")


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples a frozen dataclass holds (recursively)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


class RunView:
    """One task's group: parsed attributes and lazy access to its datasets (as numpy arrays)."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.task_id: str = group.name.rsplit("/", 1)[-1]
        self.attrs: dict[str, Any] = {}
        for key, value in group.attrs.items():
            if isinstance(value, bytes):
                value = value.decode()
            if key in JSON_ATTRS and isinstance(value, str):
                value = json.loads(value)
            self.attrs[key] = value

    @property
    def experiment(self) -> str:
        return str(self.attrs.get("experiment", ""))

    @property
    def exp_id(self) -> str:
        return str(self.attrs.get("exp_id", ""))

    @property
    def target(self) -> str:
        return str(self.attrs.get("target", ""))

    @property
    def repeat(self) -> int:
        return int(self.attrs.get("repeat", 0))

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.attrs.get("params", {}))

    @property
    def numerics(self) -> dict[str, Any]:
        return dict(self.attrs.get("numerics", {}))

    def params_as(self, cls: type[_P]) -> _P:
        """The run's stored params as `cls` (its experiment's frozen `Params` dataclass): JSON lists back
        to tuples, integers back to floats where the field is a float, defaults for fields the stored
        params lack.  `StoreError` if a stored name is not a field of `cls`."""
        import dataclasses
        import typing

        hints = typing.get_type_hints(cls)
        unknown = sorted(set(self.params) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
        if unknown:
            raise StoreError(
                f"run {self.task_id}: stored params {unknown} are not fields of {cls.__qualname__}; "
                "read it with the toolkit version that wrote it"
            )
        return cls(
            **{k: float(v) if hints[k] is float and isinstance(v, int) else _tuples(v) for k, v in self.params.items()}
        )

    def label(self) -> str:
        """Human label used in tables and figures, e.g. `a100 r0 bfloat16/eager/kv`, with every
        non-default numerics key the worker recorded (`a100 r0 float32/eager/kv/batch_size=4`), so
        runs that differ only in batch size, logits path or weights dtype never share a label.  A run
        stored before that label was recorded gets the three original keys."""
        recorded = self.attrs.get("numerics_label")
        if recorded:
            return f"{self.target} r{self.repeat} {recorded}"
        n = self.numerics
        kv = "kv" if n.get("kv_cache", True) else "full"
        return f"{self.target} r{self.repeat} {n.get('dtype', '?')}/{n.get('attn_implementation', '?')}/{kv}"

    def sibling(self, task_id: str) -> RunView | None:
        """Another task's run in the same store, or None if the store does not hold it (a figure of
        one run that draws another's stored data, e.g. exp7.zoom's window of an exp7.heatmap map)."""
        tasks = self.group.file["tasks"]
        return RunView(tasks[task_id]) if task_id in tasks else None

    def __getitem__(self, path: str) -> Any:
        return self.group[path][()]

    def __contains__(self, path: str) -> bool:
        return path in self.group

    def datasets(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Relative path → (shape, dtype) of every dataset the experiment wrote (the index
        coordinates that name dimensions for xarray, `toolkit.store.dims`, left out)."""
        import h5py

        from toolkit.store.dims import COORD_ATTR

        out: dict[str, tuple[tuple[int, ...], str]] = {}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and not obj.attrs.get(COORD_ATTR, False):
                out[name] = (obj.shape, str(obj.dtype))

        self.group.visititems(visit)
        return out


class Store:
    """An open store.h5 (read-only; refused unless its schema is this toolkit's).  Use as a
    context manager."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: no store yet; run toolkit submit or toolkit gather first")
        wait_settled(self.path)
        try:
            self.handle = h5py.File(self.path, "r", locking=False)
        except OSError as err:
            raise StoreError(f"{self.path}: not a readable HDF5 store ({err})") from None
        try:
            check_schema(self.path, self.handle.attrs)
        except StoreError:
            self.handle.close()
            raise

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.handle.close()

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self.handle.attrs.items()}

    def task_ids(self) -> list[str]:
        return sorted(self.handle["tasks"]) if "tasks" in self.handle else []

    def run(self, task_id: str) -> RunView:
        if task_id not in self.task_ids():
            raise StoreError(f"{self.path}: no task {task_id}")
        return RunView(self.handle["tasks"][task_id])

    def runs(self, experiment: str | None = None, ids: list[str] | tuple[str, ...] | None = None) -> list[RunView]:
        """Runs filtered by experiment name and/or task ids, in a stable order."""
        wanted = set(ids) if ids is not None else None
        views = [RunView(self.handle["tasks"][t]) for t in self.task_ids() if wanted is None or t in wanted]
        views = [v for v in views if experiment is None or v.experiment == experiment]
        return sorted(views, key=lambda v: (v.exp_id, _numerics_key(v), v.target, v.repeat, v.task_id))

    def __iter__(self) -> Iterator[RunView]:
        return iter(self.runs())

    def table(self, name: str) -> Any:
        """A pandas DataFrame: `runs` (one row per task) or an experiment's tidy table; see
        `toolkit.store.tables` and docs/tables.md."""
        from toolkit.store.tables import table

        return table(self, name)


def _numerics_key(view: RunView) -> str:
    return json.dumps(view.numerics, sort_keys=True)
