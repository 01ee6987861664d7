"""Value rules shared by the manifest's checkers (top level and experiment entries): the name
pattern, the numerics choices and the did-you-mean hint, defined once so neither checker module
has to import the other for them."""

from __future__ import annotations

import difflib
import re
from typing import Any

from toolkit.manifest.model import (
    ATTN_IMPLEMENTATIONS,
    BATCH_FILLS,
    DTYPES,
    EXACT_IN,
    LOGITS_PATHS,
    PADDING_SIDES,
    Numerics,
)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

NUMERIC_CHOICES: dict[str, tuple[Any, ...]] = {
    "dtype": DTYPES,
    "attn_implementation": ATTN_IMPLEMENTATIONS,
    "kv_cache": (True, False),
    "tf32": (True, False),
    "deterministic": (True, False),
    "batch_fill": BATCH_FILLS,
    "padding_side": PADDING_SIDES,
    "logits_path": LOGITS_PATHS,
    "weights_dtype": (None, *DTYPES),
    "reduced_precision_reduction": (True, False),
}
# Integer numerics keys: the smallest value allowed and the largest (a batch beyond it is a typo).
NUMERIC_INTS: dict[str, tuple[int, int]] = {"batch_size": (1, 4096), "batch_position": (0, 4095)}


def _spell(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def numeric_problem(key: str, value: Any) -> str | None:
    """Why `value` is not a valid value of numerics key `key` on its own (None: it is), with a
    did-you-mean for a misspelt choice."""
    if key in NUMERIC_INTS:
        low, high = NUMERIC_INTS[key]
        if type(value) is not int or not low <= value <= high:
            return f"must be an integer from {low} to {high}, got {_spell(value)!r}"
        return None
    choices = NUMERIC_CHOICES[key]
    if any(value is c or (type(value) is type(c) and value == c) for c in choices):
        return None
    hint = did_you_mean(str(value), [str(c) for c in choices if isinstance(c, str)])
    message = f"must be one of {', '.join(map(_spell, choices))}, got {_spell(value)!r}"
    return f"{message}; {hint.strip()}" if hint else message


def numerics_conflict(numerics: Numerics) -> tuple[str, str] | None:
    """(key, reason) when two numerics keys contradict each other, else None."""
    if numerics.batch_position >= numerics.batch_size:
        return (
            "batch_position",
            f"is {numerics.batch_position}, but batch_size is {numerics.batch_size}: "
            "the row must lie below batch_size (rows count from 0)",
        )
    weights = numerics.weights_dtype
    if weights is not None and weights not in EXACT_IN[numerics.dtype]:
        return (
            "weights_dtype",
            f"is {weights}, which dtype {numerics.dtype} does not hold exactly: "
            f"use one of {', '.join(EXACT_IN[numerics.dtype])} (or null) for weights computed in {numerics.dtype}",
        )
    return None


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """'did you mean 'x'? ' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""
