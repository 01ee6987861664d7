"""Search for a last-token input embedding at which the model's top-2 logits tie.

Two objectives (the upstream exp6 variants, `../shared/science/exp6_7_11_15.md` §1.2–1.3):

* `direct`    — g(x) = logit[p] − logit[q] of the CURRENT top-2 (p, q), re-selected every
                iteration, taken from the model's own `lm_head` output in the model dtype;
* `geometric` — g(x) = h(x)·w with h the final-norm hidden state at the last position (the
                `lm_head` input) and w = W[a] − W[b] the difference of the two unembedding rows
                of the INITIAL top-2 pair, fixed for the run.  w and the dot product are float64
                from the native values; Llama's `lm_head` has no bias (a biased head is refused).

Two optimisers on the squared objective g²:

* `newton` — the minimum-norm Gauss–Newton step that zeroes the linearised g,
             δ = −lr · g ∇g / ‖∇g‖², its norm capped at `max_step`;
* `adam`   — the upstream optimiser: Adam (lr, betas 0.9/0.999) on g² with the gradient clipped
             to norm 1.

Arithmetic (recorded as `ARITHMETIC`): x lives as a float64 master copy; each iteration rounds it
once to the model dtype (`.to(dtype)`, round to nearest even), runs the model on that native
value, and takes ∇g by autograd in the model dtype (converted exactly to float64).  Updates are
applied to the master in float64, so steps below the model dtype's spacing accumulate.

Every iterate is scored by the model's own `lm_head` gap of the tracked pair; the best one
(smallest |gap| among iterates where the pair is the top-2) is kept, never the last.  Because
rounding noise stalls any gradient method at a few ULPs of the logit, an optional *lattice
polish* follows: single-coordinate moves of x to the adjacent representable value, ordered by the
linear prediction of the gap they produce, accepted when |gap| shrinks, until the gap is exactly 0
or `polish_steps` forwards are spent.  Each move is a forward of the same path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

METHODS = ("direct", "geometric")
OPTIMIZERS = ("newton", "adam")
ARITHMETIC = (
    "float64 master copy of x; rounded once per iteration to the model dtype with .to(dtype) "
    "(round to nearest even); forward and autograd gradient in the model dtype; updates in float64; "
    "lattice polish moves one coordinate to its adjacent model-dtype value (torch.nextafter)"
)


@dataclass(frozen=True)
class SearchSettings:
    """How to search (see the module docstring)."""

    method: str = "direct"
    optimizer: str = "newton"
    iterations: int = 50
    lr: float = 1.0
    max_step: float = 1.0
    patience: int = 8
    polish_steps: int = 200
    tol_ulps: float = 0.0


@dataclass
class SearchResult:
    """The best iterate (native dtype) and the per-iteration trace (phase 0: gradient, 1: polish)."""

    x_best: Any
    pair: tuple[int, int]
    best_iteration: int
    iterations_done: int
    polish_tries: int = 0
    polish_accepted: int = 0
    trace: dict[str, list[Any]] = field(default_factory=dict)


class TieObjective:
    """Evaluates the model at a last-token embedding x: logits row, objective g and optionally ∇g."""

    def __init__(self, model: Any, embeds: Any, method: str, pair0: tuple[int, int]) -> None:
        import torch

        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        head = model.get_output_embeddings()
        if method == "geometric" and getattr(head, "bias", None) is not None:
            raise ValueError("the geometric tie needs an lm_head without bias (logit = h·W[i]); this one has a bias")
        self.model, self.embeds, self.method = model, embeds, method
        self.w = head.weight[pair0[0]].detach().double() - head.weight[pair0[1]].detach().double()
        self.dtype = embeds.dtype
        self._torch = torch

    def evaluate(
        self, x: Any, grad: bool, pair: tuple[int, int] | None = None, objective: str | None = None
    ) -> tuple[Any, float, Any, tuple[int, int]]:
        """(native logits row [V], g as float, ∇g float64 [D] or None, the pair (p, q) used).

        `pair` None selects the current top-2; `objective` overrides the method ("direct" =
        lm_head gap of the pair, "geometric" = h·w).
        """
        from toolkit.numerics.fpunits import with_row
        from toolkit.numerics.tie import top_two

        torch = self._torch
        kind = objective or self.method
        leaf = x.detach().clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out = self.model(
                inputs_embeds=with_row(self.embeds, leaf, -1),
                use_cache=False,
                logits_to_keep=1,
                output_hidden_states=kind == "geometric",
            )
            logits = out.logits[0, -1]
            used = pair if pair is not None else top_two(logits)
            if kind == "direct":
                value = logits[used[0]].double() - logits[used[1]].double()
            else:
                value = (out.hidden_states[-1][0, -1].double() * self.w).sum()
            gradient = torch.autograd.grad(value, leaf)[0].detach().double() if grad else None
        return logits.detach(), float(value.detach()), gradient, used


def search_tie(
    objective: TieObjective,
    x_init: Any,
    settings: SearchSettings,
    pair0: tuple[int, int],
    tick: Callable[[], None] = lambda: None,
) -> SearchResult:
    """Gradient phase then lattice polish; returns the best iterate and the full trace."""
    import torch

    trace: dict[str, list[Any]] = {
        k: [] for k in ("gap", "gap_ulps", "objective", "step", "phase", "pair", "pair_is_top2")
    }
    master = x_init.detach().double().clone()
    adam = None
    if settings.optimizer == "adam":
        master.requires_grad_(True)
        adam = torch.optim.Adam([master], lr=settings.lr, betas=(0.9, 0.999), eps=1e-8)
    best: dict[str, Any] = {
        "abs": float("inf"),
        "x": x_init.detach().clone(),
        "i": -1,
        "pair": pair0 if settings.method == "geometric" else None,
    }
    stale, done = 0, 0
    for i in range(settings.iterations):
        x = master.detach().to(x_init.dtype)
        pair = pair0 if settings.method == "geometric" else None
        logits, value, grad, used = objective.evaluate(x, True, pair)
        ok = _record(trace, logits, used, value, phase=0)
        done, stale = i + 1, stale + 1
        if ok and abs(trace["gap"][-1]) < best["abs"]:
            best.update(abs=abs(trace["gap"][-1]), x=x.clone(), i=i, pair=used)
            stale = 0
        tick()
        if ok and abs(trace["gap_ulps"][-1]) <= settings.tol_ulps or stale >= settings.patience:
            trace["step"].append(0.0)
            break
        trace["step"].append(_step(master, value, grad, settings, adam))
    if best["pair"] is None:  # the direct pair is always the top-2; geometric may never be
        best["pair"] = pair0
    result = SearchResult(
        x_best=best["x"], pair=tuple(best["pair"]), best_iteration=best["i"], iterations_done=done, trace=trace
    )
    if settings.polish_steps > 0 and best["i"] >= 0 and abs(trace["gap_ulps"][best["i"]]) > settings.tol_ulps:
        _polish(objective, result, settings, tick)
    return result


def _record(trace: dict[str, list[Any]], logits: Any, pair: tuple[int, int], value: float, phase: int) -> bool:
    """Append one trace entry (signed lm_head gap of the pair in order p, q); True if the pair is the top-2."""
    from toolkit.numerics.fpunits import ulp
    from toolkit.numerics.tie import gap, top_two

    signed = gap(logits, *pair)
    spacing = ulp(max(abs(float(logits[pair[0]])), abs(float(logits[pair[1]]))), logits.dtype)
    is_top = set(top_two(logits)) == set(pair)
    trace["gap"].append(signed)
    trace["gap_ulps"].append(signed / spacing)
    trace["objective"].append(value)
    trace["phase"].append(phase)
    trace["pair"].append(tuple(int(t) for t in pair))
    trace["pair_is_top2"].append(is_top)
    return is_top


def _step(master: Any, value: float, grad: Any, settings: SearchSettings, adam: Any) -> float:
    """One update of the float64 master copy; returns the step size taken (‖δ‖, or Adam's lr)."""
    import torch

    if adam is not None:
        loss_grad = 2.0 * value * grad
        norm = float(torch.linalg.vector_norm(loss_grad))
        master.grad = loss_grad / norm if norm > 1.0 else loss_grad
        adam.step()
        adam.zero_grad(set_to_none=True)
        return settings.lr
    norm2 = float(grad @ grad)
    if norm2 == 0.0 or value == 0.0:
        return 0.0
    delta = -settings.lr * value * grad / norm2
    size = float(torch.linalg.vector_norm(delta))
    if size > settings.max_step:
        delta, size = delta * (settings.max_step / size), settings.max_step
    with torch.no_grad():
        master.add_(delta)
    return size


def _polish(objective: TieObjective, result: SearchResult, settings: SearchSettings, tick: Callable[[], None]) -> None:
    """Greedy one-coordinate lattice moves on the lm_head gap of the best pair (module docstring)."""
    import torch

    x = result.x_best.clone()
    pair = result.pair
    _, gap_now, grad, _ = objective.evaluate(x, True, pair, objective="direct")
    inf = torch.full_like(x, float("inf"))
    moves = torch.stack([torch.nextafter(x, inf), torch.nextafter(x, -inf)])  # [2, D]
    predicted_change = (moves.double() - x.double()) * grad  # [2, D]
    tried = torch.zeros_like(predicted_change, dtype=torch.bool)
    for _ in range(settings.polish_steps):
        if abs(gap_now) == 0.0:
            break
        score = (gap_now + predicted_change).abs().masked_fill(tried, float("inf"))
        flat = int(torch.argmin(score))
        if not torch.isfinite(score.view(-1)[flat]):
            break
        sign, j = divmod(flat, x.numel())
        candidate = x.clone()
        candidate[j] = moves[sign, j]
        logits, value, _, _ = objective.evaluate(candidate, False, pair, objective="direct")
        ok = _record(result.trace, logits, pair, value, phase=1)
        result.trace["step"].append(abs(float(candidate[j].double() - x[j].double())))
        result.polish_tries += 1
        tick()
        if ok and abs(value) < abs(gap_now):
            x, gap_now = candidate, value
            result.polish_accepted += 1
            result.best_iteration = len(result.trace["gap"]) - 1
            column = torch.stack([torch.nextafter(x[j], inf[j]), torch.nextafter(x[j], -inf[j])])
            moves[:, j] = column
            predicted_change[:, j] = (column.double() - x[j].double()) * grad[j]
            tried.zero_()
            if abs(result.trace["gap_ulps"][-1]) <= settings.tol_ulps:
                break
        else:
            tried[sign, j] = True
    result.x_best = x
