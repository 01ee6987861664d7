"""Matrix-free Jacobian products and top-k singular triplets of J = ∂f/∂x.

f is a function from one token's embedding x ∈ R^D to a hidden state in R^M (see
`toolkit.numerics.embedding_forward.make_f`).  `JacobianOperator` applies J (JVP, forward mode,
`torch.func.jvp`, or optionally reverse-over-reverse) and Jᵀ (VJP, reverse mode,
`torch.func.vjp`) to blocks of vectors without ever forming J; `top_singular` finds the k
largest singular values by subspace (block power) iteration on JᵀJ, and `rayleigh_ritz` the
triplets of J on a given subspace (the last step of both it and `toolkit.numerics.spectrum`).  Memory: O(b·(D+M)) for a
block of b vectors plus one forward's activations, instead of the M×D Jacobian plus the
activations of a backward vmapped over M cotangents.

Forward-mode AD through the model needs eager attention (torch's CPU SDPA kernel has no JVP
rule, and no double backward either): `JacobianOperator.for_model` refuses anything else with a
ValueError.

The full Jacobian (`full_jacobian`, torch.func.jacrev/jacfwd) is for small models and tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EAGER_IMPLEMENTATIONS = ("eager",)  # true_fp64 adds its float64 eager variant at import


def require_eager(model: Any) -> str:
    """The model's attention implementation; ValueError unless it supports forward-mode AD."""
    from toolkit.numerics import true_fp64

    name = getattr(model.config, "_attn_implementation", None)
    if name not in (*EAGER_IMPLEMENTATIONS, true_fp64.TRUE_FP64_ATTENTION):
        raise ValueError(
            f"JVPs through the model need attn_implementation 'eager', but this model uses {name!r} "
            "(forward-mode AD is not implemented for fused SDPA kernels); set "
            "`attn_implementation: eager` under `model:` (or in the experiment's `numerics:`)"
        )
    return str(name)


JVP_MODES = ("forward", "double_vjp")


class JacobianOperator:
    """J = ∂f/∂x at x, applied to blocks of vectors: `jvp(V)` = (J Vᵀ)ᵀ, `vjp(U)` = (Jᵀ Uᵀ)ᵀ.

    Blocks are [b, D] (tangents) and [b, M] (cotangents) in any float dtype on any device; they
    are cast to x's dtype and device for the products and the results returned in float64 on the
    CPU (the iteration's orthogonalisation runs there, in float64).  With `batched` a block is
    pushed through one vmapped product (faster; rounding differs from one-at-a-time products at
    the level of the model dtype), otherwise vector by vector.  The VJP reuses one forward pass.

    `jvp_mode`: `forward` — forward-mode AD, `torch.func.jvp` (one forward with tangents per
    product); `double_vjp` — J·v as the VJP of the linear map u ↦ Jᵀu (reverse over reverse),
    whose graph is built once and reused: on CPU about 3x faster per block than vmapped
    forward mode for SmolLM2, at the cost of keeping the backward's graph in memory.  Both agree
    to the model dtype's rounding; both need eager attention.
    """

    def __init__(self, f: Callable[[Any], Any], x: Any, batched: bool = True, jvp_mode: str = "forward") -> None:
        import torch

        if jvp_mode not in JVP_MODES:
            raise ValueError(f"jvp_mode must be one of {', '.join(JVP_MODES)}, got {jvp_mode!r}")
        self.f = f
        self.x = x.detach()
        self.batched = batched
        self.jvp_mode = jvp_mode
        with torch.no_grad():  # torch.func ignores an outer no_grad for x, but no graph is kept for the weights
            self.output, self._vjp_fn = torch.func.vjp(f, self.x)  # type: ignore[misc]  # no aux: two values
        self.output = self.output.detach()
        self.in_dim = self.x.numel()
        self.out_dim = self.output.numel()
        self.products = {"jvp": 0, "vjp": 0}
        self._transpose_vjp: Callable[[Any], Any] | None = None

    @classmethod
    def for_model(
        cls, model: Any, input_ids: Any, position: int = -1, batched: bool = True, jvp_mode: str = "forward"
    ) -> JacobianOperator:
        """J of the final-norm hidden state at `position` w.r.t. that position's input embedding."""
        from toolkit.numerics.embedding_forward import make_f

        require_eager(model)
        f, x = make_f(model, input_ids, position)
        return cls(f, x, batched=batched, jvp_mode=jvp_mode)

    def _single_jvp(self, tangent: Any) -> Any:
        import torch

        return torch.func.jvp(self.f, (self.x,), (tangent,))[1]

    def _double_vjp(self) -> Callable[[Any], Any]:
        import torch

        if self._transpose_vjp is None:
            anchor = torch.zeros_like(self.output)
            _, self._transpose_vjp = torch.func.vjp(lambda u: self._vjp_fn(u)[0], anchor)  # type: ignore[misc]
        return self._transpose_vjp

    def jvp(self, tangents: Any) -> Any:
        """[b, D] → [b, M]: row i is J·tangents[i] (float64)."""
        import torch

        block = tangents.reshape(-1, self.in_dim).to(device=self.x.device, dtype=self.x.dtype)
        self.products["jvp"] += block.shape[0]
        with torch.no_grad():
            if self.jvp_mode == "double_vjp":
                transpose = self._double_vjp()
                if self.batched and block.shape[0] > 1:
                    out = torch.func.vmap(transpose)(block)[0]
                else:
                    out = torch.stack([transpose(t)[0] for t in block])
            elif self.batched and block.shape[0] > 1:
                out = torch.func.vmap(self._single_jvp)(block)
            else:
                out = torch.stack([self._single_jvp(t) for t in block])
        return out.detach().double().cpu()

    def vjp(self, cotangents: Any) -> Any:
        """[b, M] → [b, D]: row i is Jᵀ·cotangents[i] (float64)."""
        import torch

        block = cotangents.reshape(-1, self.out_dim).to(device=self.x.device, dtype=self.output.dtype)
        self.products["vjp"] += block.shape[0]
        with torch.no_grad():
            if self.batched and block.shape[0] > 1:
                out = torch.func.vmap(self._vjp_fn)(block)[0]
            else:
                out = torch.stack([self._vjp_fn(u)[0] for u in block])
        return out.detach().double().cpu()


@dataclass
class TopSingular:
    """The k largest singular triplets of J, found matrix-free.

    J·right[i] = sigma[i]·left[i] holds by construction (final Rayleigh–Ritz step);
    residual[i] = ‖Jᵀ·left[i] − sigma[i]·right[i]‖ / sigma[i] measures how far the triplet is from
    an exact one.  Signs: the largest-|component| entry of each right vector is positive (the
    first such entry on ties), and the left vector follows.
    """

    sigma: Any  # [k] float64, descending
    right: Any  # [k, D] float64, orthonormal rows
    left: Any  # [k, M] float64
    residual: Any  # [k] float64
    residual_history: list[float] = field(default_factory=list)  # max Ritz residual per iteration
    iterations: int = 0
    block_size: int = 0
    products: dict[str, int] = field(default_factory=dict)
    solver: str = "subspace/full"  # how the basis was found / on which operator (toolkit.numerics.spectrum)
    solver_note: str = ""


def top_singular(
    op: JacobianOperator,
    k: int,
    iterations: int = 20,
    oversample: int = 2,
    seed: int = 0,
    tol: float | None = None,
    progress: Callable[[], None] | None = None,
) -> TopSingular:
    """Top-k singular values/vectors of J by subspace iteration on JᵀJ with a block of k+oversample.

    Each iteration applies JᵀJ to the block (b JVPs + b VJPs), takes Ritz values of the projected
    b×b matrix (their residuals go to `residual_history`) and re-orthonormalises by QR (float64).
    It stops after `iterations`, or earlier once the largest relative Ritz residual of the k
    wanted vectors is below `tol`.  A final Rayleigh–Ritz step on J itself (SVD of J·V) gives σ
    accurate to the square of the subspace error, then one VJP block measures the residuals.
    The start block is a seeded Gaussian, so the result is deterministic.
    """
    import torch

    if not 1 <= k <= op.in_dim:
        raise ValueError(f"k must be between 1 and the input dimension {op.in_dim}, got {k}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    block = min(k + max(oversample, 0), op.in_dim, op.out_dim)
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(op.in_dim, block, generator=generator, dtype=torch.float64))
    history: list[float] = []
    done = 0
    for _ in range(iterations):
        image = op.vjp(op.jvp(basis.T)).T  # [D, b] = JᵀJ·V
        projected = basis.T @ image
        values, vectors = torch.linalg.eigh((projected + projected.T) / 2)
        values, vectors = values.flip(0), vectors.flip(1)  # descending
        ritz = image @ vectors - (basis @ vectors) * values
        scale = values[:k].abs().clamp_min(torch.finfo(torch.float64).tiny)
        history.append(float((torch.linalg.vector_norm(ritz[:, :k], dim=0) / scale).max()))
        basis, _ = torch.linalg.qr(image)
        done += 1
        if progress is not None:
            progress()
        if tol is not None and history[-1] < tol:
            break
    result = rayleigh_ritz(op, basis, k)
    result.residual_history = history
    result.iterations = done
    result.block_size = block
    return result


def rayleigh_ritz(op: JacobianOperator, basis: Any, k: int, image: Any = None) -> TopSingular:
    """Top-k triplets of J restricted to span(basis) ([D, b] orthonormal columns, float64).

    The SVD of J·V (b JVPs, or `image` [M, b] when the caller has it) gives σ accurate to the
    square of the subspace error and the left vectors; right = V·(its right factor), signed by
    `_sign_convention`; then one VJP block measures each triplet's residual ‖Jᵀu − σv‖/σ
    against op's J.
    """
    import torch

    if image is None:
        image = op.jvp(basis.T).T  # [M, b] = J·V
    left, sigma, vt = torch.linalg.svd(image, full_matrices=False)
    right = (basis @ vt.T).T[:k]  # [k, D]
    left, sigma = left.T[:k], sigma[:k]
    signs = _sign_convention(right)
    right, left = right * signs[:, None], left * signs[:, None]
    back = op.vjp(left)  # Jᵀ·u_i
    residual = torch.linalg.vector_norm(back - sigma[:, None] * right, dim=1) / sigma.clamp_min(
        torch.finfo(torch.float64).tiny
    )
    return TopSingular(sigma=sigma, right=right, left=left, residual=residual, products=dict(op.products))


def _sign_convention(rows: Any) -> Any:
    """±1 per row so that each row's largest-|component| entry (first on ties) is positive."""
    import torch

    index = rows.abs().argmax(dim=1)
    picked = rows.gather(1, index[:, None])[:, 0]
    return torch.where(picked < 0, -1.0, 1.0).to(rows.dtype)


def full_jacobian(f: Callable[[Any], Any], x: Any, mode: str = "rev", chunk_size: int | None = None) -> Any:
    """The dense M×D Jacobian of f at x in x's dtype (torch.func.jacrev or jacfwd): small models only."""
    import torch

    with torch.no_grad():
        if mode == "rev":
            return torch.func.jacrev(f, chunk_size=chunk_size)(x.detach()).detach()
        if mode == "fwd":
            return torch.func.jacfwd(f, randomness="same")(x.detach()).detach()
    raise ValueError(f"mode must be 'rev' or 'fwd', got {mode!r}")


def svd_reference(jacobian: Any, k: int) -> TopSingular:
    """Top-k triplets of a dense Jacobian by a full float64 SVD, with the same sign convention."""
    import torch

    left, sigma, vt = torch.linalg.svd(jacobian.detach().double().cpu(), full_matrices=False)
    right, left, sigma = vt[:k], left.T[:k], sigma[:k]
    signs = _sign_convention(right)
    return TopSingular(
        sigma=sigma,
        right=right * signs[:, None],
        left=left * signs[:, None],
        residual=torch.zeros(k, dtype=torch.float64),
    )
