"""What an experiment's `run(ctx, params)` receives: the loaded model, inputs and its output group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from toolkit.manifest import Numerics
from toolkit.plan import Task
from toolkit.progress import Progress


class Inputs:
    """Read-only access to the upstream runs this task depends on (from store.h5)."""

    def __init__(self, store: Any, task_ids: tuple[str, ...]) -> None:
        self.store = store
        self.task_ids = task_ids

    def runs(self, experiment: str | None = None) -> list[Any]:
        """Upstream `RunView`s, optionally filtered by experiment name, in a stable order."""
        if self.store is None:
            return []
        return self.store.runs(experiment=experiment, ids=self.task_ids)


@dataclass
class RunContext:
    """Everything an experiment may touch; it never opens files or picks devices itself.

    `checkpoint` (a `toolkit.store.checkpoint.Checkpoint`) lets a long experiment save finished
    units of work, so a requeued task resumes instead of starting over.
    """

    task: Task
    model: Any
    tokenizer: Any
    device: Any
    numerics: Numerics
    prompts: tuple[str, ...]
    inputs: Inputs
    out: Any
    checkpoint: Any = None
    progress_stream: Any = None

    def progress(self, total: int, label: str | None = None) -> Progress:
        """A progress reporter for `total` units of this task's work."""
        return Progress(total, label or f"{self.task.task_id} {self.task.label()}", stream=self.progress_stream)
