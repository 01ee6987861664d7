"""Human-readable text for `toolkit plan`, `status`, `show` and `experiments` (no I/O here)."""

from __future__ import annotations

import json
from typing import Any

from toolkit.launch.sites import sbatch_options
from toolkit.manifest import Resources
from toolkit.plan import ANY_TARGET, Plan


def plan_text(plan: Plan, done: set[str] | None = None) -> str:
    """Stages, array groups with their sbatch options, tasks, and dependencies."""
    done = done or set()
    m = plan.manifest
    lines = [
        f"campaign {m.campaign}: {len(plan.tasks)} task(s) in {len(plan.stages)} stage(s); "
        f"site {m.site.name}; model {m.model.source}; {len(m.prompts)} prompt(s)"
    ]
    for stage in plan.stages:
        after = f"after gather {stage.index - 1}" if stage.index > 1 else "no dependencies"
        lines.append(f"stage {stage.index} ({', '.join(stage.exp_ids)}) — {after}")
        for group in stage.groups:
            options = sbatch_options(m.site, group.target, group.resources)
            flags = " ".join(f"--{k}={v}" for k, v in options.items() if k != "extra")
            flags += "".join(f" {x}" for x in options["extra"])
            parallel = group.resources.array_parallelism
            lines.append(
                f"  array {group.name}: {len(group.task_ids)} task(s){f' %{parallel}' if parallel else ''}  {flags}"
            )
            for task_id in group.task_ids:
                task = plan.tasks[task_id]
                mark = "  (done)" if task_id in done else ""
                lines.append(f"    {task_id}  {task.experiment:<20} {task.label()}  [{task.numerics.label()}]{mark}")
        gather = sbatch_options(m.site, ANY_TARGET, Resources(), gather=True)
        lines.append(
            f"  gather {stage.index}: one CPU job after the arrays of stage {stage.index}  "
            + " ".join([f"--{k}={v}" for k, v in gather.items() if k != "extra"] + gather["extra"])
        )
    return "\n".join(lines)


def show_tree(store: Any) -> str:
    """Tasks of a store with experiment, target, status and dataset shapes."""
    attrs = store.attrs
    lines = [
        f"{store.path}: campaign {attrs.get('campaign')}, schema {attrs.get('schema_version')}, "
        f"{len(store.task_ids())} task(s), toolkit {attrs.get('toolkit_version')}"
    ]
    for run in store.runs():
        device = run.attrs.get("provenance", {}).get("device_name")
        lines.append(f"  {run.task_id}  {run.experiment:<20} {run.label()}  {run.attrs.get('status')}  device={device}")
        identity = run.attrs.get("provenance", {}).get("device_identity")
        if identity:
            lines.append(f"      {identity_text(identity)}")
        for name, (shape, dtype) in run.datasets().items():
            lines.append(f"      {name:<36} {shape!s:<16} {dtype}")
    return "\n".join(lines)


IDENTITY_ORDER = ("sku", "processor", "sm_count", "compute_capability", "driver", "cuda", "cublas", "torch", "blas")


def identity_text(identity: dict[str, Any]) -> str:
    """A run's device identity in one line, e.g. `identity: sku NVIDIA H100 80GB HBM3, sm_count 132,
    driver 550.54.15, cuda 12.4, cublas 12.4.5.8, torch 2.6.0` (on a CPU: processor, torch, blas):
    what must match for two runs to be bitwise comparable."""
    keys = [k for k in IDENTITY_ORDER if k in identity] + sorted(set(identity) - set(IDENTITY_ORDER) - {"device"})
    return "identity: " + ", ".join(f"{k} {identity[k]}" for k in keys)


def show_json(store: Any) -> str:
    """The same as `show_tree`, as JSON (the schema is in README.md, "toolkit show --json")."""
    payload = {
        "store": str(store.path),
        "attrs": {k: v for k, v in store.attrs.items() if k != "manifest"},
        "tasks": [
            {
                "task_id": r.task_id,
                **{k: v for k, v in r.attrs.items() if k != "checksums"},
                "datasets": {n: {"shape": list(s), "dtype": d} for n, (s, d) in r.datasets().items()},
            }
            for r in store.runs()
        ],
    }
    return json.dumps(json_value(payload), indent=2, allow_nan=False)


def json_value(value: Any) -> Any:
    """`value` (HDF5 attributes as h5py returns them) as plain JSON types: numpy scalars as numbers
    and booleans, arrays as lists, bytes as text, non-finite floats as null."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_value(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def status_text(rows: list[Any], slurm: dict[str, tuple[str, str]] | None = None) -> str:
    """One line per task (store state, and Slurm state and node when known) plus counts."""
    counts: dict[str, int] = {}
    lines = []
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
        detail = f"  {row.detail}" if row.detail else ""
        state, node = (slurm or {}).get(row.task_id, ("", ""))
        job = f"  slurm {state}{' on ' + node if node and node != 'None assigned' else ''}" if state else ""
        lines.append(f"  {row.task_id}  stage {row.stage}  {row.state:<8} {row.label}{job}{detail}")
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return "\n".join([f"{len(rows)} task(s): {summary}"] + lines)


def numerics_text(module: Any) -> str:
    """Which numerics keys (sweepable, part of the task identity) the experiment honours."""
    from toolkit import experiments
    from toolkit.manifest.model import NUMERICS_FIELDS

    honoured = experiments.honours_numerics(module)
    refused = [k for k in experiments.PATH_NUMERICS if k not in honoured]
    line = f"numerics: {', '.join(k for k in NUMERICS_FIELDS if k not in refused)}"
    return line + (f" (not implemented, refused unless default: {', '.join(refused)})" if refused else "")


def experiment_text(name: str, module: Any) -> str:
    """Purpose, params (type, default), what it stores and reads."""
    from toolkit.manifest.params import describe

    doc = (module.__doc__ or "").strip()
    lines = [doc, "", "params:"]
    rows = describe(module.Params) or [("(none)", "", "")]
    width = max(18, *(len(n) for n, _, _ in rows))
    lines += [f"  {n:<{width}} {t:<20} default {d}" if t else f"  {n}" for n, t, d in rows]
    lines.append(
        f"runs: {'once per target and repeat' if module.PER_TARGET else 'once per campaign'}"
        f"{', loads the model' if module.NEEDS_MODEL else ', no model (reads the store)'}"
    )
    lines.append(f"reads: {', '.join(module.READS) or 'nothing upstream'}")
    if module.NEEDS_MODEL:
        lines.append(numerics_text(module))
    lines.append("stores:")
    width = max(34, *(len(k) for k in module.STORES))
    lines += [f"  {k:<{width}} {v}" for k, v in module.STORES.items()]
    return "\n".join(lines)
