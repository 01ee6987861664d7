"""What the toolkit knows about each model architecture, in one table (model_type → facts).

The numerics code finds modules by exact name and runs the model on `inputs_embeds`; whether that
means the same thing on an architecture is decided here, once, and checked by
tests/test_architectures.py on a tiny random model of each type (`toolkit.models.tiny_random`).
The preflight (`toolkit.launch.preflight`) reads a model's `model_type` (config.json, or the
packaged name) and calls `problems` so that an experiment an architecture cannot run, an
attention implementation it does not have, or an exp5 module it does not contain is refused at
`validate` / `plan` / `submit` with the exact missing piece — never a traceback in a job, never
a silently different number.  docs/models.md is the prose version of this table.

Cheap to import: no torch, no transformers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

_LLAMA_LAYER = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
_SPLIT_PROJECTIONS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
_INPUT_EMBEDDING = "the output of the embedding module (embed_tokens), which the first decoder layer receives"
EXP5 = "exp5.module_lipschitz"  # the one experiment whose params name modules of a layer
_SDPA = ("sdpa", "sdpa_math", "sdpa_efficient", "sdpa_flash")


@dataclass(frozen=True)
class Architecture:
    """Facts about one `model_type` as transformers implements it (checked for 5.x).

    layer_modules: the modules of a decoder layer that exp5 can treat as g(z) of one position
    (direct children, then projections), exact names relative to the layer; input_embedding: what
    "the last token's input embedding" (perturbed by exp1/2/3/4/6/7) is on this architecture;
    norm: what its RMSNorm computes; refused_attention: attn_implementation values it lacks, with
    the reason; refused: experiment name → why it cannot run here (empty: every experiment runs)."""

    model_type: str
    family: str
    layer_modules: tuple[str, ...]
    input_embedding: str = _INPUT_EMBEDDING
    norm: str = "x·rsqrt(mean(x²)+eps) in float32, cast back, times w (Llama)"
    final_norm: str = "model.norm"
    layers: str = "model.layers"
    traps: tuple[str, ...] = ()
    refused_attention: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", "Llama (Llama-2/3, SmolLM2)", _LLAMA_LAYER + _SPLIT_PROJECTIONS),
    "qwen2": Architecture(
        "qwen2",
        "Qwen2 / Qwen2.5",
        _LLAMA_LAYER + _SPLIT_PROJECTIONS,
        traps=("q/k/v projections have biases", "optional sliding window (use_sliding_window)"),
    ),
    "qwen3": Architecture(
        "qwen3",
        "Qwen3",
        _LLAMA_LAYER + _SPLIT_PROJECTIONS,
        traps=(
            "q and k are RMS-normalised per head (self_attn.q_norm / k_norm on [.., heads, head_dim]): "
            "true fp64 patches them like every RMSNorm; exp5 cannot take them as g(z) of one position "
            "(their input is not [1, T, D])",
        ),
    ),
    "mistral": Architecture(
        "mistral",
        "Mistral",
        _LLAMA_LAYER + _SPLIT_PROJECTIONS,
        traps=("sliding-window attention (config.sliding_window) in the mask and the KV cache",),
    ),
    "gemma2": Architecture(
        "gemma2",
        "Gemma-2",
        _LLAMA_LAYER + ("pre_feedforward_layernorm", "post_feedforward_layernorm") + _SPLIT_PROJECTIONS,
        input_embedding=(
            "the output of the embedding module, which already includes Gemma's scale "
            "sqrt(hidden_size) rounded to the model dtype (Gemma2TextScaledWordEmbedding): exactly the "
            "vector the first decoder layer receives, as on every other architecture"
        ),
        norm="x·rsqrt(mean(x²)+eps)·(1 + w) in float32, cast back (Gemma)",
        traps=(
            "final logits soft-capped: cap·tanh(logits/cap) (final_logit_softcapping); code that applies "
            "lm_head itself goes through toolkit.numerics.forward.head_logits",
            "attention scores soft-capped before the mask (attn_logit_softcapping); true fp64 keeps it",
            "sliding-window layers alternate with global ones",
            "four norms per layer: post_attention_layernorm normalises the attention output (a post-norm), "
            "pre_feedforward_layernorm is the MLP's input norm",
        ),
        refused_attention={
            name: "transformers has no SDPA path for Gemma-2 (SDPA cannot soft-cap attention scores); "
            "use attn_implementation: eager"
            for name in _SDPA
        },
    ),
    "phi3": Architecture(
        "phi3",
        "Phi-3",
        _LLAMA_LAYER + ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"),
        traps=(
            "q, k and v come from one fused projection (self_attn.qkv_proj), gate and up from another "
            "(mlp.gate_up_proj): there is no q_proj / gate_proj to name",
            "RoPE may cover only part of each head (partial_rotary_factor): true fp64 recomputes that part",
        ),
    ),
    "olmo2": Architecture(
        "olmo2",
        "OLMo-2",
        ("self_attn", "mlp", "post_attention_layernorm", "post_feedforward_layernorm")
        + _SPLIT_PROJECTIONS
        + ("self_attn.q_norm", "self_attn.k_norm"),
        norm="w·x·rsqrt(mean(x²)+eps), all in float32, then cast back (OLMo-2)",
        traps=(
            "no input_layernorm: the layer normalises the attention and MLP outputs "
            "(post_attention_layernorm, post_feedforward_layernorm) before adding them to the residual",
            "q and k are RMS-normalised over all heads (self_attn.q_norm / k_norm on [1, T, heads·head_dim])",
        ),
    ),
}


def known_types() -> str:
    """The model types in the table, for messages."""
    return ", ".join(ARCHITECTURES)


def model_type_of(source: str, revision: str | None = None) -> str | None:
    """The `model_type` of a model source without loading it: from the packaged table, the folder's
    config.json, or the offline hub cache; None when it cannot be read (the loader reports that)."""
    import json
    from pathlib import Path

    from toolkit.models.packaged import MODEL_TYPES

    if source in MODEL_TYPES:
        return MODEL_TYPES[source]
    config: str | Path | None = Path(source) / "config.json"
    if not Path(source).is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json", revision=revision)
        config = cached if isinstance(cached, str) else None
    try:
        value = json.loads(Path(config).read_text()).get("model_type") if config else None
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def problems(model_type: str, tasks: Sequence[tuple[str, str, str, Mapping[str, object]]]) -> list[tuple[str, str]]:
    """(experiment id, what is wrong and what to do) for each task this architecture cannot run.

    `tasks`: (experiment id, experiment name, attn_implementation, params) of every task that
    loads the model.  An unknown model_type refuses every such task: the experiments' meaning is
    only checked on the types in the table."""
    arch = ARCHITECTURES.get(model_type)
    found: list[tuple[str, str]] = []
    for exp_id, name, attention, params in tasks:
        if arch is None:
            found.append(
                (
                    exp_id,
                    f"{name} needs a model architecture the toolkit has checked; model_type {model_type!r} is not "
                    f"one of {known_types()} (docs/models.md says what adding one takes)",
                )
            )
            continue
        if name in arch.refused:
            found.append((exp_id, f"{name} cannot run on {arch.family}: {arch.refused[name]}"))
        if attention in arch.refused_attention:
            found.append(
                (exp_id, f"attn_implementation {attention!r} on {arch.family}: {arch.refused_attention[attention]}")
            )
        modules = params.get("modules") if name == EXP5 else None
        missing = [m for m in modules or () if m not in arch.layer_modules] if isinstance(modules, list | tuple) else []
        if missing:
            found.append(
                (
                    exp_id,
                    f"params.modules: {arch.family} decoder layers have no {', '.join(map(str, missing))}; "
                    f"name some of {', '.join(arch.layer_modules)}",
                )
            )
    return found
