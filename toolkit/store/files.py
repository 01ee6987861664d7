"""Small crash-safe file operations: atomic writes and fsync of files and folders."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file or a folder entry to disk (folders: so a rename survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A sibling temporary name unique to this host and process."""
    return path.with_name(f".{path.name}~{socket.gethostname()}~{os.getpid()}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old or the new content, never a mix."""
    tmp = temp_name(path)
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temp(path: Path) -> bool:
    """A `.name~<host>~<pid>.tmp` file left by a dead process on this host."""
    if not path.name.endswith(".tmp"):
        return False
    parts = path.name[: -len(".tmp")].rsplit("~", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        return False
    return parts[1] == socket.gethostname() and not pid_alive(int(parts[2]))


def is_hdf5(path: Path) -> bool:
    """Whether `path` starts with the HDF5 signature (checked without opening it as a store)."""
    import h5py

    return bool(h5py.is_hdf5(path))
