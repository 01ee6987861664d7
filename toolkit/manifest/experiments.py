"""Validation of the `experiments:` list: names, ids, params, sweeps, repeats and `needs`.

Every entry is checked on its own first; then, over all entries at once (so that one broken entry
does not hide the others' problems): duplicate ids, `needs` (unknown, self, duplicate, cyclic,
missing upstream), and, when every entry is valid, what only the whole campaign can tell: its
size, eager attention for experiments that take JVPs through the model (a sweep or an override
included), and upstream runs that a task would not find (`toolkit.experiments.upstream_rule`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.manifest.located import short
from toolkit.manifest.model import NUMERICS_FIELDS, ExperimentSpec, Numerics, Resources, SiteProfile
from toolkit.manifest.params import build_params, resolve_path
from toolkit.manifest.rules import NAME_RE, did_you_mean, numeric_problem, numerics_conflict

if TYPE_CHECKING:
    from toolkit.manifest.checker import Checker

EXPERIMENT_KEYS = ("name", "id", "params", "sweep", "repeats", "needs", "targets", "numerics", "resources")
MAX_TASKS = 200_000
MAX_REPEATS = 10_000


@dataclass
class _Entry:
    """What is known of one entry, even when it has errors: name and id (if valid), needs, spec."""

    index: int
    name: str | None  # a registered experiment name, else None
    exp_id: str | None
    needs: tuple[str, ...] | None
    spec: ExperimentSpec | None
    raw: dict[str, Any]


def check_experiments(
    checker: Checker,
    entries: list[Any],
    targets: tuple[str, ...],
    numerics: Numerics,
    resources: Resources,
    site: SiteProfile | None,
) -> tuple[ExperimentSpec, ...] | None:
    """Validate every entry, then ids and the `needs` graph over all entries; None if anything is wrong."""
    checked = [
        _check_one(checker, entry, ("experiments", index), targets, numerics, resources, site)
        for index, entry in enumerate(entries)
    ]
    by_id: dict[str, _Entry] = {}
    for entry in checked:
        if entry.exp_id is None:
            continue
        if entry.exp_id in by_id:
            checker.problem(
                ("experiments", entry.index, "id") if "id" in entry.raw else ("experiments", entry.index),
                f"duplicate id {entry.exp_id!r} (also experiments[{by_id[entry.exp_id].index}]); "
                "give each entry a unique id",
            )
            continue
        by_id[entry.exp_id] = entry
    all_ids_known = all(e.exp_id is not None for e in checked)
    needs_ok = _check_needs(checker, checked, by_id, all_ids_known)
    sized = _check_size(checker, checked)
    for entry in sized:  # entries valid on their own, whatever the others hold
        _check_eager(checker, entry)
        _check_numerics(checker, entry)
    if needs_ok:  # the entries whose own spec and upstream specs are all valid
        fine = {id(e) for e in sized}
        _check_upstream(checker, [e for e in sized if all(id(by_id[n]) in fine for n in e.needs or ())], by_id)
    if checker.problems or any(e.spec is None for e in checked):
        return None
    return tuple(e.spec for e in checked if e.spec is not None)


def _check_size(checker: Checker, entries: list[_Entry]) -> list[_Entry]:
    """Refuse an entry, or a campaign, that expands to more tasks than a campaign can sensibly hold;
    the valid entries whose size is fine."""
    total, fine = 0, []
    for entry in entries:
        if entry.spec is None:
            continue
        spec = entry.spec
        count = spec.repeats * len(spec.targets) * math.prod(len(v) for v in spec.sweep.values())
        total += count
        if count > MAX_TASKS:
            checker.problem(
                ("experiments", entry.index),
                f"expands to {count} tasks, more than {MAX_TASKS}; reduce "
                "repeats, targets or sweeps, or split the campaign",
            )
            continue
        if total > MAX_TASKS:
            checker.problem(
                ("experiments", entry.index),
                f"the campaign expands to more than {MAX_TASKS} tasks (at "
                f"id {spec.id!r}); reduce repeats, targets or sweeps, or split the campaign",
            )
            total = -(10**12)  # reported once
        fine.append(entry)
    return fine


def _check_one(
    checker: Checker,
    entry: Any,
    path: tuple[Any, ...],
    targets: tuple[str, ...],
    numerics: Numerics,
    resources: Resources,
    site: SiteProfile | None,
) -> _Entry:
    from toolkit import experiments

    index = path[-1]
    data = checker.mapping(entry, path, required=True)
    if data is None:
        return _Entry(index, None, None, None, None, {})
    checker.check_keys(data, EXPERIMENT_KEYS, path)
    name = data.get("name")
    exp_id = data.get("id", name)
    known_id = exp_id if isinstance(exp_id, str) and NAME_RE.match(exp_id) else None
    needs = _check_needs_list(checker, data.get("needs", []), path + ("needs",))
    if not isinstance(name, str):
        where = path + ("name",) if "name" in data else path
        checker.problem(
            where,
            f"{'must be' if 'name' in data else 'missing'} an experiment name"
            f"{', got ' + repr(name) if 'name' in data else ''}; known experiments: "
            f"{', '.join(experiments.names())}",
        )
        return _Entry(index, None, known_id, needs, None, data)
    if name not in experiments.REGISTRY:
        checker.problem(path + ("name",), f"unknown experiment {name!r}; {experiments.suggestion(name)}")
        return _Entry(index, None, known_id, needs, None, data)
    module = experiments.get(name)
    if known_id is None:
        checker.problem(path + ("id",), f"must match [a-z0-9][a-z0-9._-]{{0,63}}, got {exp_id!r}")
    raw_params = data.get("params")
    params = build_params(
        module.Params,
        {} if raw_params is None else raw_params,
        path + ("params",),
        checker.problem,
        lambda p, m: checker.problem(p, m, at_key=True),
        base_dir=checker.dir,
    )
    sweep = _check_sweep(checker, data.get("sweep"), path + ("sweep",), module.Params, raw_params)
    repeats = checker.integer(data.get("repeats", 1), path + ("repeats",), 1, MAX_REPEATS)
    exp_targets = checker.target_list(data["targets"], path + ("targets",), site) if "targets" in data else targets
    extra = [t for t in exp_targets if t not in targets]
    if extra:
        checker.problem(path + ("targets",), f"targets {extra} are not in the manifest's targets {list(targets)}")
    overrides = checker.mapping(data.get("numerics"), path + ("numerics",)) or {}
    checker.check_keys(overrides, NUMERICS_FIELDS, path + ("numerics",))
    exp_numerics = checker.numerics_override(
        {k: v for k, v in overrides.items() if k in NUMERICS_FIELDS}, path + ("numerics",), numerics
    )
    exp_resources = checker.resources_override(data.get("resources"), path + ("resources",), resources)
    if (
        known_id is None
        or params is None
        or sweep is None
        or repeats is None
        or needs is None
        or exp_resources is None
        or extra
        or not exp_targets
    ):
        return _Entry(index, name, known_id, needs, None, data)
    spec = ExperimentSpec(
        name=name,
        id=known_id,
        params=params,
        raw_params=dict(raw_params or {}),
        sweep=sweep,
        repeats=repeats,
        needs=needs,
        targets=tuple(exp_targets),
        numerics=exp_numerics,
        resources=exp_resources,
    )
    return _Entry(index, name, known_id, needs, spec, data)


def _check_sweep(
    checker: Checker, value: Any, path: tuple[Any, ...], params_cls: type, raw_params: Any
) -> dict[str, tuple[Any, ...]] | None:

    data = checker.mapping(value, path)
    if data is None:
        return None
    fields = [f.name for f in dataclasses.fields(params_cls)]
    sweep: dict[str, tuple[Any, ...]] = {}
    ok = True
    for key, values in data.items():
        if key not in NUMERICS_FIELDS and key not in fields:
            hint = did_you_mean(key, fields + list(NUMERICS_FIELDS))
            checker.problem(
                path + (key,),
                f"unknown sweep key; {hint}sweep a parameter "
                f"({', '.join(fields) or 'none'}) or a numerics setting ({', '.join(NUMERICS_FIELDS)})",
                at_key=True,
            )
            ok = False
            continue
        if not isinstance(values, list) or not values:
            checker.problem(
                path + (key,), f"must be a non-empty list of values (an empty sweep runs no task), got {values!r}"
            )
            ok = False
            continue
        if key in NUMERICS_FIELDS:
            for i, v in enumerate(values):
                why = numeric_problem(key, v)
                if why is not None:
                    checker.problem(path + (key, i), why)
                    ok = False
        else:
            base = raw_params if isinstance(raw_params, dict) else {}
            if key in getattr(params_cls, "PATH_FIELDS", ()):  # swept paths: absolute, like params
                values = [resolve_path(v, checker.dir) if isinstance(v, str) else v for v in values]
            for i, v in enumerate(values):
                messages: list[str] = []
                build_params(params_cls, {**base, key: v}, (), _collect(messages), base_dir=checker.dir)
                for message in messages:
                    checker.problem(path + (key, i), message)
                ok &= not messages
        if len(set(map(repr, values))) != len(values):
            checker.problem(path + (key,), "values must be distinct")
            ok = False
        sweep[key] = tuple(values)
    return sweep if ok else None


def _collect(messages: list[str]) -> Callable[[Any, str], None]:
    """A problem callback for `build_params` that keeps the messages."""
    return lambda _path, message: messages.append(message)


def _check_needs_list(checker: Checker, value: Any, path: tuple[Any, ...]) -> tuple[str, ...] | None:
    if isinstance(value, str):
        value = [value]
    if value is None:
        value = []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        checker.problem(path, f"must be a list of experiment ids, got {short(value)}")
        return None
    return tuple(value)


def _check_needs(checker: Checker, entries: list[_Entry], by_id: dict[str, _Entry], all_ids_known: bool) -> bool:
    """Unknown, self, duplicate and cyclic `needs`, and a missing upstream, over every entry whose
    `needs` could be read (its other errors do not hide these); True if none of these was found."""
    from toolkit import experiments

    before = len(checker.problems)

    for entry in entries:
        if entry.needs is None:
            continue
        for j, need in enumerate(entry.needs):
            where = (
                ("experiments", entry.index, "needs", j)
                if isinstance(entry.raw.get("needs"), list)
                else ("experiments", entry.index, "needs")
            )
            if need == entry.exp_id:
                checker.problem(where, "an experiment cannot need itself")
            elif need in entry.needs[:j]:
                checker.problem(where, f"duplicate id {need!r} in needs")
            elif need not in by_id and all_ids_known:
                checker.problem(
                    where, f"unknown id {need!r}; {did_you_mean(need, list(by_id))}ids: {', '.join(by_id) or '(none)'}"
                )
        if entry.name is None:
            continue
        upstream = [by_id[n] for n in entry.needs if n in by_id]
        if len(upstream) != len(entry.needs) or any(u.name is None for u in upstream):
            continue  # a needed entry is itself unknown or broken: reported there
        provided = {u.name for u in upstream}
        for wanted in experiments.get(entry.name).READS:
            if wanted not in provided:
                checker.problem(
                    ("experiments", entry.index, "needs"),
                    f"{entry.name} reads {wanted} runs: add the id of an {wanted} entry to needs",
                )
    graph = {
        exp_id: [n for n in e.needs if n in by_id and n != exp_id] for exp_id, e in by_id.items() if e.needs is not None
    }
    cycle = _find_cycle({node: [n for n in nxt if n in graph] for node, nxt in graph.items()})
    if cycle:
        checker.problem(("experiments", by_id[cycle[0]].index, "needs"), f"cyclic needs: {' -> '.join(cycle)}")
    return len(checker.problems) == before and all(e.needs is not None for e in entries) and all_ids_known


def _numerics_points(spec: ExperimentSpec) -> list[tuple[Numerics, tuple[Any, ...]]]:
    """Each distinct numerics of the entry's tasks, with the sweep path that set it (or ())."""
    keys = [k for k in spec.sweep if k in NUMERICS_FIELDS]
    points = []
    for combo in itertools.product(*(range(len(spec.sweep[k])) for k in keys)):
        values = {k: spec.sweep[k][i] for k, i in zip(keys, combo)}
        points.append((dataclasses.replace(spec.numerics, **values), tuple(zip(keys, combo))))
    return points


def param_points(spec: ExperimentSpec, module: Any) -> Any:
    """The Params of every sweep point over params (lazily; the base params when none is swept)."""
    keys = [k for k in spec.sweep if k not in NUMERICS_FIELDS]
    if not keys:
        yield spec.params, ()
        return
    for combo in itertools.product(*(range(len(spec.sweep[k])) for k in keys)):
        values = {k: spec.sweep[k][i] for k, i in zip(keys, combo)}
        converted = {}
        for key, value in values.items():  # swept values were checked: convert like build_params
            converted[key] = tuple(value) if isinstance(value, list) else value
        yield dataclasses.replace(spec.params, **converted), tuple(zip(keys, combo))


def _check_eager(checker: Checker, entry: _Entry) -> None:
    """An experiment that takes JVPs through the model needs eager attention in every task."""
    from toolkit import experiments

    spec = entry.spec
    assert spec is not None
    module = experiments.get(spec.name)
    needing = None
    for params, point in param_points(spec, module):
        if experiments.needs_eager_attention(module, params):
            needing = point
            break
    if needing is None:
        return
    why = f"{spec.name} takes JVPs through the model (torch.func.jvp), which need eager attention"
    declared = getattr(module, "NEEDS_EAGER_ATTENTION", None)
    if callable(declared):  # its docstring says when, up to a colon
        when = (declared.__doc__ or "").strip().split(":")[0].strip().rstrip(".")
        point = ", ".join(f"{k}={spec.sweep[k][i]!r}" for k, i in needing)
        why += f" (when {when}{', as at sweep point ' + point if point else ''})" if when else ""
    base = ("experiments", entry.index)
    swept = "attn_implementation" in spec.sweep
    if swept:
        for i, value in enumerate(spec.sweep["attn_implementation"]):
            if value != "eager":
                checker.problem(
                    base + ("sweep", "attn_implementation", i),
                    f"is {value!r}, but {why}: sweep only eager for this entry",
                )
        return
    if spec.numerics.attn_implementation == "eager":
        return
    overrides = entry.raw.get("numerics")
    value = spec.numerics.attn_implementation
    if isinstance(overrides, dict) and "attn_implementation" in overrides:
        checker.problem(base + ("numerics", "attn_implementation"), f"is {value!r}, but {why}: set it to eager")
    else:
        where = checker.located.where(("model", "attn_implementation"))
        checker.problem(
            base,
            f"attn_implementation is {value!r} (model.attn_implementation, {where}), but {why}: "
            "set attn_implementation: eager under model: or in this entry's numerics:",
        )


def _check_numerics(checker: Checker, entry: _Entry) -> None:
    """Forward-path numerics keys the experiment does not implement stay at their defaults, and
    no task's numerics contradict themselves (a row beyond the batch, weights the dtype cannot hold)."""
    from toolkit import experiments

    spec = entry.spec
    assert spec is not None
    module = experiments.get(spec.name)
    defaults = Numerics()
    if module.NEEDS_MODEL:
        honoured = experiments.honours_numerics(module)
        for key in experiments.PATH_NUMERICS:
            default = getattr(defaults, key)
            if key in honoured:
                continue
            why = (
                f"{spec.name} does not implement numerics key {key} (it honours "
                f"{', '.join(sorted(honoured)) or 'none of ' + ', '.join(experiments.PATH_NUMERICS)}): "
                f"leave it at its default {'null' if default is None else default}"
            )
            if key in spec.sweep:
                for i, value in enumerate(spec.sweep[key]):
                    if value != default:
                        checker.problem(("experiments", entry.index, "sweep", key, i), f"is {value!r}, but {why}")
            elif getattr(spec.numerics, key) != default:
                _numerics_problem(checker, entry, key, (), f"is {getattr(spec.numerics, key)!r}, but {why}")
    for numerics, point in _numerics_points(spec):
        conflict = numerics_conflict(numerics)
        if conflict is not None:
            _numerics_problem(checker, entry, conflict[0], point, conflict[1])
            return


def _numerics_problem(checker: Checker, entry: _Entry, key: str, point: tuple[Any, ...], message: str) -> None:
    """Report `message` where numerics key `key` of the entry was set: its sweep value at `point`,
    its `numerics:` override, or (set under `model:`) the entry, naming the model key's place."""
    base = ("experiments", entry.index)
    swept = dict(point)
    overrides = entry.raw.get("numerics")
    if key in swept:
        checker.problem(base + ("sweep", key, swept[key]), message)
    elif isinstance(overrides, dict) and key in overrides:
        checker.problem(base + ("numerics", key), message)
    elif ("model", key) in checker.located.marks:
        where = checker.located.where(("model", key))
        checker.problem(base, f"{key} (model.{key}, {where}) {message}")
    else:
        checker.problem(base, f"{key} {message}")


def _run_keys(spec: ExperimentSpec, per_target: bool) -> dict[tuple[str, Numerics], int]:
    """Runs of an entry per (target, numerics): how many tasks share each."""
    targets = spec.targets if per_target else ("any",)
    other = math.prod(len(v) for k, v in spec.sweep.items() if k not in NUMERICS_FIELDS)
    counts: dict[tuple[str, Numerics], int] = {}
    for numerics, _ in _numerics_points(spec):
        for target in targets:
            counts[(target, numerics)] = counts.get((target, numerics), 0) + spec.repeats * other
    return counts


def _matches(match: tuple[str, ...], task: tuple[str, Numerics], run: tuple[str, Numerics]) -> bool:
    for field in match:
        if field == "target" and task[0] != run[0]:
            return False
        if field == "dtype" and task[1].dtype != run[1].dtype:
            return False
        if field == "numerics" and task[1] != run[1]:
            return False
    return True


def _check_upstream(checker: Checker, entries: list[_Entry], by_id: dict[str, _Entry]) -> None:
    """Every task of a downstream entry finds the upstream runs it needs among its `needs`
    (enough of them, with distinct numerics, of its own target/dtype/numerics as declared)."""
    from toolkit import experiments

    for entry in entries:
        spec = entry.spec
        assert spec is not None
        module = experiments.get(spec.name)
        if not module.READS:
            continue
        rule = experiments.upstream_rule(module)
        min_runs, min_numerics, match = rule.min_runs, rule.min_numerics, rule.match
        runs: dict[tuple[str, Numerics], int] = {}
        for need in spec.needs:
            up = by_id[need].spec
            assert up is not None
            if up.name in module.READS:
                for key, n in _run_keys(up, experiments.get(up.name).PER_TARGET).items():
                    runs[key] = runs.get(key, 0) + n
        for task in _run_keys(spec, module.PER_TARGET):
            found = {key: n for key, n in runs.items() if _matches(match, task, key)}
            count = sum(found.values())
            distinct = len({tuple(getattr(k[1], f) for f in rule.distinct) for k in found})
            if count >= min_runs and distinct >= min_numerics:
                continue
            reads = " or ".join(module.READS)
            given = f"its needs ({', '.join(spec.needs)}) give"
            if count < min_runs:
                kind = "run" if min_runs == 1 else "runs"
                if match:
                    shared = ", ".join(
                        f"numerics {task[1].label()}"
                        if f == "numerics"
                        else f"dtype {task[1].dtype}"
                        if f == "dtype"
                        else f"target {task[0]}"
                        for f in match
                    )
                    text = (
                        f"{spec.name} on {shared} needs at least {min_runs} {reads} {kind} of the same "
                        f"{' and '.join(match)}; {given} {count or 'none'}: {_UPSTREAM_HINT['match']}"
                    )
                else:
                    text = (
                        f"{spec.name} needs at least {min_runs} {reads} {kind}; {given} {count}: "
                        f"{_UPSTREAM_HINT['runs']}"
                    )
            else:
                text = (
                    f"{spec.name} needs {reads} runs with at least {min_numerics} different "
                    f"{' / '.join(rule.distinct)}; {given} {distinct}: {_UPSTREAM_HINT['numerics']}"
                )
            checker.problem(("experiments", entry.index, "needs"), text)
            break


_UPSTREAM_HINT = {
    "match": "give both entries the same targets and numerics (or sweep them together)",
    "runs": "sweep the upstream entry over numerics (e.g. sweep: {dtype: [float32, bfloat16]}), give it "
    "repeats >= 2 or more targets",
    "numerics": "sweep the upstream entry over numerics (e.g. sweep: {dtype: [float32, bfloat16]})",
}


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle of `graph` as [a, b, ..., a], or None (iterative: no recursion limit)."""
    state: dict[str, int] = {}
    for root in graph:
        if root in state:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        state[root] = 1
        while stack:
            node, i = stack[-1]
            if i < len(graph[node]):
                stack[-1] = (node, i + 1)
                nxt = graph[node][i]
                if state.get(nxt) == 1:
                    return path[path.index(nxt) :] + [nxt]
                if nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                state[node] = 2
                stack.pop()
                path.pop()
    return None
