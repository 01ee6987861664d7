"""Make a float64 model compute in float64 everywhere (a true fp64 reference).

`model.to(torch.float64)` (`.double()`) is not an fp64 model in transformers 5.x Llama: three
places compute in float32 and cast back, so the model is only fp32-accurate where it matters:

* every `LlamaRMSNorm` casts its input to float32, normalises, and casts back (65 on the path of
  an 8B Llama, 61 in SmolLM2-135M) — including the final norm that produces f; the same holds
  for the per-head q/k norms of Qwen3, the q/k and post-norms of OLMo-2 (weight applied before
  the cast back) and Gemma-2's norms, which multiply by (1 + w) and keep `eps`;
* `LlamaRotaryEmbedding.forward` computes cos/sin from `inv_freq` in float32 (and `inv_freq`
  itself was computed in float32 at construction);
* `eager_attention_forward` takes the softmax in float32 and casts the weights back (Gemma-2's
  also soft-caps the scores, `softcap`, which the float64 copy applies the same way).

`true_fp64(model)` is a context manager that, for the duration of the block, replaces the
`forward` of each such module instance (found by exact name in `named_modules()`, class name
containing "RMSNorm" / "RotaryEmbedding") with one computing in the input dtype, and switches the
model's config to a registered float64 copy of eager attention.  Each patch is checked against the
original on random input (they must agree to float32 accuracy, so a model whose modules mean
something else is refused rather than silently changed).  It yields the list of what was patched,
for the record; leaving the block restores the model exactly.
"""

from __future__ import annotations

import contextlib
import inspect
import types
from collections.abc import Iterator
from typing import Any

TRUE_FP64_ATTENTION = "toolkit_eager_fp64"
_CHECK_RTOL = 1e-5  # patched vs original must agree to about float32 accuracy


def _rmsnorm_forward(self: Any, hidden_states: Any) -> Any:
    import torch

    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _gemma_rmsnorm_forward(self: Any, hidden_states: Any) -> Any:
    import torch

    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return (hidden_states * torch.rsqrt(variance + self.eps)) * (1.0 + self.weight)


def _norm_forward(name: str, module: Any) -> Any:
    """The float64 forward for an RMSNorm: Llama style (x·w, `variance_epsilon`) or Gemma style
    (x·(1 + w), `eps`, recognised from its source); ValueError for anything else."""
    if hasattr(module, "weight") and hasattr(module, "variance_epsilon"):
        return _rmsnorm_forward
    if hasattr(module, "weight") and hasattr(module, "eps") and "1.0 + self.weight" in inspect.getsource(type(module)):
        return _gemma_rmsnorm_forward
    raise ValueError(
        f"true_fp64: {name} ({type(module).__name__}) is neither a Llama-style RMSNorm (weight, variance_epsilon) "
        "nor a Gemma-style one (weight, eps, 1 + w)"
    )


def _rotary_forward_factory(inv_freq: Any, scaling: float) -> Any:
    def forward(self: Any, x: Any, position_ids: Any) -> Any:
        import torch

        freqs = position_ids[..., None].to(torch.float64) * inv_freq.to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * scaling).to(x.dtype), (emb.sin() * scaling).to(x.dtype)

    return forward


def eager_attention_fp64(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """transformers' eager attention with the softmax kept in the input dtype; a `softcap` keyword
    (Gemma-2) soft-caps the scores before the mask, as Gemma-2's eager attention does."""
    import torch

    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # same head order as transformers' repeat_kv
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    softcap = kwargs.get("softcap")
    if softcap is not None:
        weights = torch.tanh(weights / softcap) * softcap
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.nn.functional.softmax(weights, dim=-1)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(TRUE_FP64_ATTENTION, eager_attention_fp64)
    AttentionMaskInterface.register(TRUE_FP64_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


def _close(a: Any, b: Any) -> bool:
    import torch

    scale = float(torch.linalg.vector_norm(b.double())) or 1.0
    return float(torch.linalg.vector_norm((a - b).double())) <= _CHECK_RTOL * scale


def _rope_inv_freq(name: str, module: Any) -> tuple[Any, str]:
    """float64 inv_freq for a rotary module and a note on how it was obtained."""
    import torch

    rope_type = getattr(module, "rope_type", "default")
    if rope_type in ("dynamic", "longrope"):
        raise ValueError(
            f"true_fp64: {name} uses rope_type {rope_type!r}, which updates inv_freq while running; "
            "only static RoPE types are supported"
        )
    stored = module.inv_freq.detach().to(torch.float64)
    if rope_type != "default":
        return stored, f"inv_freq kept as stored (rope_type {rope_type!r}, computed in float32 at construction)"
    config = module.config
    base = config.rope_parameters["rope_theta"]
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(dim * config.rope_parameters.get("partial_rotary_factor", 1.0))  # Phi-3 family: part of each head
    exact = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if exact.shape != stored.shape or not _close(exact, stored):
        raise ValueError(f"true_fp64: recomputed inv_freq of {name} does not match the stored one; unknown RoPE")
    return exact.to(stored.device), "inv_freq recomputed in float64 (was float32)"


@contextlib.contextmanager
def true_fp64(model: Any, check: bool = True) -> Iterator[list[str]]:
    """Within the block, `model` (already float64) computes RMSNorm, RoPE and softmax in float64.

    Yields the list of patches (exact module names and what changed).  Raises ValueError if the
    model is not float64, or if `check` finds a patched module disagreeing with the original.
    """
    import torch

    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes != {torch.float64}:
        raise ValueError(
            f"true_fp64 needs a float64 model (dtype: float64), got parameters in {sorted(map(str, dtypes))}"
        )
    patched: list[str] = []
    undo: list[tuple[Any, bool, Any]] = []  # (module, had an instance forward, previous)
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device

    def install(module: Any, forward: Any) -> None:
        had = "forward" in module.__dict__
        undo.append((module, had, module.__dict__.get("forward")))
        module.forward = types.MethodType(forward, module)

    old_attention = model.config._attn_implementation
    try:
        for name, module in model.named_modules():
            cls = type(module).__name__
            if "RMSNorm" in cls:
                forward = _norm_forward(name, module)
                probe = torch.randn(3, module.weight.shape[-1], generator=generator, dtype=torch.float64).to(device)
                with torch.no_grad():
                    before = module(probe)
                    install(module, forward)
                    after = module(probe)
                if check and not _close(after, before):
                    raise ValueError(f"true_fp64: {name} ({cls}) does not behave like an RMSNorm; not patched")
                patched.append(f"{name} ({cls}): computes in the input dtype (was float32)")
            elif "RotaryEmbedding" in cls:
                source = inspect.getsource(type(module).forward)
                if ".float()" not in source and "torch.float" not in source:
                    continue  # does not upcast
                inv_freq, note = _rope_inv_freq(name, module)
                scaling = float(getattr(module, "attention_scaling", 1.0))
                probe = torch.zeros(1, 1, dtype=torch.float64, device=device)
                positions = torch.arange(64, device=device)[None]
                with torch.no_grad():
                    before = module(probe, positions)
                    install(module, _rotary_forward_factory(inv_freq, scaling))
                    after = module(probe, positions)
                if check and not all(_close(a, b) for a, b in zip(after, before)):
                    raise ValueError(f"true_fp64: {name} ({cls}) does not behave like Llama RoPE; not patched")
                patched.append(f"{name} ({cls}): cos/sin computed in float64, {note}")
        if old_attention != "eager":
            raise ValueError(f"true_fp64 needs attn_implementation 'eager', got {old_attention!r}")
        _register_attention()
        model.config._attn_implementation = TRUE_FP64_ATTENTION
        patched.append(f"attention: {TRUE_FP64_ATTENTION} (eager with the softmax in float64; was float32)")
        yield patched
    finally:
        model.config._attn_implementation = old_attention
        for module, had, previous in reversed(undo):
            if had:
                module.forward = previous
            else:
                del module.forward
