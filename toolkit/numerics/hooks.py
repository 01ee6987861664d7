"""Capture module outputs by exact module name (no substring matching)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

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


@contextlib.contextmanager
def capture_calls(model: Any, names: list[str]) -> Iterator[dict[str, dict[str, Any]]]:
    """While active, `calls[name]` holds the latest call of each named module (exact names).

    Each entry is {"args": tuple, "kwargs": dict, "output": first element of a tuple output}, all
    tensors detached (nothing is copied: the tensors are the ones the model passed).  Used to
    re-run one module as a function of its own input (`toolkit.numerics.modules`).  Unknown
    names are a ValueError, as in `capture`.
    """
    import torch

    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"no module named {missing}; names look like {list(modules)[1:6]}")

    def detach(value: Any) -> Any:
        return value.detach() if isinstance(value, torch.Tensor) else value

    calls: dict[str, dict[str, Any]] = {}
    handles = []
    for name in names:

        def pre(_module: Any, args: Any, kwargs: Any, name: str = name) -> None:
            calls[name] = {
                "args": tuple(detach(a) for a in args),
                "kwargs": {
                    k: (tuple(detach(t) for t in v) if isinstance(v, tuple) else detach(v)) for k, v in kwargs.items()
                },
            }

        def post(_module: Any, _args: Any, _kwargs: Any, output: Any, name: str = name) -> None:
            value = output[0] if isinstance(output, tuple) else output
            calls[name]["output"] = detach(value)

        handles.append(modules[name].register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(modules[name].register_forward_hook(post, with_kwargs=True))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()
