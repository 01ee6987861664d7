"""The common start of a task that takes Jacobian products through the model.

exp1.layer_svd, exp2.lipschitz, exp3.precision, exp5.module_lipschitz and exp6.equal_logits all
(1) refuse a model whose attention does not support forward-mode AD (`require_eager`, checked
before any work), (2) decide whether to compute in true float64 (`params.true_fp64` and the task's
dtype is float64, see `toolkit.numerics.true_fp64`), and (3) run their prompts inside the
true-fp64 patches, recording in the task's attrs what was patched (`true_fp64_patches`, JSON) and,
where the experiment records it, the attention implementation in force (`attention_during_run`).
exp6.token_flip reuses (3) with its own decision.  One place, so the stored record cannot drift.
`prompt_singular` is the per-prompt start of exp1 and exp2: tokenise, build the Jacobian operator at
the last token's embedding, take its top-k singular triplets (`toolkit.numerics.spectrum`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class _Numerics(Protocol):
    @property
    def dtype(self) -> str: ...


class _Attrs(Protocol):
    @property
    def attrs(self) -> MutableMapping[str, Any]: ...


class Session(Protocol):
    """What these helpers read of an experiment's run context (`toolkit.context.RunContext`, which
    this layer may not import, satisfies it): the model, tokenizer, device, numerics and output."""

    @property
    def model(self) -> PreTrainedModel: ...
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def numerics(self) -> _Numerics: ...
    @property
    def out(self) -> _Attrs: ...
    def encode(self, prompt: str) -> torch.Tensor: ...


@dataclass(frozen=True)
class JacobianSetup:
    """attention: the model's attention implementation at task start (an eager one);
    use_true_fp64: whether the task computes RMSNorm/RoPE/softmax in float64."""

    attention: str
    use_true_fp64: bool


def jacobian_setup(ctx: Session, true_fp64_wanted: bool) -> JacobianSetup:
    """Check the model supports JVPs (ValueError otherwise) and decide on true float64:
    only when asked for and the task's dtype is float64."""
    from toolkit.numerics.jacobian import require_eager

    attention = require_eager(ctx.model)
    return JacobianSetup(attention, bool(true_fp64_wanted and ctx.numerics.dtype == "float64"))


@contextlib.contextmanager
def model_arithmetic(ctx: Session, use_true_fp64: bool, attention: str | None = None) -> Iterator[list[str]]:
    """For the block: the model in true float64 if `use_true_fp64` (else unchanged); writes
    `true_fp64_patches` (JSON list of patched modules) to ctx.out.attrs and, when `attention` (the
    implementation at task start) is given, `attention_during_run`.  Yields the patch list."""
    import json

    from toolkit.numerics.true_fp64 import true_fp64

    manager: contextlib.AbstractContextManager[list[str]] = (
        true_fp64(ctx.model) if use_true_fp64 else contextlib.nullcontext([])
    )
    with manager as patches:
        ctx.out.attrs["true_fp64_patches"] = json.dumps(patches)
        if attention is not None:
            ctx.out.attrs["attention_during_run"] = (
                ctx.model.config._attn_implementation if use_true_fp64 else attention
            )
        yield patches


def prompt_singular(ctx: Session, prompt: str, p: Any, tick: Callable[[], None]) -> tuple[Any, Any, Any]:
    """(input_ids [1,T], JacobianOperator of f at the prompt's last-token embedding, top-k triplets):
    the first step of exp1 and exp2 per prompt.  p supplies top_k, iterations (the most Krylov
    steps), oversample, seed and jvp_mode; ValueError when top_k exceeds the embedding dimension;
    `tick` per Krylov step.  The triplets come from `toolkit.numerics.spectrum.top_singular_fast`
    (basis on the cheapest exact operator, σ and residuals from f itself); the operator returned
    is f's own, the one finite differences must use."""
    from toolkit.numerics.embedding_forward import prompt_embeddings
    from toolkit.numerics.spectrum import top_singular_fast

    ids = ctx.encode(prompt)
    dim = prompt_embeddings(ctx.model, ids[:, :1]).shape[-1]
    if p.top_k > dim:
        raise ValueError(f"top_k = {p.top_k} exceeds the embedding dimension {dim}")
    op, triplets = top_singular_fast(
        ctx.model,
        ids,
        p.top_k,
        max_steps=p.iterations,
        oversample=p.oversample,
        seed=p.seed,
        jvp_mode=p.jvp_mode,
        progress=tick,
    )
    return ids, op, triplets


def solver_attrs(triplets: Any) -> dict[str, Any]:
    """Per-prompt attrs that say how the triplets were found (`TopSingular`): solver
    (`exact|krylov|subspace` / `last_row|full`), why, Krylov steps, residual and product counts."""
    return {
        "solver": triplets.solver,
        "solver_note": triplets.solver_note,
        "iterations_done": triplets.iterations,
        "residual_max": float(triplets.residual.max()),
        "jvp_products": triplets.products.get("jvp", 0),
        "vjp_products": triplets.products.get("vjp", 0),
    }
