"""Validation of the `experiments:` list: names, ids, params, sweeps, repeats and `needs`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from toolkit.manifest.model import NUMERICS_FIELDS, ExperimentSpec, Numerics, Resources, SiteProfile
from toolkit.manifest.params import build_params, resolve_path

if TYPE_CHECKING:
    from toolkit.manifest.checker import Checker

EXPERIMENT_KEYS = ("name", "id", "params", "sweep", "repeats", "needs", "targets", "numerics", "resources")


def check_experiments(checker: Checker, entries: list[Any], targets: tuple[str, ...], numerics: Numerics,
                      resources: Resources, site: SiteProfile | None) -> tuple[ExperimentSpec, ...] | None:
    """Validate every entry, then the `needs` graph; None if anything is wrong."""
    specs: list[ExperimentSpec] = []
    ids: dict[str, int] = {}
    for index, entry in enumerate(entries):
        spec = _check_one(checker, entry, ("experiments", index), targets, numerics, resources, site)
        if spec is None:
            continue
        if spec.id in ids:
            checker.problem(("experiments", index, "id"), f"duplicate id {spec.id!r} "
                            f"(also experiments[{ids[spec.id]}]); give each entry a unique id")
            continue
        ids[spec.id] = index
        specs.append(spec)
    if len(specs) != len(entries):
        return None
    _check_needs(checker, specs, ids)
    _check_size(checker, specs)
    return tuple(specs)


MAX_TASKS = 200_000


def _check_size(checker: Checker, specs: list[ExperimentSpec]) -> None:
    """Refuse manifests that expand to more tasks than a campaign can sensibly hold."""
    import math

    total = 0
    for spec in specs:
        total += spec.repeats * len(spec.targets) * math.prod(len(v) for v in spec.sweep.values())
        if total > MAX_TASKS:
            checker.problem(("experiments",), f"expands to more than {MAX_TASKS} tasks (at experiments id "
                            f"{spec.id!r}); reduce repeats, targets or sweeps, or split the campaign")
            return


def _check_one(checker: Checker, entry: Any, path: tuple[Any, ...], targets: tuple[str, ...],
               numerics: Numerics, resources: Resources, site: SiteProfile | None) -> ExperimentSpec | None:
    from toolkit import experiments
    from toolkit.manifest.checker import NAME_RE

    data = checker._mapping(entry, path, required=True)
    if data is None:
        return None
    checker._keys(data, EXPERIMENT_KEYS, path)
    name = data.get("name")
    if not isinstance(name, str):
        checker.problem(path, f"missing experiment name; known experiments: {', '.join(experiments.names())}")
        return None
    if name not in experiments.REGISTRY:
        checker.problem(path + ("name",), f"unknown experiment {name!r}; {experiments.suggestion(name)}")
        return None
    module = experiments.get(name)
    exp_id = data.get("id", name)
    if not isinstance(exp_id, str) or not NAME_RE.match(exp_id):
        checker.problem(path + ("id",), f"must match [a-z0-9][a-z0-9._-]{{0,63}}, got {exp_id!r}")
        return None
    raw_params = data.get("params") or {}
    params = build_params(module.Params, raw_params, path + ("params",), checker.problem,
                          lambda p, m: checker.problem(p, m, at_key=True), base_dir=checker.dir)
    sweep = _check_sweep(checker, data.get("sweep"), path + ("sweep",), module.Params, raw_params)
    repeats = checker._int(data.get("repeats", 1), path + ("repeats",), 1)
    needs = _check_needs_list(checker, data.get("needs", []), path + ("needs",))
    exp_targets = checker._targets(data["targets"], path + ("targets",), site) if "targets" in data else targets
    extra = [t for t in exp_targets if t not in targets]
    if extra:
        checker.problem(path + ("targets",), f"targets {extra} are not in the manifest's targets {list(targets)}")
    overrides = checker._mapping(data.get("numerics"), path + ("numerics",)) or {}
    checker._keys(overrides, NUMERICS_FIELDS, path + ("numerics",))
    exp_numerics = checker._numerics({k: v for k, v in overrides.items() if k in NUMERICS_FIELDS},
                                     path + ("numerics",), numerics)
    exp_resources = checker._resources(data.get("resources"), path + ("resources",), resources)
    if params is None or sweep is None or repeats is None or needs is None or exp_resources is None:
        return None
    return ExperimentSpec(name=name, id=exp_id, params=params, raw_params=dict(raw_params), sweep=sweep,
                          repeats=repeats, needs=needs, targets=tuple(exp_targets), numerics=exp_numerics,
                          resources=exp_resources)


def _check_sweep(checker: Checker, value: Any, path: tuple[Any, ...], params_cls: type,
                 raw_params: Any) -> dict[str, tuple[Any, ...]] | None:
    from toolkit.manifest.checker import NUMERIC_CHOICES

    data = checker._mapping(value, path)
    if data is None:
        return None
    fields = [f.name for f in dataclasses.fields(params_cls)]
    sweep: dict[str, tuple[Any, ...]] = {}
    ok = True
    for key, values in data.items():
        if not isinstance(values, list) or not values:
            checker.problem(path + (key,), f"must be a non-empty list of values, got {values!r}")
            ok = False
            continue
        if key in NUMERICS_FIELDS:
            choices = NUMERIC_CHOICES[key]
            for i, v in enumerate(values):
                if v not in choices or type(v) is not type(choices[0]):
                    checker.problem(path + (key, i), f"must be one of {', '.join(map(str, choices))}, got {v!r}")
                    ok = False
        elif key in fields:
            base = raw_params if isinstance(raw_params, dict) else {}
            if key in getattr(params_cls, "PATH_FIELDS", ()):  # swept paths: absolute, like params
                values = [resolve_path(v, checker.dir) if isinstance(v, str) else v for v in values]
            for i, v in enumerate(values):
                messages: list[str] = []
                build_params(params_cls, {**base, key: v}, (), lambda _p, m: messages.append(m),
                             base_dir=checker.dir)
                for message in messages:
                    checker.problem(path + (key, i), message)
                ok &= not messages
        else:
            checker.problem(path + (key,), "unknown sweep key; sweep a parameter "
                            f"({', '.join(fields) or 'none'}) or a numerics setting ({', '.join(NUMERICS_FIELDS)})",
                            at_key=True)
            ok = False
            continue
        if len(set(map(repr, values))) != len(values):
            checker.problem(path + (key,), "values must be distinct")
            ok = False
        sweep[key] = tuple(values)
    return sweep if ok else None


def _check_needs_list(checker: Checker, value: Any, path: tuple[Any, ...]) -> tuple[str, ...] | None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        checker.problem(path, f"must be a list of experiment ids, got {value!r}")
        return None
    return tuple(value)


def _check_needs(checker: Checker, specs: list[ExperimentSpec], ids: dict[str, int]) -> None:
    from toolkit import experiments
    from toolkit.manifest.checker import _did_you_mean

    by_id = {s.id: s for s in specs}
    for spec in specs:
        index = ids[spec.id]
        for j, need in enumerate(spec.needs):
            if need not in by_id:
                checker.problem(("experiments", index, "needs", j), f"unknown id {need!r}; "
                                f"{_did_you_mean(need, list(by_id))}ids: {', '.join(by_id)}")
            elif need == spec.id:
                checker.problem(("experiments", index, "needs", j), "an experiment cannot need itself")
            elif need in spec.needs[:j]:
                checker.problem(("experiments", index, "needs", j), f"duplicate id {need!r} in needs")
        provided = {by_id[n].name for n in spec.needs if n in by_id}
        for wanted in experiments.get(spec.name).READS:
            if wanted not in provided:
                checker.problem(("experiments", index, "needs"), f"{spec.name} reads {wanted} runs: add the id "
                                f"of an {wanted} entry to needs")
    cycle = _find_cycle({s.id: [n for n in s.needs if n in by_id and n != s.id] for s in specs})
    if cycle:
        checker.problem(("experiments", ids[cycle[0]], "needs"), f"cyclic needs: {' -> '.join(cycle)}")


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None
