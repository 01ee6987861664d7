"""Exclusive locks in a campaign folder that recover by themselves when their holder was killed.

A lock is a small JSON file (`host`, `pid`, the pid's start time, the Slurm job id if any, the
time it was taken) published with link(2), which is atomic and fails if the name exists — also
on NFS, where O_EXCL was not always — so a reader never sees a half-written lock.  While held, a
thread refreshes the file's mtime every `HEARTBEAT_S` seconds.

A lock is stale, and is taken over without asking anyone to delete files, when
* its holder ran on this host and that pid is gone or is another process now (start time), or
* its holder was a Slurm job (a gather job on a compute node) that Slurm reports finished, or is
  this very job in an earlier run (requeued after preemption), or
* neither applies (a holder on another host or in a container, whose pid cannot be checked from
  here, outside Slurm) and its mtime was not refreshed for `LEASE_S` seconds, measured against a
  file touched now in the same folder, so only the file server's clock counts.

Why not fcntl/flock: the kernel releases those on death, but on NFS they depend on a lock daemon
and on Lustre on the `flock` mount option (`localflock` makes them node-local), so a cluster's
shared filesystem cannot be relied on for them; link(2), rename(2) and mtimes it does provide.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from toolkit.errors import StoreError
from toolkit.store.files import pid_alive, temp_name

HEARTBEAT_S = 15.0
LEASE_S = 120.0

# Slurm states after which a job holds nothing (launch.slurm_state.TERMINAL, and PREEMPTED: a
# requeued job comes back as a new run of the same id, which re-takes its lock by job id).
ENDED_JOB_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "REVOKED",
    }
)


class LockBusy(StoreError):
    """Another live process holds the lock (exit 1: the command can be rerun once it is done)."""


def process_start(pid: int) -> str:
    """The start time of a process on this host (clock ticks after boot), '' where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def holder_text(info: dict[str, Any]) -> str:
    """`pid 12 on host vm since 2026-...Z` (and `, Slurm job 7`) for messages."""
    job = f", Slurm job {info['slurm_job_id']}" if info.get("slurm_job_id") else ""
    return f"pid {info.get('pid')} on host {info.get('host')} since {info.get('utc')}{job}"


class FileLock:
    """An exclusive lock file; use as a context manager.  `busy` formats the refusal message
    from the holder's description; with `wait` the lock is awaited instead of refused."""

    def __init__(self, path: Path, busy: str, wait: bool = False, poll_s: float = 0.5) -> None:
        self.path = Path(path)
        self.busy = busy
        self.wait = wait
        self.poll_s = poll_s
        self.waited = False
        self._inode: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> FileLock:
        while not self._try_take():
            info, stale = self._inspect()
            if stale:
                self._break(info)
                continue
            if not self.wait:
                raise LockBusy(self.busy.format(holder=holder_text(info or {}), path=self.path))
            self.waited = True
            time.sleep(self.poll_s)
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if _inode(self.path) == self._inode:  # still ours (not taken over after a long stall)
            self.path.unlink(missing_ok=True)

    def _try_take(self) -> bool:
        from toolkit.store.schema import utc_now

        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": process_start(os.getpid()),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "utc": utc_now(),
        }
        tmp = temp_name(self.path)
        try:
            tmp.write_text(json.dumps(me))
            os.link(tmp, self.path)
            self._inode = _inode(self.path)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            raise StoreError(
                f"{self.path}: cannot write the lock ({err.strerror}); free space on that "
                "filesystem or fix its permissions, then rerun the command"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)

    def _inspect(self) -> tuple[dict[str, Any] | None, bool]:
        """(holder, stale?) of the present lock file; (None, False) if it just went away."""
        try:
            info = _parse(self.path.read_text())
            info["inode"] = self.path.stat().st_ino
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None, False
        except (OSError, ValueError):  # written by no version of this code: not a live holder
            return {"inode": _inode(self.path)}, True
        job = str(info.get("slurm_job_id") or "")
        if job and job == os.environ.get("SLURM_JOB_ID"):  # an earlier run of this job, requeued
            return info, True
        if info.get("host") == socket.gethostname():  # the pid answers for itself
            return info, _ended_here(info)
        finished = slurm_job_finished(job) if job else None
        if finished is not None:  # Slurm answers for its job
            return info, finished
        return info, self._server_now() - mtime > LEASE_S

    def _server_now(self) -> float:
        probe = temp_name(self.path.with_name(self.path.name + ".probe"))
        probe.touch()
        try:
            return probe.stat().st_mtime
        finally:
            probe.unlink(missing_ok=True)

    def _break(self, info: dict[str, Any] | None) -> None:
        """Remove the stale lock judged by `info`, never a lock someone took in the meantime."""
        if info is None:
            return
        aside = temp_name(self.path.with_name(self.path.name + ".stale"))
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _inode(aside) != info.get("inode"):  # a fresh lock was taken after we looked: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return


def holder_gone(path: Path) -> bool:
    """Whether the lock at `path` is absent or was left by a process of this host that has ended: a
    cheap test for readers, which write nothing (a holder on another host counts as alive)."""
    try:
        info = _parse(path.read_text())
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    return info.get("host") == socket.gethostname() and _ended_here(info)


def _ended_here(info: dict[str, Any]) -> bool:
    """Whether the holder, a process of this host, has ended (its pid gone or reused)."""
    pid = int(info.get("pid", 0))
    return not pid_alive(pid) or bool(info.get("start") and process_start(pid) != info["start"])


def _parse(text: str) -> dict[str, Any]:
    """The holder recorded in a lock file; also the `host pid` text of locks written before these records"""
    words = text.split()
    if len(words) == 2 and words[1].isdigit():
        return {"host": words[0], "pid": int(words[1]), "utc": "?"}
    info = json.loads(text)
    if not isinstance(info, dict):
        raise ValueError("not a lock record")
    return dict(info)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def slurm_job_finished(job_id: str) -> bool | None:
    """Whether Slurm says this job is no longer pending or running; None if it cannot tell."""
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return True if "Invalid job id" in proc.stderr else None
    states = proc.stdout.split()
    return not states or all(s in ENDED_JOB_STATES for s in states)
