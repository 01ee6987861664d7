"""Process-wide numerics flags (TF32, deterministic algorithms) applied before a task runs.

Returns what was set, so it is recorded in the task's provenance.
"""

from __future__ import annotations

import os
from typing import Any

from toolkit.manifest import Numerics


def apply(numerics: Numerics) -> dict[str, Any]:
    """Set torch's global flags for `numerics`; return the effective flags."""
    import torch

    if numerics.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = numerics.tf32
    torch.backends.cudnn.allow_tf32 = numerics.tf32
    torch.set_float32_matmul_precision("high" if numerics.tf32 else "highest")
    torch.use_deterministic_algorithms(numerics.deterministic, warn_only=True)
    return {
        "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "allow_bf16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        "allow_fp16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
    }
