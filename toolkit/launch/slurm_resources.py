"""What a Slurm cluster can give one job: nodes and partitions read from `scontrol show node -o`
and `scontrol show partition -o`, and the check of one job request against them.

`check_request` names each shortfall with the request and the best the cluster offers, e.g.
`32 GB requested, the largest node of partition batch with gpu:a100 has 15.6 GB`; the preflight
(`toolkit.launch.preflight`) prefixes it with the manifest or site-profile key it came from.
Nodes are counted whatever their state (down, drained): this checks configuration, not load.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

from toolkit.errors import LaunchError, UsageError

_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z][A-Za-z0-9_:/.]*)=")
_UNLIMITED = ("UNLIMITED", "INFINITE", "NONE", "N/A", "(null)", "")


@dataclass(frozen=True)
class Node:
    """One node's configured capacity."""

    name: str
    cpus: int
    memory_mb: int
    features: tuple[str, ...]  # as the node lists them
    gres: dict[tuple[str, str], int]  # (name, type) → count; an untyped GRES has type ""
    partitions: tuple[str, ...]


@dataclass(frozen=True)
class Partition:
    """One partition's limits (None: unlimited)."""

    name: str
    default: bool
    max_time_min: int | None
    max_time_text: str
    max_mem_per_node_mb: int | None
    max_cpus_per_node: int | None


@dataclass(frozen=True)
class Cluster:
    """Every node and partition of a cluster."""

    nodes: tuple[Node, ...]
    partitions: dict[str, Partition]


@dataclass(frozen=True)
class Request:
    """What one job asks: partitions ([] = the default one), node features, GPUs, CPUs, memory, time."""

    partitions: tuple[str, ...]
    constraint: str | None
    gpus: int
    gpu_type: str | None  # from a typed --gres (gpu:a100:N); None for --gpus or an untyped gres
    cpus: int
    mem_mb: int
    time_min: int
    mem_gb: float = 0.0  # the request as written, for the message
    gres_name: str = "gpu"


@dataclass(frozen=True)
class Shortfall:
    """One problem: `kind` (partition, constraint, gres, gpus, cpus, mem, time, resources) says which
    key of the request it concerns; `text` what was asked and the best the cluster offers."""

    kind: str
    text: str


def parse_records(text: str) -> list[dict[str, str]]:
    """`scontrol show ... -o` output (one record per line) → one dict per record.  A value runs to
    the next ` Key=`, so values with spaces (`OS=Linux 6.1 #1 SMP`, `Reason=...`) survive."""
    records = []
    for line in text.splitlines():
        marks = list(_KEY.finditer(line))
        if not marks:
            continue
        record = {}
        for mark, following in zip(marks, marks[1:] + [None]):
            end = following.start() if following else len(line)
            record[mark.group(1)] = line[mark.end() : end].strip()
        records.append(record)
    return records


def parse_gres(text: str) -> dict[tuple[str, str], int]:
    """`gpu:a100:4(S:0-1),gpu:2,mps:200` → {("gpu", "a100"): 4, ("gpu", ""): 2, ("mps", ""): 200}."""
    out: dict[tuple[str, str], int] = {}
    for item in re.sub(r"\([^)]*\)", "", text or "").split(","):
        parts = item.strip().split(":")
        if not parts[0] or parts[0] in _UNLIMITED:
            continue
        count = int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
        kind = parts[1] if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()) else ""
        out[(parts[0], kind)] = out.get((parts[0], kind), 0) + count
    return out


def parse_minutes(text: str) -> int | None:
    """A Slurm time limit (`UNLIMITED`, `1-00:00:00`, `2:00:00`, `30:00`, `45`) in whole minutes."""
    text = (text or "").strip()
    if text.upper() in _UNLIMITED:
        return None
    days, _, clock = text.rpartition("-")
    try:
        fields = [int(f) for f in clock.split(":")]
        int(days or 0)
    except ValueError:  # a format this does not know: no limit is checked
        return None
    if not 1 <= len(fields) <= 3:
        return None
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        fields += [0] * (3 - len(fields))
        hours, minutes, seconds = fields
    else:  # MM, MM:SS, HH:MM:SS
        hours, minutes, seconds = (
            ([0] * (3 - len(fields)) + fields) if len(fields) == 3 else (0, fields[0], (fields + [0])[1])
        )
    return int(days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def _number(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() else None


def parse_nodes(text: str) -> list[Node]:
    """Nodes from `scontrol show node -o`."""
    nodes = []
    for record in parse_records(text):
        if "NodeName" not in record:
            continue
        memory = (_number(record.get("RealMemory")) or 0) - (_number(record.get("MemSpecLimit")) or 0)
        features = record.get("AvailableFeatures") or record.get("Features") or ""
        nodes.append(
            Node(
                name=record["NodeName"],
                cpus=_number(record.get("CPUEfctv")) or _number(record.get("CPUTot")) or 0,
                memory_mb=max(memory, 0),
                features=tuple(f for f in features.split(",") if f and f not in _UNLIMITED),
                gres=parse_gres(record.get("Gres", "")),
                partitions=tuple(p for p in record.get("Partitions", "").split(",") if p),
            )
        )
    return nodes


def parse_partitions(text: str) -> dict[str, Partition]:
    """Partitions from `scontrol show partition -o`."""
    out = {}
    for record in parse_records(text):
        if "PartitionName" not in record:
            continue
        name = record["PartitionName"]
        out[name] = Partition(
            name=name,
            default=record.get("Default", "NO").upper() == "YES",
            max_time_min=parse_minutes(record.get("MaxTime", "UNLIMITED")),
            max_time_text=record.get("MaxTime", "UNLIMITED"),
            max_mem_per_node_mb=_number(record.get("MaxMemPerNode")),
            max_cpus_per_node=_number(record.get("MaxCPUsPerNode")),
        )
    return out


def read_cluster(timeout: float = 30) -> Cluster:
    """The cluster this host submits to, read through scontrol (`--all`: hidden partitions too);
    LaunchError if it cannot be read."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        raise UsageError(
            "--executor slurm checks the cluster's resources with scontrol, which is not on PATH; "
            "run it on a login node of the cluster"
        )
    texts = []
    for what in ("node", "partition"):
        try:
            proc = subprocess.run(
                [scontrol, "--all", "show", what, "-o"], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise LaunchError(
                f"scontrol show {what} did not answer within {timeout:.0f} s; is slurmctld up (scontrol ping)?"
            ) from None
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise LaunchError(f"scontrol show {what} failed ({detail}); is slurmctld up (scontrol ping)?")
        texts.append(proc.stdout)
    return Cluster(nodes=tuple(parse_nodes(texts[0])), partitions=parse_partitions(texts[1]))


@dataclass
class _Scope:
    """The nodes of one partition that match a request's features and GPU type, and how to name them."""

    partition: Partition
    nodes: list[Node] = field(default_factory=list)
    label: str = ""


def check_request(cluster: Cluster, request: Request) -> list[Shortfall]:
    """Why no node of the requested partitions can run `request` ([] when one can).  With several
    partitions (`a,b`) the job fits if one of them fits; otherwise the closest one is reported."""
    names = list(request.partitions) or [p.name for p in cluster.partitions.values() if p.default]
    if not names:
        return [
            Shortfall(
                "partition",
                "no partition given and the cluster has no default partition; set partition in the site profile",
            )
        ]
    unknown = [n for n in names if n not in cluster.partitions]
    if unknown and len(unknown) == len(names):
        return [
            Shortfall(
                "partition",
                f"partition {unknown[0]!r} does not exist on this cluster; partitions: {', '.join(cluster.partitions)}",
            )
        ]
    results = [_check_partition(cluster, cluster.partitions[n], request) for n in names if n not in unknown]
    return min(results, key=len)


def _check_partition(cluster: Cluster, partition: Partition, request: Request) -> list[Shortfall]:
    scope = _Scope(partition, [n for n in cluster.nodes if partition.name in n.partitions])
    where = f"partition {partition.name}"
    if not scope.nodes:
        return [Shortfall("partition", f"partition {partition.name} has no nodes")]
    if request.constraint:
        matching = [n for n in scope.nodes if constraint_matches(request.constraint, frozenset(n.features))]
        if not matching:
            offered = "; ".join(dict.fromkeys(",".join(n.features) or "(none)" for n in scope.nodes))
            return [
                Shortfall(
                    "constraint", f"{request.constraint!r} matches no node of {where} (features there: {offered})"
                )
            ]
        scope.nodes, scope.label = matching, f" with features {request.constraint}"
    if request.gpus > 0:
        key = (request.gres_name, request.gpu_type or "")
        wanted = f"{request.gres_name}:{request.gpu_type}" if request.gpu_type else request.gres_name
        having = [n for n in scope.nodes if _gpus(n, key) > 0]
        if not having:
            offered = (
                ", ".join(
                    sorted({f"{g}:{t}:{c}" if t else f"{g}:{c}" for n in scope.nodes for (g, t), c in n.gres.items()})
                )
                or "none"
            )
            return [Shortfall("gres", f"{wanted} is on no node of {where}{scope.label} (GRES there: {offered})")]
        scope.nodes, scope.label = having, f" with {wanted}"
    return _capacity(scope, request)


def _gpus(node: Node, key: tuple[str, str]) -> int:
    name, kind = key
    return node.gres.get(key, 0) if kind else sum(c for (g, _), c in node.gres.items() if g == name)


def _capacity(scope: _Scope, request: Request) -> list[Shortfall]:
    part, nodes = scope.partition, scope.nodes
    of = f"the largest node of partition {part.name}{scope.label}"
    out = []
    key = (request.gres_name, request.gpu_type or "")
    wanted = f"{request.gres_name}:{request.gpu_type}" if request.gpu_type else request.gres_name
    most_gpus = max(_gpus(n, key) for n in nodes)
    if request.gpus > most_gpus:
        out.append(Shortfall("gpus", f"{request.gpus} × {wanted} requested, {of} has {most_gpus}"))
    most_cpus = max(n.cpus for n in nodes)
    if request.cpus > most_cpus:
        out.append(Shortfall("cpus", f"{request.cpus} CPUs requested, {of} has {most_cpus}"))
    elif part.max_cpus_per_node is not None and request.cpus > part.max_cpus_per_node:
        out.append(
            Shortfall(
                "cpus",
                f"{request.cpus} CPUs requested, partition {part.name} allows at most "
                f"{part.max_cpus_per_node} per node (MaxCPUsPerNode)",
            )
        )
    asked = f"{request.mem_gb:g} GB requested"
    most_mem = max(n.memory_mb for n in nodes)
    if request.mem_mb > most_mem:
        out.append(Shortfall("mem", f"{asked}, {of} has {gb(most_mem)} GB"))
    elif part.max_mem_per_node_mb is not None and request.mem_mb > part.max_mem_per_node_mb:
        out.append(
            Shortfall(
                "mem",
                f"{asked}, partition {part.name} allows at most "
                f"{gb(part.max_mem_per_node_mb)} GB per node (MaxMemPerNode)",
            )
        )
    if part.max_time_min is not None and request.time_min > part.max_time_min:
        out.append(
            Shortfall(
                "time",
                f"{request.time_min} min requested, partition {part.name} allows at most "
                f"{part.max_time_min} min (MaxTime={part.max_time_text})",
            )
        )
    if not out and not any(
        n.cpus >= request.cpus and n.memory_mb >= request.mem_mb and _gpus(n, key) >= request.gpus for n in nodes
    ):
        out.append(
            Shortfall(
                "resources",
                f"{request.cpus} CPUs, {asked.split(' requested')[0]}"
                f"{f' and {request.gpus} × {wanted}' if request.gpus else ''} "
                f"together fit no single node of partition {part.name}{scope.label}",
            )
        )
    return out


def gb(mb: int) -> str:
    """Megabytes as gigabytes with one decimal: 16000 → `15.6`, 16384 → `16`."""
    return f"{mb / 1024:.1f}".removesuffix(".0")


def constraint_matches(expression: str, features: frozenset[str]) -> bool:
    """Whether node `features` satisfy a --constraint of names joined by `&` (and), `|` (or),
    parentheses or brackets; counts (`a100*2`) are ignored.  An expression this cannot read
    matches (the check never refuses what it does not understand)."""
    tokens = re.findall(r"[&|()\[\]]|[^&|()\[\]\s]+", re.sub(r"\*\d+", "", expression))
    try:
        value, rest = _or(tokens, features)
    except (IndexError, ValueError):
        return True
    return value if not rest else True


def _or(tokens: list[str], features: frozenset[str]) -> tuple[bool, list[str]]:
    value, tokens = _and(tokens, features)
    while tokens and tokens[0] == "|":
        right, tokens = _and(tokens[1:], features)
        value = value or right
    return value, tokens


def _and(tokens: list[str], features: frozenset[str]) -> tuple[bool, list[str]]:
    value, tokens = _atom(tokens, features)
    while tokens and tokens[0] == "&":
        right, tokens = _atom(tokens[1:], features)
        value = value and right
    return value, tokens


def _atom(tokens: list[str], features: frozenset[str]) -> tuple[bool, list[str]]:
    head = tokens[0]
    if head in "([":
        value, rest = _or(tokens[1:], features)
        if not rest or rest[0] != {"(": ")", "[": "]"}[head]:
            raise ValueError("unbalanced")
        return value, rest[1:]
    if head in "&|)]":
        raise ValueError("operator where a feature was expected")
    return head in features, tokens[1:]
