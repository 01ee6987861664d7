"""Ask Slurm about jobs: sacct states, MaxArraySize, and cancelling (thin wrappers on the CLIs)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping

from toolkit.errors import LaunchError

TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
}
FAILED = TERMINAL - {"COMPLETED"}
DEFAULT_MAX_ARRAY_SIZE = 1001


def _run(args: list[str], timeout: float = 60) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LaunchError(f"{args[0]} failed: {err}") from None
    if proc.returncode != 0:
        raise LaunchError(f"{' '.join(args[:2])} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def max_array_size() -> int:
    """The cluster's MaxArraySize (array indices must be below it)."""
    try:
        out = _run(["scontrol", "show", "config"])
    except LaunchError:
        return DEFAULT_MAX_ARRAY_SIZE
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


def job_states(
    job_ids: Iterable[str], elements: Mapping[str, Iterable[int]] | None = None
) -> dict[str, tuple[str, str]]:
    """`jobid[_index]` → (state, node list) for the given (array) job ids: sacct's records, updated
    with what slurmctld holds now (accounting lags by seconds: a just-started element can be
    missing from sacct).  An array element known to neither was cancelled before it started
    (Slurm keeps no record of it): with `elements` (array id → its indices) it is reported
    CANCELLED, provided slurmctld answered and the array has other records."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,NodeList", "-j", ",".join(ids)])
    states: dict[str, tuple[str, str]] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) >= 3:
            states[parts[0]] = (parts[1].split()[0] if parts[1] else "UNKNOWN", parts[2])
    live = _controller_states(ids)
    if live is None:
        return states
    states.update(live)
    for array_id, indices in (elements or {}).items():
        if any(job.startswith(f"{array_id}_") for job in states):
            for index in indices:
                if element_state(states, array_id, index)[0] == "UNKNOWN":
                    states[f"{array_id}_{index}"] = ("CANCELLED", "")
    return states


def _controller_states(ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """Every element slurmctld still holds (any state, pending ones one by one); None if no answer."""
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%N", "-j", ",".join(ids)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:  # all ids already purged from slurmctld (MinJobAge), or it is down
        return {} if "Invalid job id" in proc.stderr else None
    states: dict[str, tuple[str, str]] = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 3:
            states[parts[0]] = (parts[1] or "UNKNOWN", parts[2])
    return states


def element_state(states: dict[str, tuple[str, str]], array_id: str, index: int) -> tuple[str, str]:
    """State of one array element; a not-yet-started element shows as PENDING in a range line."""
    key = f"{array_id}_{index}"
    if key in states:
        return states[key]
    for job, value in states.items():
        match = re.fullmatch(rf"{array_id}_\[(.+?)(%\d+)?\]", job)
        if match and any(_in_range(index, part) for part in match.group(1).split(",")):
            return value
    return states.get(array_id, ("UNKNOWN", ""))


def _in_range(index: int, part: str) -> bool:
    low, _, high = part.partition("-")
    return int(low) <= index <= int(high or low)


def cancel(job_ids: Iterable[str]) -> None:
    """scancel the given jobs (already finished ones are ignored by Slurm)."""
    ids = sorted(set(job_ids))
    if ids:
        _run(["scancel", *ids])
