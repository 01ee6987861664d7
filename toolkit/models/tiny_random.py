"""Tiny random models of every supported architecture, built locally and saved as model folders.

`tiny-random-<arch>` (arch: llama, qwen2, qwen3, mistral, gemma2, phi3, olmo2) is a 2-layer model
with hidden size 64, built from transformers' own config class for that architecture with the
packaged SmolLM2 tokenizer (vocab = len(tokenizer)) and weights drawn under a fixed seed (the
caller's global RNG is left as it was).  Nothing is downloaded.  `prepare(name)` writes it once as
a transformers folder (`save_pretrained` of model and tokenizer, fp32 safetensors) under
`cache_dir()/models/<name>-<hash>`, atomically (a temporary folder renamed), and a task loads it
from there through the same code path as a user's local folder.

Each config switches on the trap its architecture is known for, small enough to matter in tests:
Gemma-2 soft-caps logits and attention scores (caps near the tiny model's own logit sizes) and
alternates sliding-window layers; Mistral's sliding window (4 tokens) is shorter than the test
prompts plus generation; Phi-3 fuses qkv and gate/up projections; Qwen3 normalises q and k per
head; OLMo-2 normalises after attention and MLP (no input norm).  See docs/models.md.

The hash in the folder name covers the config arguments, the seed and the torch/transformers
versions (their initialisers define the weights), so a change of any of them makes a new folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit.errors import ModelError

PREFIX = "tiny-random-"
SEED = 0
# Shared by every architecture: 2 layers, hidden 64, 4 query heads over 2 key/value heads.
_COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}
# Per architecture: (transformers config class, model class, arguments on top of _COMMON).
ARCHITECTURES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"use_sliding_window": False}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16, "use_sliding_window": False}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 4}),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 4,
            "final_logit_softcapping": 0.5,
            "attn_logit_softcapping": 0.5,
        },
    ),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
}
NAMES: tuple[str, ...] = tuple(PREFIX + arch for arch in ARCHITECTURES)


def arch_of(name: str) -> str:
    """`tiny-random-gemma2` → `gemma2`; ModelError for a name that is not a tiny model."""
    arch = name[len(PREFIX) :] if name.startswith(PREFIX) else ""
    if arch not in ARCHITECTURES:
        raise ModelError(f"{name!r} is not a tiny random model ({', '.join(NAMES)})")
    return arch


def config_arguments(arch: str, tokenizer: Any) -> dict[str, Any]:
    """The keyword arguments of `arch`'s config class (token ids and vocabulary from `tokenizer`).

    No pad token: a padding index would zero that embedding row at initialisation (SmolLM2's pad
    is its end-of-text token), and tiny-random-llama's weights predate this table."""
    return {
        "vocab_size": len(tokenizer),
        **_COMMON,
        **ARCHITECTURES[arch][2],
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": None,
    }


def build(arch: str, tokenizer: Any) -> Any:
    """The seeded random model of `arch` in fp32 (the global RNG is restored afterwards)."""
    import torch
    import transformers

    config_name, model_name, _ = ARCHITECTURES[arch]
    config = getattr(transformers, config_name)(**config_arguments(arch, tokenizer))
    model_class: Callable[[Any], Any] = getattr(transformers, model_name)
    state = torch.random.get_rng_state()
    torch.manual_seed(SEED)
    try:
        return model_class(config)
    finally:
        torch.random.set_rng_state(state)


def folder_for(name: str, tokenizer: Any) -> Path:
    """Where `prepare(name)` keeps the folder: `<cache>/models/<name>-<hash of what defines it>`."""
    import torch
    import transformers

    from toolkit.models.loading import cache_dir

    arch = arch_of(name)
    defining = {
        "config": config_arguments(arch, tokenizer),
        "classes": ARCHITECTURES[arch][:2],
        "seed": SEED,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{name}-{digest}"


def prepare(name: str) -> Path:
    """The saved folder of tiny model `name` (config, fp32 safetensors, tokenizer), built on first use."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from toolkit.models.loading import prepare_packaged

    hf_logging.disable_progress_bar()  # the shard-writing bar only clutters logs

    arch = arch_of(name)
    tokenizer = AutoTokenizer.from_pretrained(str(prepare_packaged()))
    target = folder_for(name, tokenizer)
    if (target / "config.json").is_file():
        return target
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:  # a read-only cache: a container image, a shared cache without write access
        raise ModelError(
            f"{name} is not prepared in {target.parent} and it cannot be written there ({exc.strerror}); run "
            f"'toolkit model prepare {name}' where $TOOLKIT_CACHE is writable (the production image prepares "
            "every packaged model)"
        ) from exc
    try:
        build(arch, tokenizer).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another worker renamed its copy first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
