"""Progress reporting: a bar on a terminal, plain periodic lines elsewhere (e.g. a Slurm log)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Count work done toward `total`; prints to `stream` (stderr by default)."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, every_s: float = 10.0) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.done = 0
        self.start = time.monotonic()
        self.last = 0.0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, n: int = 1) -> None:
        """Record `n` more units; redraw at most 10 times a second (tty) or every `every_s`."""
        if n <= 0:
            return
        self.done = min(self.done + n, self.total)
        now = time.monotonic()
        if self.done == self.total or now - self.last >= (0.1 if self.tty else self.every_s):
            self.last = now
            self._emit(final=self.done == self.total)

    def _emit(self, final: bool) -> None:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        if self.tty:
            width = 30
            filled = int(width * self.done / self.total)
            bar = "#" * filled + "-" * (width - filled)
            end = "\n" if final else ""
            self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.0f}s{end}")
        else:
            self.stream.write(
                f"{self.label}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%) "
                f"elapsed {elapsed:.0f}s eta {eta:.0f}s\n"
            )
        self.stream.flush()
