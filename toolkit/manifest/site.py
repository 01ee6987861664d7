"""Site profiles: how a cluster names its GPUs, as sbatch options, and what each target must land on.

A target's section holds sbatch options plus `device: cuda|cpu` (a GPU target never falls back to
CPU; the default is `cuda` when the section requests GPUs through gres/gpus) and
`expect: {device_name: REGEX, sm_count: N, memory_gb_min: M}`, checked by the worker against the
real device (`toolkit.models.device`).

Profiles ship inside the package (`toolkit/sites/*.yaml`, so a plain `pip install` finds them);
`slurm/sites/` of a checkout and the folders of `$TOOLKIT_SITES` are looked up before them.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Any

from toolkit.manifest.located import Located, YamlProblem, load_located, short
from toolkit.manifest.model import TARGET_RE, SiteProfile
from toolkit.models.device import DEVICE_KINDS, EXPECT_KEYS, TargetDevice

SBATCH_KEYS = ("partition", "account", "qos", "constraint", "gres", "gpus", "extra")
GPU_KEYS = ("gres", "gpus")
TARGET_KEYS = ("device", "expect")  # a target section's keys besides sbatch options
GATHER_RESOURCES = {"time_min": 30, "cpus": 1, "mem_gb": 4}  # the gather job's defaults
LONG_OPTION = re.compile(r"^--[a-z][a-z0-9-]*(=[^\n\r\0]+)?$")
SITE_KEYS = ("name", "description", "defaults", "campaign", "gather", "targets")
PACKAGED_SITES = Path(__file__).resolve().parents[1] / "sites"
CHECKOUT_SITES = Path(__file__).resolve().parents[2] / "slurm" / "sites"


def site_dirs() -> list[Path]:
    """Where named profiles are looked up, first match wins: $TOOLKIT_SITES (an os.pathsep list),
    a checkout's slurm/sites, then the profiles shipped with the package."""
    dirs = [Path(p) for p in os.environ.get("TOOLKIT_SITES", "").split(os.pathsep) if p]
    if CHECKOUT_SITES.is_dir():
        dirs.append(CHECKOUT_SITES)
    dirs.append(PACKAGED_SITES)
    return dirs


def find_site(name: str, base_dir: Path) -> Path | None:
    """Resolve a site name, or a path to a .yaml file relative to `base_dir`, to a file; None if
    there is none.  (The manifest's `site:` is relative to its folder; `--site` is made absolute
    from the working directory by the CLI.)"""
    if name.endswith((".yaml", ".yml")):
        try:
            candidate = (base_dir / Path(name).expanduser()).resolve()
        except (OSError, ValueError):  # e.g. a NUL byte in the name
            return None
        return candidate if candidate.is_file() else None
    if "/" in name or "\0" in name or name.startswith("."):
        return None
    for folder in site_dirs():
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


def available_sites() -> list[str]:
    """Names of the profiles in the lookup folders."""
    return sorted({p.stem for d in site_dirs() if d.is_dir() for p in d.glob("*.yaml")})


def load_site(path: Path) -> tuple[SiteProfile | None, list[str]]:
    """Parse and check a site profile; (profile, problems)."""
    try:
        located = load_located(path.read_text(encoding="utf-8"), str(path))
    except YamlProblem as err:
        return None, [err.message]
    except (OSError, UnicodeDecodeError) as err:
        return None, [f"{path}:1:1: cannot read site profile: {getattr(err, 'strerror', None) or err}"]
    problems: list[str] = []
    data = located.value
    if not isinstance(data, dict):
        return None, [f"{located.where(())}: a site profile must be a mapping"]
    for key in data:
        if key not in SITE_KEYS:
            problems.append(
                f"{located.where_key((key,))}: unknown key {key!r}; {_hint(key, SITE_KEYS)}"
                f"valid: {', '.join(SITE_KEYS)}"
            )
    for key in ("name", "description"):
        if key in data and (not isinstance(data[key], str) or any(c in data[key] for c in "\n\r\0")):
            problems.append(f"{located.where((key,))}: {key} must be a single-line string")
    targets = data.get("targets") or {}
    if not isinstance(targets, dict) or not targets:
        problems.append(f"{located.where(('targets',))}: targets must be a non-empty mapping")
        targets = {}
    problems += _check_options(data.get("defaults"), located, ("defaults",))
    problems += _check_options(data.get("campaign"), located, ("campaign",), gpu=False)
    problems += _check_options(data.get("gather"), located, ("gather",), gpu=False, resources=True)
    for target, options in targets.items():
        if not isinstance(target, str) or not TARGET_RE.match(target):  # what a manifest's targets can name
            problems.append(
                f"{located.where_key(('targets', target))}: target name {target!r} must match "
                "[a-z0-9][a-z0-9_-]{0,31} (lower case, as manifests name targets)"
            )
        problems += _check_options(options, located, ("targets", target), target=True)
    if problems:
        return None, problems
    profile = SiteProfile(
        name=str(data.get("name", path.stem)),
        description=str(data.get("description", "")),
        defaults=dict(data.get("defaults") or {}),
        gather=dict(data.get("gather") or {}),
        targets={str(k): dict(v or {}) for k, v in targets.items()},
        path=str(path),
        campaign=dict(data.get("campaign") or {}),
    )
    return profile, []


def _hint(word: Any, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _check_options(
    options: Any,
    located: Located,
    path: tuple[str, ...],
    gpu: bool = True,
    resources: bool = False,
    target: bool = False,
) -> list[str]:
    """Problems of one section of sbatch options (`gpu`: gres/gpus allowed; `resources`: the
    gather job's time_min / cpus / mem_gb allowed; `target`: device / expect allowed)."""
    if options is None:
        return []
    if not isinstance(options, dict):
        return [f"{located.where(path)}: must be a mapping of sbatch options"]
    allowed = SBATCH_KEYS + (tuple(GATHER_RESOURCES) if resources else ()) + (TARGET_KEYS if target else ())
    problems = []
    for key, value in options.items():
        where = located.where(path + (key,))
        if target and key in TARGET_KEYS:
            problems += _check_target_key(key, value, options, located, path)
        elif key not in allowed:
            problems.append(
                f"{located.where_key(path + (key,))}: unknown sbatch option {key!r}; "
                f"{_hint(key, allowed)}valid: {', '.join(allowed)}"
            )
        elif key in GPU_KEYS and not gpu:
            problems.append(f"{where}: {path[0]} jobs get no GPU; remove {key} (GPUs are requested per target)")
        elif key in GATHER_RESOURCES:
            problems += _check_resource(key, value, where)
        elif key == "extra":
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                problems.append(f"{where}: extra must be a list of strings")
            else:
                problems += [
                    f"{where}: extra line {line!r} must be a long sbatch option like "
                    "'--exclude=node13' or '--exclusive'"
                    for line in value
                    if not LONG_OPTION.match(line)
                ]
        elif key == "gpus":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problems.append(f"{where}: gpus must be an integer >= 0")
        elif not isinstance(value, str) or not value or any(c in value for c in "\n\r\0"):
            problems.append(f"{where}: {key} must be a non-empty single-line string")
    return problems


def _check_resource(key: str, value: Any, where: str) -> list[str]:
    if key == "mem_gb":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            return [f"{where}: mem_gb must be a number > 0, got {value!r}"]
    elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return [f"{where}: {key} must be an integer >= 1, got {value!r}"]
    return []


def _check_target_key(
    key: str, value: Any, options: dict[str, Any], located: Located, path: tuple[str, ...]
) -> list[str]:
    """Problems of a target's `device` or `expect`."""
    where = located.where(path + (key,))
    if key == "device":
        if value not in DEVICE_KINDS:
            return [f"{where}: device must be one of {', '.join(DEVICE_KINDS)}, got {short(value)}"]
        return []
    if not isinstance(value, dict) or not value:
        return [f"{where}: expect must be a mapping with some of {', '.join(EXPECT_KEYS)}"]
    problems = []
    for name, item in value.items():
        at = located.where(path + (key, name))
        if name not in EXPECT_KEYS:
            problems.append(
                f"{located.where_key(path + (key, name))}: unknown expectation {name!r}; "
                f"{_hint(name, EXPECT_KEYS)}valid: {', '.join(EXPECT_KEYS)}"
            )
        elif name == "device_name":
            problems += _check_regex(item, at)
        elif name == "sm_count":
            if isinstance(item, bool) or not isinstance(item, int) or item < 1:
                problems.append(f"{at}: sm_count must be an integer >= 1, got {short(item)}")
            elif _kind(options) == "cpu":
                problems.append(
                    f"{at}: sm_count applies to CUDA devices; this target is a CPU target "
                    "(remove sm_count, or make it a GPU target with device: cuda)"
                )
        elif isinstance(item, bool) or not isinstance(item, (int, float)) or not 0 < item < math.inf:
            problems.append(f"{at}: memory_gb_min must be a number > 0, got {short(item)}")
    return problems


def _check_regex(value: Any, where: str) -> list[str]:
    if not isinstance(value, str) or not value or any(c in value for c in "\n\r\0"):
        return [f"{where}: device_name must be a non-empty single-line regular expression, got {short(value)}"]
    try:
        re.compile(value)
    except re.error as err:
        return [f"{where}: device_name {value!r} is not a valid regular expression ({err})"]
    return []


def _kind(options: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """`cuda` or `cpu`: the section's `device`, else cuda when it (or defaults) requests GPUs."""
    if options.get("device") in DEVICE_KINDS:
        return str(options["device"])
    merged = {**(defaults or {}), **options}
    return "cuda" if any(k in merged for k in GPU_KEYS) else "cpu"


def target_device(site: SiteProfile, target: str, gpus: int) -> TargetDevice | None:
    """What a task of `target` asking `gpus` GPUs must land on (None for a name the profile does not
    list, e.g. the campaign-level target).  A target asking no GPU (`gpus: 0`) is a CPU target unless
    its section says `device: cuda`.  The packaged default profile's targets are checked in Slurm
    jobs only: under the local executor its names are labels of runs on this machine."""
    if target not in site.targets:
        return None
    section = site.targets[target]
    kind = _kind(section, site.defaults)
    if "device" not in section and gpus < 1:
        kind = "cpu"
    expect = dict(section.get("expect") or {})
    return TargetDevice(
        target=target,
        kind=kind,
        device_name=expect.get("device_name"),
        sm_count=expect.get("sm_count"),
        memory_gb_min=expect.get("memory_gb_min"),
        checked_locally=Path(site.path).resolve() != (PACKAGED_SITES / "default.yaml").resolve(),
    )
