"""The validated, frozen form of a manifest: what the planner and the workers consume."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16", "float16", "float64")
# `sdpa_*` load the model with "sdpa" and force that SDPA backend around the task's forwards.
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "sdpa_math", "sdpa_efficient", "sdpa_flash", "flash_attention_2")
BATCH_FILLS = ("same", "others", "random")
PADDING_SIDES = ("left", "right")
# null: the experiment's own path (recorded in its attrs; exp4.generate: the last row only).
LOGITS_PATHS = (None, "last_row", "all_rows")
# The formats a compute dtype holds exactly: weights rounded to one of them keep their values when cast.
EXACT_IN = {
    "float64": ("float64", "float32", "bfloat16", "float16"),
    "float32": ("float32", "bfloat16", "float16"),
    "bfloat16": ("bfloat16",),
    "float16": ("float16",),
}
RUNTIMES = ("none", "apptainer", "docker", "podman")
# A target (GPU type) name, as manifests and site profiles write it: lower case, so that the one
# spelling a profile accepts is the one a manifest can name.
TARGET_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Numerics:
    """Every setting that changes rounding; part of a task's identity and always recorded."""

    dtype: str = "float32"
    attn_implementation: str = "eager"
    kv_cache: bool = True
    tf32: bool = False
    deterministic: bool = True
    # Batch composition (toolkit.numerics.batching): the prompt is row `batch_position` of
    # `batch_size` rows, the others filled by `batch_fill`, pads on `padding_side`.
    batch_size: int = 1
    batch_fill: str = "same"
    batch_position: int = 0
    padding_side: str = "left"
    logits_path: str | None = None
    # LayerCast: weights rounded to `weights_dtype`, computed in `dtype` (null: weights in `dtype`).
    weights_dtype: str | None = None
    # torch.backends.cuda.matmul.allow_{bf16,fp16}_reduced_precision_reduction (torch's default: on).
    reduced_precision_reduction: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The part of a task's identity (its id hash): the original keys always, the keys added
        since (batch, logits path, weights, reduction) only where they differ from their default,
        so a campaign planned before they existed keeps its task ids."""
        values = asdict(self)
        return {k: v for k, v in values.items() if k in IDENTITY_ALWAYS or v != _DEFAULTS[k]}

    def label(self) -> str:
        """Short human label, e.g. `bfloat16/eager/kv`, plus every non-default newer key."""
        extra = [f"{k}={v}" for k, v in self.identity().items() if k not in IDENTITY_ALWAYS]
        return "/".join([self.dtype, self.attn_implementation, "kv" if self.kv_cache else "full", *extra])


NUMERICS_FIELDS = tuple(Numerics.__dataclass_fields__)
IDENTITY_ALWAYS = ("dtype", "attn_implementation", "kv_cache", "tf32", "deterministic")
_DEFAULTS = asdict(Numerics())


@dataclass(frozen=True)
class ModelSpec:
    """Which weights to load: a packaged name, a local folder, or a hub id in the offline cache."""

    source: str
    revision: str | None = None
    device: str = "auto"
    # Apply the tokenizer's chat template to each prompt (one user message, generation prompt added).
    chat_template: bool = False
    # "auto": spread the weights over the task's GPUs with accelerate (null: the whole model on `device`).
    device_map: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain values; the keys added since the first release (chat_template,
        device_map) only where they differ from their default, so task ids planned before stay."""
        values = asdict(self)
        return {k: v for k, v in values.items() if k not in _MODEL_NEWER or v != _MODEL_NEWER[k]}


_MODEL_NEWER: dict[str, Any] = {"chat_template": False, "device_map": None}
DEVICE_MAPS = (None, "auto")


@dataclass(frozen=True)
class Resources:
    """Scheduler resources of one task (Slurm) — ignored by the local executor except `cpus`."""

    time_min: int = 60
    cpus: int = 4
    mem_gb: float = 16
    gpus: int = 1
    array_parallelism: int | None = None


GPU_MODES = ("auto", False)


@dataclass(frozen=True)
class Container:
    """Where tasks run: on the host (`none`) or inside an image (docs/containers.md).

    runtime     none | apptainer | docker | podman
    image       an image reference (docker, podman) or a SIF file, absolute (apptainer)
    network     keep the network inside (default: `--network none`; apptainer shares the host's)
    gpu         "auto": expose the GPUs to tasks of GPU targets; False: never
    extra_args  more options for the runtime, placed before the image (e.g. a --cgroup-parent)
    """

    runtime: str = "none"
    image: str | None = None
    network: bool = False
    gpu: str | bool = "auto"
    extra_args: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.runtime != "none"


@dataclass(frozen=True)
class SiteProfile:
    """How one cluster names its GPUs: target name → sbatch options.  `gather` (sbatch options
    plus its time_min / cpus / mem_gb) is the gather job between stages; `campaign` the options of
    campaign-level tasks (experiments run once per campaign, on no GPU target)."""

    name: str
    description: str
    defaults: dict[str, Any]
    gather: dict[str, Any]
    targets: dict[str, dict[str, Any]]
    path: str
    campaign: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentSpec:
    """One `experiments:` entry after validation."""

    name: str
    id: str
    params: Any  # the experiment's frozen Params instance (base values, before sweeps)
    raw_params: dict[str, Any]
    sweep: dict[str, tuple[Any, ...]]
    repeats: int
    needs: tuple[str, ...]
    targets: tuple[str, ...]
    numerics: Numerics
    resources: Resources


@dataclass(frozen=True)
class Manifest:
    """A whole validated manifest."""

    path: Path
    text: str
    sha256: str
    campaign: str
    output: Path
    model: ModelSpec
    prompts: tuple[str, ...]
    targets: tuple[str, ...]
    experiments: tuple[ExperimentSpec, ...]
    resources: Resources
    container: Container
    site: SiteProfile
    numerics: Numerics = field(default_factory=Numerics)

    def experiment(self, exp_id: str) -> ExperimentSpec:
        return next(e for e in self.experiments if e.id == exp_id)
