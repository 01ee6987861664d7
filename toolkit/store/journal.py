"""Appending to store.h5 in place, so that a crash at any point leaves the old store or the new one.

Adding tasks to an HDF5 file writes the new objects past its end and edits a few metadata blocks
inside it (the superblock, the `/tasks` index, the root attributes).  `JournaledFile` is the file
object h5py writes through: bytes past the original end go straight to the file, edits inside it
are kept in memory, page by page.  `JournaledFile.commit` then makes the change durable in an order
no crash can tear — a redo journal, as databases keep:

1. before HDF5 writes anything, `store.h5.journal` says "pending, original length N";
2. the appended bytes are fsynced;
3. the journal is replaced (atomic rename) by "commit": the edited pages, the final length, a sha256;
4. the pages are written into store.h5, which is cut to its final length and fsynced;
5. the journal is removed.

`recover` (the gather runs it under its lock before anything else) finishes step 4 from a commit
journal, or cuts store.h5 back to N after a pending one.  Until then a pending journal leaves only
unreferenced bytes past the old end, which HDF5 ignores: the old store stays readable throughout.
A commit journal exists for the milliseconds of step 4, or after a crash inside them; readers wait
for it to go (`wait_settled`) rather than read half-applied pages.

So a gather costs the new data, not a copy of the whole store.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from pathlib import Path

from toolkit import faults
from toolkit.errors import StoreError
from toolkit.store.files import fsync_path, temp_name

PAGE = 4096
MAGIC = b"toolkit store journal 1\n"
_HEADER = struct.Struct("<cQQQQ")  # kind, original length, final length, zeroed from, page count
_INDEX = struct.Struct("<Q")
PENDING, COMMIT = b"P", b"C"
_CHUNK = 1 << 20  # bytes zeroed per write when a cut is applied


def journal_path(store: Path) -> Path:
    """The journal beside a store: `store.h5` → `store.h5.journal`."""
    return store.with_name(store.name + ".journal")


class JournaledFile:
    """A writable file object for `h5py.File(obj, "r+")` that never overwrites the file's original
    bytes before `commit`: edits below the original length stay in memory pages."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.journal = journal_path(self.path)
        if self.journal.exists():
            raise StoreError(f"{self.journal}: an earlier gather was interrupted; run toolkit gather to finish it")
        self._fd = os.open(self.path, os.O_RDWR)
        self._base = os.fstat(self._fd).st_size
        self._size = self._base
        self._zero_from = self._base  # original bytes from here on read as zeros (the file was cut)
        self._pages: dict[int, bytearray] = {}
        self._pos = 0
        self._committed = False
        try:
            _write_journal(self.journal, PENDING, self._base, self._base, self._base, {})
        except BaseException:
            os.close(self._fd)
            raise

    # -- the file protocol h5py's fileobj driver uses ------------------------------------------

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move the position (whence 0: from the start, 1: from here, 2: from the end)."""
        self._pos = offset + (0, self._pos, self._size)[whence]
        return self._pos

    def tell(self) -> int:
        """The position."""
        return self._pos

    def readinto(self, buffer: memoryview | bytearray) -> int:
        """Read at the position: the file's bytes, overlaid by the pages edited in memory."""
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._size - self._pos))
        start, end = self._pos, self._pos + n
        self._pos = end
        if start >= self._base:  # appended bytes: straight from the file
            _pread_into(self._fd, view[:n], start)
            return n
        data = bytearray(n)
        _pread_into(self._fd, memoryview(data), start)
        if self._zero_from < self._base and end > self._zero_from:
            lo, hi = max(start, self._zero_from), min(end, self._base)
            data[lo - start : hi - start] = bytes(hi - lo)
        for page in range(start // PAGE, (min(end, self._base) - 1) // PAGE + 1):
            edited = self._pages.get(page)
            if edited is not None:
                lo, hi = max(start, page * PAGE), min(end, (page + 1) * PAGE, self._base)
                data[lo - start : hi - start] = edited[lo - page * PAGE : hi - page * PAGE]
        view[:n] = data
        return n

    def read(self, size: int = -1) -> bytes:
        """Read `size` bytes (all to the end if negative) at the position."""
        buffer = bytearray(self._size - self._pos if size < 0 else size)
        return bytes(buffer[: self.readinto(buffer)])

    def write(self, data: bytes | memoryview | bytearray) -> int:
        """Write at the position: past the original length to the file, below it into memory pages."""
        view = memoryview(data).cast("B")
        start, end = self._pos, self._pos + len(view)
        split = min(max(start, self._base), end)
        if split < end:
            _pwrite_all(self._fd, view[split - start :], split)
        for page in range(start // PAGE, (split - 1) // PAGE + 1) if start < split else ():
            edited = self._page(page)
            lo, hi = max(start, page * PAGE), min(split, (page + 1) * PAGE)
            edited[lo - page * PAGE : hi - page * PAGE] = view[lo - start : hi - start]
        self._size = max(self._size, end)
        self._pos = end
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        """Set the length; a cut below the original length is kept in memory until commit."""
        size = self._pos if size is None else size
        if size >= self._base:
            os.ftruncate(self._fd, size)
        else:
            os.ftruncate(self._fd, self._base)
            self._zero_from = min(self._zero_from, size)
            for page in [p for p in self._pages if (p + 1) * PAGE > size]:
                cut = max(0, size - page * PAGE)
                self._pages[page][cut:] = bytes(PAGE - cut)
        self._size = size
        return size

    def flush(self) -> None:
        """Nothing to do: durability comes from `commit`."""

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def edited_pages(self) -> int:
        """How many pages below the original length HDF5 has edited so far (held in memory)."""
        return len(self._pages)

    # -- commit ---------------------------------------------------------------------------------

    def _page(self, page: int) -> bytearray:
        edited = self._pages.get(page)
        if edited is None:
            edited = bytearray(PAGE)
            _pread_into(self._fd, memoryview(edited), page * PAGE)
            cut = max(0, self._zero_from - page * PAGE)
            if cut < PAGE:
                edited[cut:] = bytes(PAGE - cut)
            self._pages[page] = edited
        return edited

    def commit(self) -> None:
        """Make the edits durable (steps 2–5 above); call after h5py closed the file."""
        os.fsync(self._fd)
        _write_journal(self.journal, COMMIT, self._base, self._size, self._zero_from, self._pages)
        self._committed = True  # from here on the change stands: a crash is finished by `recover`
        os.close(self._fd)
        faults.checkpoint("gather-commit")
        _apply(self.path, self._base, self._size, self._zero_from, self._pages)
        self.journal.unlink()
        fsync_path(self.path.parent)

    def abandon(self) -> None:
        """Undo on an error: cut the file back to its original length and drop the journal (nothing
        to undo once the commit journal is written: the next gather's `recover` finishes it)."""
        if self._committed:
            return
        os.ftruncate(self._fd, self._base)
        os.fsync(self._fd)
        os.close(self._fd)
        self.journal.unlink(missing_ok=True)
        fsync_path(self.path.parent)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    """pwrite until every byte is written (one call may write less, e.g. past 2 GiB on Linux)."""
    while len(view):
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def _pread_into(fd: int, view: memoryview, offset: int) -> None:
    """Fill `view` from the file at `offset`; zeros past the end of the file."""
    while len(view):
        done = os.preadv(fd, [view], offset)
        if done == 0:
            view[:] = bytes(len(view))
            return
        view, offset = view[done:], offset + done


def _write_journal(
    journal: Path, kind: bytes, base: int, size: int, zero_from: int, pages: dict[int, bytearray]
) -> None:
    """Write the journal atomically: a temporary file, fsync, rename, fsync of the folder."""
    tmp = temp_name(journal)
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as handle:
            for part in (MAGIC, _HEADER.pack(kind, base, size, zero_from, len(pages))):
                handle.write(part)
                digest.update(part)
            for page in sorted(pages):
                for part in (_INDEX.pack(page), bytes(pages[page])):
                    handle.write(part)
                    digest.update(part)
            handle.write(digest.digest())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, journal)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(journal.parent)


def _read_journal(journal: Path) -> tuple[bytes, int, int, int, dict[int, bytes]]:
    data = journal.read_bytes()
    body, digest = data[:-32], data[-32:]
    if (
        not data.startswith(MAGIC)
        or len(data) < len(MAGIC) + _HEADER.size + 32
        or hashlib.sha256(body).digest() != digest
    ):
        raise StoreError(
            f"{journal}: not a complete toolkit journal; the store may be damaged — move {journal} aside and "
            "run toolkit gather --rebuild to rebuild store.h5 from the shards"
        )
    kind, base, size, zero_from, count = _HEADER.unpack_from(body, len(MAGIC))
    pages, at = {}, len(MAGIC) + _HEADER.size
    for _ in range(count):
        (page,) = _INDEX.unpack_from(body, at)
        pages[page] = body[at + _INDEX.size : at + _INDEX.size + PAGE]
        at += _INDEX.size + PAGE
    return kind, base, size, zero_from, pages


def _apply(path: Path, base: int, size: int, zero_from: int, pages: dict[int, bytearray] | dict[int, bytes]) -> None:
    """Write the edited pages (only below the original length), zero what was cut, set the final length."""
    fd = os.open(path, os.O_RDWR)
    try:
        for at in range(zero_from, min(base, size), _CHUNK):
            _pwrite_all(fd, memoryview(bytes(min(_CHUNK, min(base, size) - at))), at)
        for page, data in sorted(pages.items()):
            end = min(base, (page + 1) * PAGE)
            if page * PAGE < end:
                _pwrite_all(fd, memoryview(bytes(data[: end - page * PAGE])), page * PAGE)
                faults.checkpoint("gather-apply")
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(store: Path) -> str:
    """Finish or undo an interrupted append (call under the gather lock); returns what it did, '' if
    there was nothing to do."""
    journal = journal_path(store)
    if not journal.exists():
        return ""
    kind, base, size, zero_from, pages = _read_journal(journal)
    if kind == COMMIT:
        _apply(store, base, size, zero_from, pages)
        done = f"finished the interrupted gather's commit into {store}"
    else:
        if store.exists() and store.stat().st_size > base:
            os.truncate(store, base)
            fsync_path(store)
        done = f"undid the interrupted gather's unfinished append to {store}"
    journal.unlink()
    fsync_path(store.parent)
    return done


#: How long a reader waits for a commit journal to go before it gives up.
SETTLE_SECONDS = 10.0


def wait_settled(store: Path, timeout: float | None = None) -> None:
    """Wait while a commit journal says store.h5 is being edited (a gather's last milliseconds);
    StoreError if it stays, or at once if no live gather holds the folder's gather.lock (a gather
    died there: the next gather finishes it)."""
    from toolkit.store.campaign_dir import GATHER_LOCK_NAME
    from toolkit.store.lock import holder_gone

    journal = journal_path(store)
    deadline = time.monotonic() + (SETTLE_SECONDS if timeout is None else timeout)
    while True:
        try:
            with open(journal, "rb") as handle:
                head = handle.read(len(MAGIC) + 1)
        except FileNotFoundError:
            return
        if head[len(MAGIC) :] != COMMIT:
            return
        if time.monotonic() > deadline or holder_gone(store.parent / GATHER_LOCK_NAME):
            raise StoreError(
                f"{store}: a gather was interrupted while committing ({journal} remains); run toolkit gather "
                "to finish it, then read the store again"
            )
        time.sleep(0.05)
