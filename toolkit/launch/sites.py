"""Turn a site profile, a target and task resources into sbatch options (pure; no Slurm needed)."""

from __future__ import annotations

from typing import Any

from toolkit.manifest import Resources, SiteProfile
from toolkit.plan import ANY_TARGET

ORDER = ("partition", "account", "qos", "constraint", "gres", "gpus")


def sbatch_options(site: SiteProfile, target: str, resources: Resources, gather: bool = False) -> dict[str, Any]:
    """Ordered sbatch options (`--key=value` without dashes) plus `extra` raw lines."""
    base = dict(site.defaults)
    override = site.gather if gather else (site.targets[target] if target != ANY_TARGET else {})
    extra = list(base.pop("extra", [])) + list(override.get("extra", []))
    merged = {**base, **{k: v for k, v in override.items() if k != "extra"}}
    out: dict[str, Any] = {k: merged[k] for k in ORDER if k in merged}
    if gather or target == ANY_TARGET or resources.gpus == 0:
        out.pop("gres", None)
        out.pop("gpus", None)
    else:  # the manifest's gpus count wins over the count written in the site profile
        if "gres" in out:
            out["gres"] = _gres_with_count(str(out["gres"]), resources.gpus)
        if "gpus" in out:
            out["gpus"] = resources.gpus
    out["time"] = 30 if gather else resources.time_min
    out["cpus-per-task"] = 1 if gather else resources.cpus
    out["mem"] = "4G" if gather else f"{int(resources.mem_gb * 1024)}M"
    out["extra"] = extra
    return out


def _gres_with_count(gres: str, count: int) -> str:
    """`gpu:a100:1` → `gpu:a100:<count>`; several comma-separated resources are left alone."""
    if "," in gres:
        return gres
    parts = gres.split(":")
    if parts[-1].isdigit():
        parts = parts[:-1]
    return ":".join(parts + [str(count)])


def sbatch_lines(options: dict[str, Any]) -> list[str]:
    """The options as `#SBATCH` lines, in a stable order."""
    lines = [f"#SBATCH --{k}={v}" for k, v in options.items() if k != "extra"]
    return lines + [f"#SBATCH {line}" for line in options.get("extra", [])]


def gpu_target(site: SiteProfile, target: str, resources: Resources) -> bool:
    """Whether a task job of `target` is given GPUs by Slurm (a gres or gpus option survives):
    the container runtime exposes GPUs to exactly those jobs, never to CPU targets or gathers."""
    options = sbatch_options(site, target, resources)
    return "gres" in options or "gpus" in options
