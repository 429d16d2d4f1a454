"""Files being written: their bytes in the spool, over the content they replace.

A :class:`StagedFile` is one file's new content: a spool data file over the file's
committed content (its *base*). Writes go to the data file; a read of a range never
written is fetched from the base and kept, so random writes, overwrites and appends to a
large file cost only the ranges touched until the file is committed, when the rest is
fetched and the whole file uploaded. Bytes past ``base_limit`` (the base's size, or the
smallest size the file was truncated to) belong to the data file alone: written, or zeros.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from alluxiofuse.backends.base import run_blocking
from alluxiofuse.backends.ufs import pread_all
from alluxiofuse.errors import from_oserror
from alluxiofuse.model import Data, FileStatus, Kind, Version
from alluxiofuse.writes.extents import Extents
from alluxiofuse.writes.spool import Record, Spool

T = TypeVar("T")
# Bytes of the base fetched at once when a file is completed before its upload.
_FILL_CHUNK = 4 * 1024 * 1024
# Writes up to this size (the kernel's largest FUSE write) go to the spool's page cache
# on the event loop: a worker-thread hop costs more than the copy, for small writes and
# for large ones alike (bench/RESULTS.md). Buffered writes have no RWF_NOWAIT on these
# kernels (EOPNOTSUPP), so one under dirty-page throttling waits here.
_INLINE_WRITE_MAX = 1024 * 1024

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
