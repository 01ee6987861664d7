"""Capture module outputs by exact module name (no substring matching)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

FINAL_NORM_NAMES = ("model.norm", "transformer.ln_f", "model.final_layernorm")


def final_norm_name(model: Any) -> str:
    """Exact name of the module whose output is the `lm_head` input."""
    names = dict(model.named_modules())
    for name in FINAL_NORM_NAMES:
        if name in names:
            return name
    raise ValueError(f"cannot find the final norm of {type(model).__name__}; tried {', '.join(FINAL_NORM_NAMES)}")


@contextlib.contextmanager
def capture(model: Any, names: list[str], last_position_only: bool = True) -> Iterator[dict[str, Any]]:
    """While active, `captured[name]` holds the latest output of each named module.

    Outputs that are tuples contribute their first element.  With `last_position_only`, only
    `[:, -1]` is kept (a view, detached).  Unknown names are a ValueError listing close names.
    """
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"no module named {missing}; names look like {list(modules)[1:6]}")
    captured: dict[str, Any] = {}
    handles = []
    for name in names:
        def hook(_module: Any, _inputs: Any, output: Any, name: str = name) -> None:
            value = output[0] if isinstance(output, tuple) else output
            captured[name] = (value[:, -1] if last_position_only else value).detach()
        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
