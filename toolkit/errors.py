"""The error hierarchy: every failure a user can act on is a `ToolkitError` with a message that
says what is wrong and what to do.  The CLI maps `exit_code` to the process exit status."""

from __future__ import annotations


class ToolkitError(Exception):
    """Base class. `exit_code` 2 means bad input, 1 means a failure while running."""

    exit_code = 1


class ManifestError(ToolkitError):
    """The manifest is invalid; `problems` holds every located problem, one per line."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class UsageError(ToolkitError):
    """A command-line argument is wrong (missing file, bad option combination)."""

    exit_code = 2


class StoreError(ToolkitError):
    """A store or shard is missing, unreadable or inconsistent."""


class LaunchError(ToolkitError):
    """Submitting or running jobs failed."""


class ModelError(ToolkitError):
    """A model cannot be found or loaded offline."""

    exit_code = 2


class TaskFailed(ToolkitError):
    """One or more tasks of a campaign failed; their logs say why."""


class ContractError(ToolkitError):
    """An experiment broke its declared contract (read an experiment missing from its `READS`, wrote
    a dataset missing from its `STORES`): a bug in the experiment module, fixed in its declarations."""


class UpstreamError(ToolkitError, ValueError):
    """A downstream experiment found no usable upstream runs among its inputs (missing, too few, or
    incompatible numerics / prompts): fix the manifest's `needs` and sweeps.  Also a ValueError, as
    these checks raised before."""

    exit_code = 2
