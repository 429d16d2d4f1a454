"""Files being written: their bytes in the spool, and the uploads that make them durable.

A :class:`StagedFile` is one file's new content: a spool data file over the file's
committed content (its *base*). Writes go to the data file; a read of a range never
written is fetched from the base and kept, so random writes, overwrites and appends to a
large file cost only the ranges touched until the file is committed, when the rest is
fetched and the whole file uploaded. Bytes past ``base_limit`` (the base's size, or the
smallest size the file was truncated to) belong to the data file alone: written, or zeros.

The :class:`Uploader` runs the uploads a program has been told are done (ASYNC_THROUGH,
or a file released with an upload that failed), oldest first, a few at a time, retrying
with backoff until each succeeds; every one is in the spool's journal first, so a restart
resumes them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import trio

from alluxiofuse.backends.base import run_blocking
from alluxiofuse.backends.local import pread_all
from alluxiofuse.errors import AlluxioFuseError, BackendTimeout, from_oserror
from alluxiofuse.model import Data, FileStatus, Kind, Version
from alluxiofuse.writes.extents import Extents
from alluxiofuse.writes.spool import Record, Spool

log = logging.getLogger(__name__)

T = TypeVar("T")
# Bytes of the base fetched at once when a file is completed before its upload.
_FILL_CHUNK = 4 * 1024 * 1024
# Writes up to this size (the kernel's largest FUSE write) go to the spool's page cache
# on the event loop: a worker-thread hop costs more than the copy (tar x of 2,000 small
# files, 10 KiB writes: 435 µs per write(2) through a thread, 168 µs inline; 256 MiB in
# 1 MiB writes: 168 MiB/s through a thread, 467-589 inline). Buffered writes have no
# RWF_NOWAIT on these kernels (EOPNOTSUPP), so one under dirty-page throttling waits here.
_INLINE_WRITE_MAX = 1024 * 1024
# Uploads that fail are tried again after 1, 2, 4, ... seconds, at most this many.
_MAX_BACKOFF = 60.0

# Fetch ``length`` bytes at ``offset`` of a staged file's base.
FetchBase = Callable[[int, int], Awaitable[Data]]


class DiskIO:
    """Blocking spool I/O in worker threads under a limiter and a deadline."""

    def __init__(self, limiter: trio.CapacityLimiter, timeout: float) -> None:
        self._limiter = limiter
        self._timeout = timeout

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_blocking(fn, *args, limiter=self._limiter, deadline=self._timeout,
                                  what="the spool")


class StagedFile:
    """One file's new content: a spool data file over its base (``None``: a new file)."""

    def __init__(
        self, spool: Spool, io: DiskIO, name: str, fd: int, path: str, *,
        base: FileStatus | None, mode: int | None, uid: int | None, gid: int | None,
        mtime_ns: int,
    ) -> None:
        self.spool = spool
        self._io = io
        self.name = name  # data file in the spool
        self.fd = fd
        self.path = path
        self.base: Version | None = base.version if base is not None else None
        self.base_limit = base.size if base is not None else 0
        self.extents = Extents()  # the ranges below base_limit held in the data file
        self.size = self.base_limit
        self.mode, self.uid, self.gid = mode, uid, gid
        self.mtime_ns = mtime_ns
        self.times_set = False  # mtime set explicitly (utimens) since the last write
        self.dirty = False  # changed since the last commit or journal record
        self.record: Record | None = None  # the journal record this data file backs
        self.unlinked = False  # no name any more: its content is never committed
        self.linked = False  # the data file became the under-storage's file: copy first
        self.abandoned = False  # a commit timed out: its thread may still read the file
        self.durable = True  # the last commit was fsynced (or nothing was committed)
        self.handles = 0
        self.lock = trio.Lock()  # one change of the data file at a time
        self._held = 0  # bytes counted against the spool

    def status(self, name: str) -> FileStatus:
        return FileStatus(name=name, kind=Kind.FILE, size=self.size, mtime_ns=self.mtime_ns,
                          ctime_ns=self.mtime_ns, mode=self.mode, uid=self.uid, gid=self.gid,
                          nlink=1)

    @property
    def complete(self) -> bool:
        """Whether the data file holds the whole content (no base needed any more)."""
        return self.extents.covers(0, self.base_limit)

    # Every method that touches the data file expects the caller to hold ``lock``: a
    # change must not land in the middle of a commit, and ``fork`` replaces ``fd``.

    async def read(self, offset: int, size: int, fetch: FetchBase) -> bytes:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        # Only the part below base_limit can come from the base; a read wholly past it
        # (a new file, or past a truncation) is the data file's alone.
        base_end = min(end, self.base_limit)
        if offset < base_end and self.extents.missing(offset, base_end):
            await self._fill(offset, base_end, fetch)
        return await self._io(pread_all, self.fd, end - offset, offset)

    async def write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        # A write takes new disk past the end, and inside the file only where the data
        # file has holes: none when it takes as much disk as its size (a file written
        # from the start), so an overwrite is never refused for space it already has.
        dense = self._held >= self.size
        self._charge(min(len(data), max(0, end - self.size)) if dense else len(data))
        try:
            if len(data) <= _INLINE_WRITE_MAX:
                try:
                    _pwrite(self.fd, data, offset)
                except OSError as e:  # ENOSPC, EIO of the spool's disk
                    raise from_oserror(e) from e
            else:
                await self._io(_pwrite, self.fd, data, offset)
        finally:
            self._account()
        if offset < self.base_limit:
            self.extents.add(offset, min(end, self.base_limit))
        self.size = max(self.size, end)
        self._touched()

    async def truncate(self, size: int) -> None:
        # Extending takes no disk (a hole), so nothing is charged ahead: a sparse file of
        # any size the spool's file system takes can be staged.
        await self._io(os.ftruncate, self.fd, size)
        self.extents.truncate(min(size, self.base_limit))
        self.base_limit = min(self.base_limit, size)
        self.size = size
        self._account()
        self._touched()

    async def fill_locked(self, fetch: FetchBase) -> None:
        """Fetch every range of the base not yet held, so the base is not needed any more
        (the caller holds ``lock``)."""
        await self._fill(0, self.base_limit, fetch)

    async def adopt(self, record: Record) -> None:
        """Stand for ``record``'s complete data file (a restart's owed upload)."""
        self.record = record
        self.size = record.size
        self._account()

    async def sync(self) -> None:
        await self._io(os.fsync, self.fd)

    async def fork(self) -> None:
        """Move to a copy of the data file, leaving this one to whoever holds it now: the
        under-storage (linked into place), an owed upload, or an upload that timed out
        and may still be reading it."""
        name, fd = await self._io(self.spool.copy, self.fd, self.size)
        os.close(self.fd)
        if self.record is None and not self.abandoned:  # the old name is nobody's now
            self.spool.remove(self.name)
        self.name, self.fd, self.record = name, fd, None
        self.linked = self.abandoned = False
        self._account()

    def set_mtime(self, mtime_ns: int) -> None:
        self.mtime_ns = mtime_ns
        self.times_set = True
        self.dirty = True

    def committed(self, status: FileStatus) -> None:
        """The under-storage now holds the data file's content, as ``status``."""
        self.base = status.version
        self.mtime_ns = status.mtime_ns or self.mtime_ns
        self.times_set = False

    def close(self, *, keep_data: bool = False) -> None:
        """Let go of the data file (removed unless ``keep_data``) and its spool space."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.spool.reserve(-self._held)
        self._held = 0
        if not keep_data:
            self.spool.remove(self.name)

    async def _fill(self, start: int, end: int, fetch: FetchBase) -> None:
        """Fetch the missing parts of ``[start, end)`` (the lock is held)."""
        try:
            for gap_start, gap_end in self.extents.missing(start, end):
                for offset in range(gap_start, gap_end, _FILL_CHUNK):
                    length = min(_FILL_CHUNK, gap_end - offset)
                    self._charge(length)
                    data = await fetch(offset, length)
                    await self._io(_pwrite, self.fd, data, offset)
                    self.extents.add(offset, offset + length)
        finally:  # a failed fetch gives back what it was charged
            self._account()

    def _charge(self, nbytes: int) -> None:
        """Count ``nbytes`` about to be written against the spool's limit, before they
        are: NoSpace (ENOSPC) past it."""
        self.spool.reserve(nbytes)
        self._held += nbytes

    def _account(self) -> None:
        """Count what the data file takes on disk now, after a change. Holes take
        nothing, so a file extended by ``truncate`` or written far past its end costs the
        spool only the bytes it holds. Never refused: those bytes are there already (a
        write was charged its length first)."""
        held = os.fstat(self.fd).st_blocks * 512
        self.spool.reserve(held - self._held, refusable=False)
        self._held = held

    def _touched(self) -> None:
        self.mtime_ns = time.time_ns()
        self.times_set = False
        self.dirty = True


def _pwrite(fd: int, data: Data, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class Uploader:
    """Background uploads of journal records, oldest first, ``threads`` at a time.

    ``upload(record)`` commits one record's data file to the under-storage;
    ``uploaded(record, status)`` is told of each success and says whether the data file
    is still in use (else it is removed with the record). Records of one path are
    uploaded one at a time, in order; an older record of a path that has a newer one is
    dropped unsent (the newer holds the whole file).
    """

    def __init__(
        self, spool: Spool, io: DiskIO, threads: int,
        upload: Callable[[Record], Awaitable[FileStatus]],
        uploaded: Callable[[Record, FileStatus], bool],
    ) -> None:
        self._spool = spool
        self._io = io
        self._threads = threads
        self._upload = upload
        self._uploaded = uploaded
        self.pending: dict[int, Record] = {}  # by seq
        self.failures = 0  # failed attempts, for the metrics
        self._running: dict[str, int] = {}  # paths being uploaded now: the record's seq
        self._errors: dict[int, str] = {}
        self._superseded: list[Record] = []
        self._changed = trio.Event()  # something to do, or something done

    def __len__(self) -> int:
        return len(self.pending)

    def submit(self, record: Record) -> None:
        self.pending[record.seq] = record
        self._wake()

    def busy(self, path: str) -> bool:
        """Whether an upload of ``path`` or of anything under it is owed."""
        prefix = path + "/"
        return any(r.path == path or r.path.startswith(prefix) or not path
                   for r in self.pending.values())

    def uploading(self, record: Record | None) -> bool:
        return record is not None and record.seq in self.pending

    async def supersede(self, path: str) -> None:
        """A newer content of ``path`` is about to be committed directly, or ``path`` is
        removed: drop the owed uploads of it, and their journal records now (one being
        sent is left to end, then dropped: the commit fence keeps it from landing over
        a newer commit, and ``wait`` does not wait for it). Not left to an
        upload thread: every one may be busy retrying for ever, and a record left in the
        journal is counted as owed, and sent again after a restart."""
        dropped = []
        for seq, record in list(self.pending.items()):
            if record.path == path:
                del self.pending[seq]
                if self._running.get(path) != seq:
                    dropped.append(record)
        self._wake()
        for record in dropped:
            await self._settle(record, keep_data=False)

    async def wait(self, path: str, within: float) -> None:
        """Wait until nothing under ``path`` is owed ("" waits for everything);
        BackendTimeout if that takes longer than ``within`` seconds."""
        try:
            with trio.fail_after(within):
                while self.busy(path):
                    await self._changed_event().wait()
        except trio.TooSlowError:
            raise BackendTimeout(f"uploads of {path or 'the mount'} still pending after "
                                 f"{within}s (kept in {self._spool.root})") from None

    async def run(self) -> None:
        """Upload until cancelled."""
        async with trio.open_nursery() as nursery:
            for _ in range(self._threads):
                nursery.start_soon(self._worker)

    async def _worker(self) -> None:
        while True:
            record = self._next()
            while self._superseded:
                await self._settle(self._superseded.pop(), keep_data=False)
            if record is None:
                await self._changed_event().wait()
                continue
            self._running[record.path] = record.seq
            try:
                await self._attempt(record)
            finally:
                del self._running[record.path]
                self._wake()

    def _next(self) -> Record | None:
        """The oldest record whose path is not being uploaded; older records of a path
        with a newer one are dropped on the way (settled by ``_worker``)."""
        newest: dict[str, int] = {}
        for seq, record in self.pending.items():
            newest[record.path] = max(seq, newest.get(record.path, seq))
        for seq in sorted(self.pending):
            record = self.pending[seq]
            if record.path in self._running:
                continue
            if newest[record.path] != seq:
                self._superseded.append(self.pending.pop(seq))
                continue
            return record
        return None

    async def _attempt(self, record: Record) -> None:
        delay = 1.0
        while True:
            try:
                status = await self._upload(record)
            except Exception as e:  # a library's own error too: never the daemon's end
                if record.seq not in self.pending:
                    # Superseded while it ran: a newer commit owns the path (the commit
                    # fence refused this one its landing), so this is no failure.
                    await self._settle(record, keep_data=False)
                    return
                message = f"{type(e).__name__}: {e}"
                log.warning("upload of %s failed (%s); retrying in %.0fs; its bytes are kept "
                            "in %s", record.path, message, delay,
                            self._spool.data_path(record.data))
                self._errors[record.seq] = message
                self.failures += 1
                with contextlib.suppress(AlluxioFuseError):  # only for ``status``
                    await self._io(self._spool.note_error, record, message)
                await trio.sleep(delay)
                delay = min(_MAX_BACKOFF, delay * 2)
                if record.seq not in self.pending:  # superseded meanwhile
                    await self._settle(record, keep_data=False)
                    return
                continue
            self.pending.pop(record.seq, None)
            self._errors.pop(record.seq, None)
            await self._settle(record, keep_data=self._uploaded(record, status))
            return

    async def _settle(self, record: Record, *, keep_data: bool) -> None:
        """Drop a record that is done with; if the spool cannot, the record stays and is
        uploaded once more at the next start (harmless: the same content again)."""
        try:
            await self._io(partial(self._spool.settle, keep_data=keep_data), record)
        except AlluxioFuseError as e:
            log.error("cannot remove the journal record of %s from %s: %s", record.path,
                      self._spool.root, e)

    def _changed_event(self) -> trio.Event:
        return self._changed

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

