"""Turn a site profile, a target and task resources into sbatch options (pure; no Slurm needed)."""

from __future__ import annotations

from typing import Any

from toolkit.manifest import Resources, SiteProfile
from toolkit.manifest.site import GATHER_RESOURCES
from toolkit.plan import ANY_TARGET

ORDER = ("partition", "account", "qos", "constraint", "gres", "gpus")


def sbatch_options(site: SiteProfile, target: str, resources: Resources, gather: bool = False) -> dict[str, Any]:
    """Ordered sbatch options (`--key=value` without dashes) plus `extra` raw lines.

    A target's task array: `defaults` + `targets.<target>`; a campaign-level task (target `any`):
    `defaults` + `campaign` (the `gather` section when the profile has none), never a GPU; the
    gather job: `defaults` + `gather`, with the gather's own time_min / cpus / mem_gb."""
    base = dict(site.defaults)
    override = job_section(site, target, gather)
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
    if gather:
        limits = {**GATHER_RESOURCES, **{k: v for k, v in site.gather.items() if k in GATHER_RESOURCES}}
        out["time"], out["cpus-per-task"], out["mem"] = limits["time_min"], limits["cpus"], _mem(limits["mem_gb"])
    else:
        out["time"], out["cpus-per-task"] = resources.time_min, resources.cpus
        out["mem"] = f"{int(resources.mem_gb * 1024)}M"
    out["extra"] = extra
    return out


def job_section(site: SiteProfile, target: str, gather: bool = False) -> dict[str, Any]:
    """The profile section that overrides `defaults` for one job (see `sbatch_options`)."""
    if gather:
        return site.gather
    if target == ANY_TARGET:
        return site.campaign if site.campaign else site.gather
    return site.targets[target]


def section_name(site: SiteProfile, target: str, gather: bool = False) -> str:
    """The name of that section in the profile: `gather`, `campaign` or `targets.<target>`."""
    if gather or (target == ANY_TARGET and not site.campaign):
        return "gather"
    return "campaign" if target == ANY_TARGET else f"targets.{target}"


def _mem(mem_gb: float) -> str:
    """`4` → `4G`, `2.5` → `2560M` (sbatch takes whole units)."""
    return f"{int(mem_gb)}G" if float(mem_gb).is_integer() else f"{int(mem_gb * 1024)}M"


def _gres_with_count(gres: str, count: int) -> str:
    """`gpu:a100:1` → `gpu:a100:<count>`; several comma-separated resources are left alone."""
    if "," in gres:
        return gres
    parts = gres.split(":")
    if parts[-1].isdigit():
        parts = parts[:-1]
    return ":".join(parts + [str(count)])


def gpu_target(site: SiteProfile, target: str, resources: Resources) -> bool:
    """Whether a task job of `target` is given GPUs by Slurm (a gres or gpus option survives):
    the container runtime exposes GPUs to exactly those jobs, never to CPU targets or gathers."""
    options = sbatch_options(site, target, resources)
    return "gres" in options or "gpus" in options
