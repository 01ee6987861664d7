"""Value rules shared by the manifest's checkers (top level and experiment entries): the name
pattern, the numerics choices and the did-you-mean hint, defined once so neither checker module
has to import the other for them."""

from __future__ import annotations

import difflib
import re
from typing import Any

from toolkit.manifest.model import ATTN_IMPLEMENTATIONS, DTYPES

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

NUMERIC_CHOICES: dict[str, tuple[Any, ...]] = {
    "dtype": DTYPES,
    "attn_implementation": ATTN_IMPLEMENTATIONS,
    "kv_cache": (True, False),
    "tf32": (True, False),
    "deterministic": (True, False),
}


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """'did you mean 'x'? ' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""
