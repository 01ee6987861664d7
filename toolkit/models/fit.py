"""Does a model fit on its device?  Checked before loading, so a model too large for the device is
refused with one line (its size, the device's memory, what to change) instead of an out-of-memory
crash deep inside a job.

The weights' size is read from the safetensors headers (8-byte little-endian header length, then a
JSON header with each tensor's dtype and shape), without reading the tensors: floating tensors are
counted at the manifest's dtype (the loader casts them), integer ones at their stored size.  A
`*.bin` checkpoint counts at its file size.  The memory the device offers:
- cuda: the free memory of the device (`torch.cuda.mem_get_info`), summed over every visible GPU
  with `device_map: auto`;
- cpu: the least of the host's available memory (`MemAvailable`), the cgroup's limit less its usage
  (v2 `memory.max`, v1 `memory.limit_in_bytes`: what Slurm and container runtimes enforce), the
  address-space limit less the process's size (`RLIMIT_AS`, `ulimit -v`) and the Slurm job's
  memory (`SLURM_MEM_PER_NODE`, or `SLURM_MEM_PER_CPU` × `SLURM_CPUS_PER_TASK`) less the process's
  resident size.
Only the weights are compared: an experiment's working memory comes on top (docs/own_model.md).
"""

from __future__ import annotations

import json
import math
import os
import resource
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import ModelError
from toolkit.manifest import ModelSpec

if TYPE_CHECKING:
    import torch

GB = 1e9
ITEMSIZE = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
STORED_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
STORED_ITEMSIZE.update({"I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1})


def safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """The JSON header of a safetensors file: tensor name -> {dtype, shape, data_offsets}."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header: dict[str, dict[str, Any]] = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header


def weights_bytes(files: Sequence[Path], dtype: str) -> int:
    """Bytes the weights in `files` take once loaded in `dtype` (floating tensors cast to it)."""
    total = 0
    for path in files:
        if path.suffix != ".safetensors":
            total += path.stat().st_size
            continue
        for info in safetensors_header(path).values():
            stored = str(info["dtype"])
            numel: int = math.prod(info["shape"])
            total += numel * (ITEMSIZE[dtype] if stored in FLOAT_DTYPES else STORED_ITEMSIZE.get(stored, 8))
    return total


def available_bytes(device: torch.device, sharded: bool = False) -> tuple[int, str]:
    """(bytes free for weights on `device`, what limits it): see the module docstring."""
    if device.type == "cuda":
        import torch

        indices = range(torch.cuda.device_count()) if sharded else [device.index or 0]
        free = sum(torch.cuda.mem_get_info(i)[0] for i in indices)
        name = torch.cuda.get_device_name(device.index or 0)
        return free, f"free on {len(indices)} GPU(s)" if sharded else f"free on {name}"
    return host_available()


def host_available() -> tuple[int, str]:
    """(bytes this process may still use on the host, which limit that is)."""
    status = _proc_status()
    limits = [(_meminfo_available(), "available on the host (MemAvailable)")]
    cgroup = _cgroup_free()
    if cgroup is not None:
        limits.append((cgroup, "left under the cgroup's memory limit"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append((soft - status.get("VmSize", 0), "left under the address-space limit (RLIMIT_AS, ulimit -v)"))
    slurm = _slurm_mem()
    if slurm is not None:
        limits.append((slurm - status.get("VmRSS", 0), "left of the Slurm job's --mem"))
    free, why = min(limits)
    return max(free, 0), why


def check_fit(files: Sequence[Path], dtype: str, device: torch.device, sharded: bool = False) -> None:
    """ModelError (one line) unless the weights in `files` loaded in `dtype` fit in what `device` has free."""
    need = weights_bytes(files, dtype)
    free, why = available_bytes(device, sharded)
    if need <= free:
        return
    where = "the GPU targets' resources.gpus with device_map: auto" if device.type == "cuda" else "resources.mem_gb"
    raise ModelError(
        f"the model's weights need {need / GB:.2f} GB in {dtype} but {device.type} has {free / GB:.2f} GB "
        f"{why}; use a smaller dtype, more memory ({where}) or a smaller model"
    )


def _proc_status() -> dict[str, int]:
    """VmSize / VmRSS of this process in bytes (empty where /proc is missing)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmSize", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _cgroup_free() -> int | None:
    """The cgroup's memory limit less its usage (v2, else v1); None without a limit.  The cgroup's
    folder is looked for under its path in /proc/self/cgroup, then at the mount's root (inside a
    container, which sees its own cgroup there)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            root, names = Path("/sys/fs/cgroup"), ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            root, names = Path("/sys/fs/cgroup/memory"), ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        for folder in (root / path.lstrip("/"), root):
            free = _limit_less_usage(folder / names[0], folder / names[1])
            if free is not None:
                return free
    return None


def _limit_less_usage(limit_file: Path, usage_file: Path) -> int | None:
    try:
        limit = limit_file.read_text().strip()
        usage = int(usage_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if limit == "max" or int(limit) >= 1 << 60:  # no limit
        return None
    return int(limit) - usage


def _slurm_mem() -> int | None:
    """The Slurm job's memory in bytes (its --mem, or --mem-per-cpu × cpus), when inside a job."""
    try:
        if "SLURM_MEM_PER_NODE" in os.environ:
            return int(os.environ["SLURM_MEM_PER_NODE"]) << 20
        if "SLURM_MEM_PER_CPU" in os.environ:
            cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", "1"))
            return int(os.environ["SLURM_MEM_PER_CPU"]) * cpus << 20
    except ValueError:
        pass
    return None


def check_model_fits(spec: ModelSpec, dtype: str, packaged: bool = True) -> None:
    """`check_fit` for the model of `spec` on its device: a folder or cached hub id, and with
    `packaged` the packaged SmolLM2 (converted on first use); nothing to check for other packaged
    models (built in memory) or a hub id missing from the cache (the preflight reports it)."""
    from toolkit.models.identity import model_folder, weight_files
    from toolkit.models.loading import prepare_packaged, resolve_device

    folder = model_folder(spec)
    if folder is None and packaged and spec.source == "smollm2-135m":
        folder = prepare_packaged()
    if folder is None:
        return
    check_fit(weight_files(folder), dtype, resolve_device(spec.device), sharded=spec.device_map == "auto")
