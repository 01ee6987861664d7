"""The device a task landed on, and whether it is the one its target promised.

A site profile's target says what it must land on (`device: cuda|cpu` and
`expect: {device_name: REGEX, sm_count: N, memory_gb_min: M}`, parsed by
`toolkit.manifest.site`); the worker describes the real device here before it loads the model and
fails the task with one line when they differ.  The same description names the device in
provenance (`identity`): cuBLAS promises bitwise reproducibility only for the same architecture,
SM count and library versions, so those are what two runs are compared by.

On a CPU the device is described from the host: its name is `cpu (<processor>)` (the processor of
/proc/cpuinfo, else `platform.processor()`), so a `device_name` regex is matched against that text;
`memory_gb_min` compares the host's memory (MemTotal); `sm_count` is a CUDA property and a CPU has
none: a CPU target with `sm_count` is refused when the profile is read, and a task that meets
`sm_count` on a CPU fails with a line saying so.

Importing this module loads no torch: the manifest layer builds `TargetDevice` values from it.
"""

from __future__ import annotations

import os
import platform
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import ToolkitError

if TYPE_CHECKING:
    import torch

DEVICE_KINDS = ("cuda", "cpu")
EXPECT_KEYS = ("device_name", "sm_count", "memory_gb_min")


class DeviceMismatch(ToolkitError):
    """A task landed on a device its target does not accept (another card, or no GPU at all): the
    task fails and stores nothing.  Fix the site profile (its sbatch options or `expect`) or the
    node's GPU set-up, then submit again."""


@dataclass(frozen=True)
class TargetDevice:
    """What a site profile's target promises about the device its tasks land on.

    `kind` is `cuda` for a GPU target (its tasks never fall back to CPU) and `cpu` otherwise;
    `checked_locally` is False for the packaged default profile, whose target names are labels
    when the local executor runs every target on this machine (a laptop run of a two-target
    manifest); its targets are checked in Slurm jobs."""

    target: str
    kind: str = "cpu"
    device_name: str | None = None
    sm_count: int | None = None
    memory_gb_min: float | None = None
    checked_locally: bool = True

    @staticmethod
    def from_json(data: dict[str, Any] | None) -> TargetDevice | None:
        """The value `dataclasses.asdict` wrote into plan.json (None stays None)."""
        return None if data is None else TargetDevice(**data)


@dataclass(frozen=True)
class DeviceInfo:
    """The device a process really has: `name` is the CUDA device name (`NVIDIA H100 80GB HBM3`) or
    `cpu (<processor>)`; `sm_count` None on a CPU; `memory_gb` the GPU's or the host's memory."""

    kind: str
    name: str
    sm_count: int | None
    memory_gb: float | None
    node: str
    identity: dict[str, Any] = field(default_factory=dict)

    def describe(self, memory: bool = False) -> str:
        """e.g. `NVIDIA H100 80GB HBM3 (132 SMs) on node gpu017`, `cpu (AMD EPYC) on node x`."""
        extra = [f"{self.sm_count} SMs"] if self.sm_count is not None else []
        if memory:
            extra.append(f"{self.memory_gb} GB" if self.memory_gb is not None else "memory unknown")
        details = f" ({', '.join(extra)})" if extra else ""
        return f"{self.name}{details} on node {self.node}"


def observe(device: torch.device | str) -> DeviceInfo:
    """Describe the device `device` (a torch device, or `cpu`/`cuda[:i]`) of this process."""
    import torch

    device = torch.device(device)
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device.index or 0)
        return DeviceInfo(
            "cuda",
            props.name,
            props.multi_processor_count,
            round(props.total_memory / 2**30, 1),
            node,
            identity(device),
        )
    return DeviceInfo("cpu", f"cpu ({processor_name()})", None, host_memory_gb(), node, identity(device))


def check(target: TargetDevice | None, info: DeviceInfo, model_device: str = "auto") -> None:
    """Raise `DeviceMismatch` (one line: the target, what it expects, the device it got) when the
    device is not what the target promised; nothing for a target that promises nothing."""
    if target is None:
        return
    name = target.target
    if target.kind == "cuda" and info.kind != "cuda":
        why = "sees no CUDA device" if model_device == "auto" else f"runs on model.device {model_device!r}"
        raise DeviceMismatch(
            f"target {name} is a GPU target but this process {why} "
            f"({_visible()}): landed on "
            f"{info.describe()}; a GPU target never falls back to CPU: fix the job's GPU (driver, "
            "container GPU set-up, gres) or declare the target `device: cpu` in the site profile"
        )
    if target.device_name is not None and not re.search(target.device_name, info.name):
        raise DeviceMismatch(f"target {name} expects device_name /{target.device_name}/, landed on {info.describe()}")
    if target.sm_count is not None and info.sm_count != target.sm_count:
        if info.sm_count is None:
            raise DeviceMismatch(
                f"target {name} expects sm_count {target.sm_count}, landed on {info.describe()}, which has "
                "no SMs (sm_count applies to CUDA devices)"
            )
        raise DeviceMismatch(f"target {name} expects sm_count {target.sm_count}, landed on {info.describe()}")
    if target.memory_gb_min is not None and (info.memory_gb is None or info.memory_gb < target.memory_gb_min):
        raise DeviceMismatch(
            f"target {name} expects memory_gb_min {target.memory_gb_min:g}, landed on {info.describe(memory=True)}"
        )


def _visible() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "CUDA_VISIBLE_DEVICES unset" if visible is None else f"CUDA_VISIBLE_DEVICES={visible!r}"


def applies_here(target: TargetDevice | None) -> bool:
    """Whether the target's promise is checked in this process: always in a Slurm job (the target
    placed it), and under the local executor unless the profile's names are labels there."""
    return target is not None and (target.checked_locally or "SLURM_JOB_ID" in os.environ)


def identity(device: torch.device | str) -> dict[str, Any]:
    """What makes two runs' kernels the same: on CUDA the SKU name, SM count, compute capability,
    driver, CUDA runtime, cuBLAS and torch versions; on a CPU the processor, torch and the BLAS
    torch was built with.  Unknown items are "unknown" (collecting never fails a task)."""
    import torch

    device = torch.device(device)
    out: dict[str, Any] = {"device": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device.index or 0)
        out.update(
            sku=props.name,
            sm_count=props.multi_processor_count,
            compute_capability=f"{props.major}.{props.minor}",
            driver=_nvidia_driver(),
            cuda=torch.version.cuda or "unknown",
            cublas=cublas_version(),
        )
    else:
        out.update(processor=processor_name(), blas=blas_name())
    return out


def processor_name() -> str:
    """The host's processor name (/proc/cpuinfo `model name`, else platform)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def host_memory_gb() -> float | None:
    """The host's memory (MemTotal) in GiB, one decimal; None where /proc/meminfo is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def blas_name() -> str:
    """The BLAS torch was built with (`BLAS_INFO` of torch.__config__, with MKL's version line)."""
    import torch

    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=([^,\s]+)", config)
    mkl = re.search(r"Math Kernel Library Version ([^\s]+)", config)
    name = blas.group(1) if blas else "unknown"
    return f"{name} {mkl.group(1)}" if name == "mkl" and mkl else name


def cublas_version() -> str:
    """cuBLAS version: the nvidia-cublas wheel's version, else `cublasGetProperty` of the loaded
    library, else "unknown"."""
    from importlib import metadata

    for dist in ("nvidia-cublas-cu12", "nvidia-cublas-cu11", "nvidia-cublas"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    import ctypes

    for lib in ("libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"):
        try:
            cublas = ctypes.CDLL(lib)
        except OSError:
            continue
        parts = []
        for prop in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
            value = ctypes.c_int()
            if cublas.cublasGetProperty(prop, ctypes.byref(value)) != 0:
                return "unknown"
            parts.append(str(value.value))
        return ".".join(parts)
    return "unknown"


def _nvidia_driver() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else "unknown"
