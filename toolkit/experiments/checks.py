"""Shared pieces of the experiments' `Params.check()`: range checks with one wording everywhere.

Each helper appends a `(field, message)` pair to `problems` when the value is out of range (the
contract of `check()`, see exp2.lipschitz) and returns nothing, so a `check()` reads as a list of
rules.  The messages are part of the user interface (the CLI prints `params.<field>: <message>`
and tests assert them), so they are built here only, in the form "must be …, got <value>".
Comparisons are written as `not (value in range)`, so NaN is always reported.  `eps_grid` builds
the grid that `eps_range` checks, so both stay in one place.
"""

from __future__ import annotations

from typing import Any

Problems = list[tuple[str, str]]


def between(problems: Problems, name: str, value: float, lo: float, hi: float, unit: str = "") -> None:
    """`lo <= value <= hi`, else "must be between lo and hi[ unit], got value"."""
    if not lo <= value <= hi:
        problems.append((name, f"must be between {lo} and {hi}{unit}, got {value}"))


def above(problems: Problems, name: str, value: float, bound: float = 0) -> None:
    """`value > bound` (default: positive), else "must be > bound, got value"."""
    if not value > bound:
        problems.append((name, f"must be > {bound}, got {value}"))


def at_least(problems: Problems, name: str, value: float, bound: float = 0, note: str = "") -> None:
    """`value >= bound` (default: non-negative), else "must be >= bound[ note], got value"."""
    if not value >= bound:
        problems.append((name, f"must be >= {bound}{note}, got {value}"))


def subspace(
    problems: Problems,
    top_k: int,
    iterations: int,
    oversample: int,
    k_max: int = 64,
    names: tuple[str, str, str] = ("top_k", "iterations", "oversample"),
) -> None:
    """The settings of `toolkit.numerics.jacobian.top_singular`: number of singular triplets
    (1..k_max), subspace iterations (1..10000) and extra block columns (0..64)."""
    k_name, iterations_name, oversample_name = names
    between(problems, k_name, top_k, 1, k_max)
    between(problems, iterations_name, iterations, 1, 10_000)
    between(problems, oversample_name, oversample, 0, 64)


def eps_range(problems: Problems, eps_min: float, eps_max: float, eps_steps: int) -> None:
    """A geometric ε grid of eps_steps (1..1000) values from eps_min > 0 to eps_max >= eps_min;
    one step only when the two ends are equal."""
    above(problems, "eps_min", eps_min)
    if not eps_max >= eps_min:
        problems.append(("eps_max", f"must be >= eps_min ({eps_min}), got {eps_max}"))
    if not 1 <= eps_steps <= 1000:
        between(problems, "eps_steps", eps_steps, 1, 1000)
    elif eps_steps == 1 and eps_max != eps_min:
        problems.append(("eps_steps", "must be >= 2 when eps_max != eps_min"))


def eps_grid(eps_min: float, eps_max: float, eps_steps: int) -> Any:
    """The ascending geometric ε grid checked by `eps_range` (float64 array of eps_steps values)."""
    import numpy as np

    return np.geomspace(eps_min, eps_max, eps_steps) if eps_steps > 1 else np.array([eps_min])
