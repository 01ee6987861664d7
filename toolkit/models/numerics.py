"""Process-wide numerics settings applied before a task runs, and the model-side ones.

* `apply` sets torch's global flags (TF32, deterministic algorithms, reduced-precision reductions
  of bf16/fp16 matmuls) and returns what is in effect, recorded in the task's provenance;
* `load_numerics` is what the loader is given: `sdpa_*` variants load the model with "sdpa";
* `check_runnable` fails a task at start, in one line, when this machine cannot run its attention
  (an SDPA backend without a kernel here, `flash_attention_2` without CUDA or `flash_attn`);
* `attention_context` forces the SDPA backend of `sdpa_math | sdpa_efficient | sdpa_flash` around
  the task's forwards (`torch.nn.attention.sdpa_kernel`): every experiment honours it;
* `cast_weights` makes LayerCast ("Give Me FP32 or Give Me Death?", arXiv 2506.09501): weights
  rounded to `weights_dtype` (round to nearest even) and held and computed in `dtype`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

from toolkit.errors import ModelError
from toolkit.manifest import Numerics

SDPA_BACKENDS = {"sdpa_math": "MATH", "sdpa_efficient": "EFFICIENT_ATTENTION", "sdpa_flash": "FLASH_ATTENTION"}


def apply(numerics: Numerics) -> dict[str, Any]:
    """Set torch's global flags for `numerics`; return the effective flags."""
    import torch

    if numerics.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = numerics.tf32
    torch.backends.cudnn.allow_tf32 = numerics.tf32
    torch.set_float32_matmul_precision("high" if numerics.tf32 else "highest")
    torch.use_deterministic_algorithms(numerics.deterministic, warn_only=True)
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = numerics.reduced_precision_reduction
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = numerics.reduced_precision_reduction
    return {
        "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "allow_bf16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        "allow_fp16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        "attn_implementation_loaded": load_numerics(numerics).attn_implementation,
        "sdpa_backend_forced": SDPA_BACKENDS.get(numerics.attn_implementation, "none"),
        "weights_rounded_to": numerics.weights_dtype or numerics.dtype,
    }


def load_numerics(numerics: Numerics) -> Numerics:
    """The numerics the loader is given: an `sdpa_*` variant loads as "sdpa" (its backend is forced
    by `attention_context`); weights load in `dtype` and are rounded by `cast_weights`."""
    if numerics.attn_implementation in SDPA_BACKENDS:
        return dataclasses.replace(numerics, attn_implementation="sdpa")
    return numerics


def model_key(numerics: Numerics) -> tuple[str, str, str]:
    """What tells loaded models apart: dtype, the attention loaded, the format the weights hold."""
    return (numerics.dtype, load_numerics(numerics).attn_implementation, numerics.weights_dtype or numerics.dtype)


def check_runnable(numerics: Numerics, device: Any) -> None:
    """`ModelError` (one line) when this machine cannot run the attention `numerics` asks for."""
    import importlib.util

    import torch

    name = numerics.attn_implementation
    where = f"on {device}" if device is not None else "here"
    if name == "flash_attention_2":
        if device is None or torch.device(device).type != "cuda":
            raise ModelError(f"attn_implementation flash_attention_2 needs a CUDA device; this task runs {where}")
        if importlib.util.find_spec("flash_attn") is None:
            raise ModelError("attn_implementation flash_attention_2 needs the flash_attn package, not installed here")
    if name not in SDPA_BACKENDS:
        return
    dtype = getattr(torch, numerics.dtype)
    shape = (1, 2, 4, 8)
    probe = torch.zeros(shape, dtype=dtype, device=device)
    mask = torch.ones((1, 1, 4, 4), dtype=torch.bool, device=device).tril()
    try:
        with attention_context(numerics):
            torch.nn.functional.scaled_dot_product_attention(probe, probe, probe, is_causal=True)
            torch.nn.functional.scaled_dot_product_attention(probe, probe, probe, attn_mask=mask)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"attn_implementation {name} (SDPA backend {SDPA_BACKENDS[name]}) cannot run {where} in "
            f"{numerics.dtype}: {reason}; choose another attn_implementation for this target"
        ) from None


@contextlib.contextmanager
def attention_context(numerics: Numerics) -> Iterator[None]:
    """While active, SDPA runs only the backend an `sdpa_*` variant names (no fallback); a no-op
    for the other attention implementations."""
    backend = SDPA_BACKENDS.get(numerics.attn_implementation)
    if backend is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, backend)):
        yield


def cast_weights(model: Any, numerics: Numerics) -> int:
    """Round every floating-point parameter of `model` to `numerics.weights_dtype` and back to its
    own dtype, in place (LayerCast); the number of parameters rounded (0 without weights_dtype)."""
    import torch

    wanted = numerics.weights_dtype
    if wanted is None or wanted == numerics.dtype:
        return 0
    target = getattr(torch, wanted)
    count = 0
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point():
                parameter.copy_(parameter.to(target).to(parameter.dtype))
                count += 1
    return count
