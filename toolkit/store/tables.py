"""Tables of a store as pandas DataFrames, and `toolkit export` to Parquet or CSV.

A researcher's next step is a notebook: these tables put the store's runs and results into the
form pandas, Parquet and CSV readers take directly.  Column names and dtypes are documented in
docs/tables.md.

- `run_table(store)`: one row per stored task: its identity, status, times, where it ran (device
  name, SM count, node, container image digest, from provenance; missing: NA), one column per
  numerics key (`numerics.<key>`) and per param (`params.<key>`) the store records, whatever keys
  exist, and every scalar provenance item (`provenance.<path>`).
- `experiment_table(store, name)`: one tidy table per experiment where a table is its natural
  form (`TABLES`); every row starts with the run's `task_id`, `exp_id`, `target`, `repeat`.

Values keep their stored dtype (float64 bits, int64, uint64 hashes, float32 logits), so a Parquet
file holds the store's values exactly.  pandas is imported inside the functions (the `tables`
extra); a missing pandas is a one-line `UsageError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import StoreError, UsageError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from toolkit.store.reader import RunView, Store

Columns = dict[str, "np.ndarray[Any, Any]"]

#: The run table's fixed columns, in order (numerics.*, params.* and provenance.* follow).
RUN_COLUMNS = (
    "task_id",
    "experiment",
    "exp_id",
    "target",
    "repeat",
    "status",
    "started_utc",
    "finished_utc",
    "model",
    "inputs",
    "device",
    "device_name",
    "sm_count",
    "node",
    "image",
    "image_digest",
)
RUN_KEY_COLUMNS = ("task_id", "exp_id", "target", "repeat")
FORMATS = ("parquet", "csv")


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise UsageError("tables need pandas and pyarrow: pip install 'toolkit[tables]'") from None
    return pandas


def column(values: list[Any]) -> Any:
    """One column from Python/numpy scalars with a dtype that says what the values are: bool,
    int64 (`Int64` with missing values), float64, str, or JSON text for lists and dicts."""
    import numpy as np

    pd = _pandas()
    present = [v.item() if isinstance(v, np.generic) else v for v in values]
    known = [v for v in present if v is not None]
    missing = len(known) < len(present)
    if known and all(isinstance(v, bool) for v in known):
        return pd.array(present, dtype="boolean") if missing else np.array(present, dtype=bool)
    if known and all(isinstance(v, int) and not isinstance(v, bool) for v in known):
        return pd.array(present, dtype="Int64") if missing else np.array(present, dtype=np.int64)
    if known and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in known):
        return np.array([np.nan if v is None else float(v) for v in present], dtype=np.float64)
    if all(isinstance(v, str) for v in known):
        return pd.array(present, dtype="str")
    return pd.array([None if v is None else json.dumps(v, sort_keys=True) for v in present], dtype="str")


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """Scalar leaves of nested dicts as `prefix.key.key` → value (lists as JSON text)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, out)
    else:
        out[prefix] = value


def _utc(values: list[Any]) -> Any:
    pd = _pandas()
    return pd.to_datetime(pd.Series(values, dtype="object"), utc=True, format="ISO8601").astype("datetime64[us, UTC]")


def _run_row(run: RunView) -> dict[str, Any]:
    prov = run.attrs.get("provenance", {}) or {}
    slurm = prov.get("slurm", {}) or {}
    container = prov.get("container", {}) or {}
    identity = prov.get("device_identity", {}) or {}  # SKU, SM count, driver, CUDA (toolkit.models.device)
    row: dict[str, Any] = {
        "task_id": run.task_id,
        "experiment": run.experiment,
        "exp_id": run.exp_id,
        "target": run.target,
        "repeat": run.repeat,
        "status": run.attrs.get("status"),
        "started_utc": run.attrs.get("started_utc"),
        "finished_utc": run.attrs.get("finished_utc"),
        "model": (run.attrs.get("model") or {}).get("source"),
        "inputs": " ".join(run.attrs.get("inputs") or []),
        "device": prov.get("device"),
        "device_name": prov.get("device_name") or identity.get("sku") or identity.get("processor"),
        "sm_count": prov.get("sm_count", identity.get("sm_count")),
        "node": slurm.get("slurmd_nodename") or prov.get("host"),
        "image": container.get("image"),
        "image_digest": container.get("image_digest"),
    }
    for key, value in sorted(run.numerics.items()):
        row[f"numerics.{key}"] = value
    for key, value in sorted(run.params.items()):
        row[f"params.{key}"] = value
    _flatten("provenance", prov, row)
    return row


def run_table(store: Store) -> pd.DataFrame:
    """One row per stored task (sorted by task id); columns as in the module docstring and
    docs/tables.md.  A key one run lacks is NA in its row."""
    pd = _pandas()
    rows = [_run_row(run) for run in sorted(store.runs(), key=lambda r: r.task_id)]
    dynamic = sorted({k for row in rows for k in row} - set(RUN_COLUMNS), key=_dynamic_order)
    data = {name: column([row.get(name) for row in rows]) for name in (*RUN_COLUMNS, *dynamic)}
    for name in ("started_utc", "finished_utc"):
        data[name] = _utc([row.get(name) for row in rows]).array
    data["sm_count"] = pd.array([row.get("sm_count") for row in rows], dtype="Int64")
    return pd.DataFrame(data)


def _dynamic_order(name: str) -> tuple[int, str]:
    return ({"numerics": 0, "params": 1}.get(name.split(".", 1)[0], 2), name)


def table_names() -> tuple[str, ...]:
    """The names `Store.table` and `toolkit export --experiment` accept: `runs` and every
    experiment with a tidy table."""
    from toolkit.store.experiment_tables import TABLES

    return ("runs", *TABLES)


def experiment_table(store: Store, name: str) -> pd.DataFrame:
    """The tidy table of experiment `name` over all its stored runs (no rows if it has none).
    `UsageError` if the experiment has no table."""
    from toolkit.store.experiment_tables import TABLES

    if name not in TABLES:
        raise UsageError(f"no table for {name!r}; tables: {', '.join(table_names())}")
    return _concat([_with_run_keys(run, TABLES[name](run)) for run in store.runs(experiment=name)])


def _with_run_keys(run: RunView, columns: Columns) -> Columns:
    import numpy as np

    n = len(next(iter(columns.values()))) if columns else 0
    keys: Columns = {
        "task_id": np.array([run.task_id] * n, dtype=object),
        "exp_id": np.array([run.exp_id] * n, dtype=object),
        "target": np.array([run.target] * n, dtype=object),
        "repeat": np.full(n, run.repeat, dtype=np.int64),
    }
    return {**keys, **columns}


def _concat(parts: list[Columns]) -> pd.DataFrame:
    import numpy as np

    pd = _pandas()
    if not parts:
        parts = [{k: np.array([], np.int64 if k == "repeat" else object) for k in RUN_KEY_COLUMNS}]
    names = list(dict.fromkeys(k for part in parts for k in part))
    data: dict[str, Any] = {}
    for key in names:
        pieces = [part[key] if key in part else _missing(part) for part in parts]
        joined = np.concatenate(pieces)
        data[key] = pd.array(joined, dtype="str") if joined.dtype.kind in "OUS" else joined
    return pd.DataFrame(data)


def _missing(part: Columns) -> np.ndarray[Any, Any]:
    import numpy as np

    n = len(next(iter(part.values())))
    return np.full(n, np.nan)


def table(store: Store, name: str) -> pd.DataFrame:
    """`run_table` for `runs`, else `experiment_table`."""
    return run_table(store) if name == "runs" else experiment_table(store, name)


def export_tables(store_path: Path, out_dir: Path, fmt: str = "parquet", name: str | None = None) -> list[Path]:
    """Write `runs` and the table of every experiment the store has runs of (or only table `name`)
    to `out_dir/<name>.<fmt>`, each under a temporary name then renamed; returns the paths.
    `UsageError` for a table the store cannot fill (an experiment without a table or without runs)."""
    from toolkit.store.experiment_tables import TABLES
    from toolkit.store.files import temp_name
    from toolkit.store.reader import Store

    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    with Store(store_path) as store:
        present = sorted({run.experiment for run in store.runs()})
        if name is not None and name != "runs" and name not in present:
            raise UsageError(
                f"{store_path}: no {name} run in the store; its experiments: {', '.join(present) or 'none'}"
            )
        if name is not None and name != "runs" and name not in TABLES:
            raise UsageError(f"{name} has no table (tables: {', '.join(table_names())}); read it with Store(path).run")
        wanted = [name] if name is not None else ["runs", *(n for n in TABLES if n in present)]
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for table_name in wanted:
            path = out_dir / f"{table_name}.{fmt}"
            tmp = temp_name(path)
            try:
                _write(table(store, table_name), tmp, fmt)
                os.replace(tmp, path)
            except OSError as err:
                tmp.unlink(missing_ok=True)
                raise StoreError(f"{path}: cannot write the table ({err}); free space there or pass --out") from None
            written.append(path)
    return written


def _write(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    writers: dict[str, Callable[[], None]] = {
        "parquet": lambda: frame.to_parquet(path, index=False, engine="pyarrow"),
        "csv": lambda: frame.to_csv(path, index=False),
    }
    writers[fmt]()
