"""Fault injection for the crash-safety tests: `TOOLKIT_FAULT=<point>:<n>` makes this process
SIGKILL itself the n-th time it reaches `<point>` (points: `shard-publish`, `gather-merge`,
`gather-commit` (the commit journal written, store.h5 not yet edited), `gather-apply` (after each
page written into store.h5), `generate-prompt` and `pdf-window` right after a unit's progress
checkpoint is saved).
Unset in normal use; costs one environment lookup per call."""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def checkpoint(point: str) -> None:
    """Die with SIGKILL here if TOOLKIT_FAULT asks for it (no cleanup, like a node failure)."""
    spec = os.environ.get("TOOLKIT_FAULT", "")
    if not spec.startswith(point + ":"):
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] == int(spec.split(":", 1)[1]):
        os.kill(os.getpid(), signal.SIGKILL)
