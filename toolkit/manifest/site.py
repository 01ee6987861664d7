"""Site profiles (`slurm/sites/*.yaml`): how a cluster names its GPUs, as sbatch options."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from toolkit.manifest.located import YamlProblem, load_located
from toolkit.manifest.model import SiteProfile

SBATCH_KEYS = ("partition", "account", "qos", "constraint", "gres", "gpus", "extra")
LONG_OPTION = re.compile(r"^--[a-z][a-z0-9-]*(=[^\n\r\0]+)?$")
SITE_KEYS = ("name", "description", "defaults", "gather", "targets")


def site_dirs() -> list[Path]:
    """Where named profiles are looked up: $TOOLKIT_SITES (os.pathsep list), then the repo's."""
    dirs = [Path(p) for p in os.environ.get("TOOLKIT_SITES", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[2] / "slurm" / "sites")
    return dirs


def find_site(name: str, manifest_dir: Path) -> Path | None:
    """Resolve a site name (or a path to a .yaml file) to a file, or None."""
    if name.endswith((".yaml", ".yml")):
        try:
            candidate = (manifest_dir / name).resolve()
        except (OSError, ValueError):  # e.g. a NUL byte in the name
            return None
        return candidate if candidate.is_file() else None
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
            problems.append(f"{located.where_key((key,))}: unknown key {key!r}; valid: {', '.join(SITE_KEYS)}")
    targets = data.get("targets") or {}
    if not isinstance(targets, dict) or not targets:
        problems.append(f"{located.where(('targets',))}: targets must be a non-empty mapping")
        targets = {}
    for section, options in [("defaults", data.get("defaults")), ("gather", data.get("gather"))] + [
        (f"targets.{t}", o) for t, o in targets.items()
    ]:
        problems += _check_options(options, located, tuple(section.split(".", 1)))
    if problems:
        return None, problems
    profile = SiteProfile(
        name=str(data.get("name", path.stem)),
        description=str(data.get("description", "")),
        defaults=dict(data.get("defaults") or {}),
        gather=dict(data.get("gather") or {}),
        targets={str(k): dict(v or {}) for k, v in targets.items()},
        path=str(path),
    )
    return profile, []


def _check_options(options: Any, located: Any, path: tuple[str, ...]) -> list[str]:
    if options is None:
        return []
    if not isinstance(options, dict):
        return [f"{located.where(path)}: must be a mapping of sbatch options"]
    problems = []
    for key, value in options.items():
        where = located.where(path + (key,))
        if key not in SBATCH_KEYS:
            problems.append(f"{where}: unknown sbatch option {key!r}; valid: {', '.join(SBATCH_KEYS)}")
        elif key == "extra":
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                problems.append(f"{where}: extra must be a list of strings")
            else:
                problems += [f"{where}: extra line {line!r} must be a long sbatch option like "
                             "'--exclude=node13' or '--exclusive'" for line in value if not LONG_OPTION.match(line)]
        elif key == "gpus":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problems.append(f"{where}: gpus must be an integer >= 0")
        elif not isinstance(value, str) or not value or any(c in value for c in "\n\r\0"):
            problems.append(f"{where}: {key} must be a non-empty single-line string")
    return problems
