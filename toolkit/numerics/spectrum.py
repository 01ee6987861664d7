"""The top-k singular triplets of J = ∂f/∂x by the fastest exact route: `top_singular_fast`.

Two phases.  First a basis of b = k + oversample right vectors that spans J's top-k right
singular subspace is found on the cheapest operator available:

* `last_row` — the derivative of f through a one-token forward on the prefix KV cache, pinned
  to f's own bits (`toolkit.numerics.last_row`; about T times cheaper per product than f), used
  when its output equals f(x) bitwise, else `full` — f itself;
* `exact` solver — when the output dimension is at most `EXACT_MAX_DIM`: the dense Jacobian of that
  operator by reverse mode in vmapped chunks (M VJPs, large efficient matmuls), then a float64 SVD;
* `krylov` solver — otherwise: block Krylov (block Lanczos on JᵀJ with full reorthogonalisation),
  stopping when the largest relative eigen-residual of the k wanted Ritz pairs is below
  `KRYLOV_TOL` or after `max_steps` blocks of max(k + oversample, 2k + 4) vectors (wider blocks
  need fewer steps, and a step's cost is mostly per-call overhead): 5-7 blocks on SmolLM2, where
  subspace iteration needed 20; the top k + oversample Ritz vectors form the basis.  J·v by
  reverse over reverse (`BASIS_JVP_MODE`).  Measured on this CPU (SmolLM2, D = 576, 1 thread):
  Krylov 1.4 s, the dense last-row Jacobian 3.1 s — hence `EXACT_MAX_DIM`.

A basis from the one-token path is used only if J·V through it agrees with J·V through f to
`agreement_tolerance` (rounding of the model dtype); otherwise the basis is recomputed on f and the
note says by how much they differed.  Then the answer comes from f itself: a Rayleigh–Ritz step
on the faithful J (b JVPs of f, an SVD of J·V) gives σ and the left vectors, and k VJPs of f
measure each triplet's residual ‖Jᵀu − σv‖/σ — so a basis error δ moves σ by O(δ²), and the
residual proves the triplet against f.
Everything is deterministic (seeded start, no timing-based choice); which operator and solver ran
is returned in `TopSingular.solver`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from toolkit.numerics.jacobian import JacobianOperator, TopSingular, rayleigh_ritz

EXACT_MAX_DIM = 256  # at and below: the dense Jacobian (M VJPs in vmapped chunks) beats block Krylov on CPU
BASIS_JVP_MODE = "double_vjp"  # J·v in the basis phase: on CPU ~2x faster per Krylov step than forward mode
EXACT_CHUNK = 192  # cotangents per vmapped backward: bounds memory at b·D·(activations of one row)
KRYLOV_EXTRA = 4  # Krylov blocks of 2k + 4 (at least k + oversample): fewer, costlier steps win
KRYLOV_TOL = 1e-5  # relative eigen-residual of JᵀJ; the fp32 floor is ~1e-6, and σ errors are its square


def top_singular_fast(
    model: Any,
    input_ids: Any,
    k: int,
    max_steps: int = 20,
    oversample: int = 2,
    seed: int = 0,
    jvp_mode: str = "forward",
    progress: Callable[[], None] | None = None,
) -> tuple[JacobianOperator, TopSingular]:
    """(the faithful operator of f at the last token, its top-k triplets); see the module docstring.

    ValueError when k is outside 1..D or the model's attention has no forward-mode AD."""
    from toolkit.numerics.last_row import last_row_f

    op = JacobianOperator.for_model(model, input_ids, jvp_mode=jvp_mode)
    if not 1 <= k <= op.in_dim:
        raise ValueError(f"k must be between 1 and the input dimension {op.in_dim}, got {k}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    block = min(k + max(oversample, 0), op.in_dim, op.out_dim)
    cheap = last_row_f(model, input_ids, op.f, op.x)
    if cheap.g is not None:
        phase_op = JacobianOperator(cheap.g, op.x, jvp_mode=BASIS_JVP_MODE)
        solver, basis, history = _basis(phase_op, k, block, max_steps, seed, progress)
        image = op.jvp(basis.T).T  # J·V on f itself: Rayleigh–Ritz input and the agreement check
        disagreement = _relative_difference(phase_op.jvp(basis.T).T, image)
        if disagreement <= agreement_tolerance(op.x.dtype):
            return op, _finish(op, phase_op, basis, k, image, history, block, f"{solver}/last_row", cheap.reason)
        note = f"the one-token derivative differs from f's by {disagreement:.1e} (relative) on the basis"
    else:
        note = cheap.reason
    phase_op = JacobianOperator(op.f, op.x, jvp_mode=BASIS_JVP_MODE)
    solver, basis, history = _basis(phase_op, k, block, max_steps, seed, progress)
    return op, _finish(op, phase_op, basis, k, None, history, block, f"{solver}/full", note)


def agreement_tolerance(dtype: Any) -> float:
    """Largest relative difference between J·V through the one-token path and through f accepted as
    rounding: 2^10 unit roundoffs of the model dtype (measured on SmolLM2 fp32: ~2e-6 = 2^5 u)."""
    import torch

    return float(2**10 * torch.finfo(dtype).eps / 2)


def _relative_difference(a: Any, b: Any) -> float:
    import torch

    return float(torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b).clamp_min(torch.finfo(b.dtype).tiny))


def _basis(
    op: JacobianOperator, k: int, block: int, max_steps: int, seed: int, progress: Callable[[], None] | None
) -> tuple[str, Any, list[float]]:
    if op.out_dim <= EXACT_MAX_DIM:
        return "exact", exact_basis(op, block), []
    wide = min(max(block, 2 * k + KRYLOV_EXTRA), op.in_dim)
    basis, history = block_krylov(op, k, wide, max_steps, seed, progress)
    return "krylov", basis[:, :block], history


def _finish(
    op: JacobianOperator,
    phase_op: JacobianOperator,
    basis: Any,
    k: int,
    image: Any,
    history: list[float],
    block: int,
    solver: str,
    note: str,
) -> TopSingular:
    result = rayleigh_ritz(op, basis, k, image)
    result.residual_history = history
    result.iterations = len(history)
    result.block_size = block
    result.products = {name: op.products[name] + phase_op.products[name] for name in op.products}
    result.solver = solver
    result.solver_note = note
    return result


def exact_basis(op: JacobianOperator, block: int) -> Any:
    """[D, block] float64: the top right singular vectors of op's dense Jacobian (M VJPs, chunked)."""
    import torch

    with torch.no_grad():
        jacobian = torch.func.jacrev(op.f, chunk_size=EXACT_CHUNK)(op.x).detach()
    op.products["vjp"] += op.out_dim
    _, _, vt = torch.linalg.svd(jacobian.double().cpu(), full_matrices=False)
    return vt[:block].T.contiguous()


def block_krylov(
    op: JacobianOperator,
    k: int,
    block: int,
    max_steps: int,
    seed: int = 0,
    progress: Callable[[], None] | None = None,
) -> tuple[Any, list[float]]:
    """([D, block] float64 basis of the top Ritz vectors, largest relative Ritz residual per step).

    Block Lanczos on JᵀJ from a seeded Gaussian block of `block` columns: each step applies JᵀJ to
    the newest block (b JVPs + b VJPs), orthogonalises the result twice against every earlier block and takes Ritz
    pairs of the projected matrix over the whole Krylov basis.  Stops at `KRYLOV_TOL`, after
    `max_steps`, or when the basis would exceed D.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    newest, _ = torch.linalg.qr(torch.randn(op.in_dim, block, generator=generator, dtype=torch.float64))
    bases: list[Any] = []
    images: list[Any] = []
    history: list[float] = []
    vectors = newest
    for _ in range(max_steps):
        image = op.vjp(op.jvp(newest.T)).T  # [D, b] = JᵀJ·Q
        bases.append(newest)
        images.append(image)
        basis, applied = torch.cat(bases, dim=1), torch.cat(images, dim=1)
        projected = basis.T @ applied
        values, ritz = torch.linalg.eigh((projected + projected.T) / 2)
        values, ritz = values.flip(0), ritz.flip(1)
        residual = applied @ ritz[:, :k] - (basis @ ritz[:, :k]) * values[:k]
        scale = values[:k].abs().clamp_min(torch.finfo(torch.float64).tiny)
        history.append(float((torch.linalg.vector_norm(residual, dim=0) / scale).max()))
        vectors = basis @ ritz[:, :block]
        if progress is not None:
            progress()
        if history[-1] < KRYLOV_TOL or basis.shape[1] + block > op.in_dim:
            break
        fresh = image - basis @ (basis.T @ image)
        newest, _ = torch.linalg.qr(fresh - basis @ (basis.T @ fresh))
    return vectors, history
