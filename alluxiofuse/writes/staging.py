"""Files being written: their bytes in the spool, over the content they replace.

A :class:`StagedFile` is one file's new content: a spool data file over the file's
committed content (its *base*). Writes go to the data file; a read of a range never
written is fetched from the base and kept, so random writes, overwrites and appends to a
large file cost only the ranges touched until the file is committed, when the rest is
fetched and the whole file uploaded. Bytes past ``base_limit`` (the base's size, or the
smallest size the file was truncated to) belong to the data file alone: written, or zeros.

Its life against the under-storage is one :data:`Life` value, changed by the methods
named after what happened (see below).

A write the spool's disk refuses (ENOSPC, EIO), or an fsync of the data file that fails,
leaves the content incomplete: ``failed`` holds that error from then on, every commit
raises it again and commits nothing, and the file's previous content stays in the
under-storage, until a truncate drops every byte from the first failure on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import trio

from alluxiofuse.backends.base import run_blocking
from alluxiofuse.backends.local import pread_all
from alluxiofuse.errors import AlluxioFuseError, from_oserror
from alluxiofuse.model import Data, FileStatus, Kind, Version
from alluxiofuse.writes.extents import Extents
from alluxiofuse.writes.spool import Record, Spool

T = TypeVar("T")
log = logging.getLogger(__name__)
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


# The life of a staged file's content, against the under-storage (``StagedFile.life``):
#
#   Committed --written()--> Written --landed()--> Committed(durable, linked)
#   (opened over its base)      |                     ^
#                               +--journaled()--> Owed(record)
#                                                (landed() when the upload does)
#
# Any change makes it Written again (a data file that is also someone else's, linked or
# owed, is first left to them for a copy: ``fork``); ``synced()`` makes a commit by
# close(2) durable; ``unlink()`` leads from any of them to Unlinked, for good. A restart's
# owed upload starts Owed (``adopt``). A commit that times out leaves the content Written:
# only its data file is marked ``abandoned``, a fact about that file, not the content.


@dataclass(frozen=True, slots=True)
class Written:
    """Changed since its last commit or journal record: a commit is due."""


@dataclass(frozen=True, slots=True)
class Committed:
    """Nothing to commit: the under-storage holds this content (or the file was opened
    over its base and not changed yet)."""

    durable: bool = True  # False: committed by a close(2), maybe not yet fsynced there
    linked: bool = False  # the data file became the under-storage's file: copy first


@dataclass(frozen=True, slots=True)
class Owed:
    """Complete and fsynced in the spool, and journaled: its upload is owed (the
    uploader sends this data file, as ``record``)."""

    record: Record


@dataclass(frozen=True, slots=True)
class Unlinked:
    """No name any more: never committed again; open handles still read and write it."""

    linked: bool = False  # as in Committed, until a change moves it to a copy


Life: TypeAlias = Written | Committed | Owed | Unlinked


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
        # A fact about the mtime, not the life: it was set explicitly (utimens, or the
        # create's) since the last write, so a commit carries it to the under-storage.
        self.times_set = False
        self._life: Life = Committed()
        # A fact about the data file, whatever the life: a thread given up on (a commit
        # that timed out, an owed upload superseded by an unlink) may still read it by its
        # name, so it is changed only in a copy, and its name is kept. Until ``fork``.
        self._abandoned = False
        self.handles = 0
        self.lock = trio.Lock()  # one change of the data file at a time
        self._held = 0  # bytes counted against the spool
        # A fact about the content, whatever the life: a write to the data file failed at
        # ``_failed_from`` (or its fsync did: from 0), so it lacks bytes a program wrote.
        self._failed: AlluxioFuseError | None = None
        self._failed_from = 0

    def status(self, name: str) -> FileStatus:
        return FileStatus(name=name, kind=Kind.FILE, size=self.size, mtime_ns=self.mtime_ns,
                          ctime_ns=self.mtime_ns, mode=self.mode, uid=self.uid, gid=self.gid,
                          nlink=1)

    @property
    def life(self) -> Life:
        return self._life

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    @property
    def record(self) -> Record | None:
        """The journal record whose upload sends the data file, while one is owed."""
        return self._life.record if isinstance(self._life, Owed) else None

    @property
    def shared(self) -> bool:
        """Whether the data file is someone else's too (the under-storage's file, an owed
        upload's, or a thread's given up on), so that a change must go to a copy."""
        life = self._life
        return (self._abandoned or isinstance(life, Owed)
                or (isinstance(life, (Committed, Unlinked)) and life.linked))

    @property
    def failed(self) -> AlluxioFuseError | None:
        """Why the content is incomplete: the spool's disk refused a write to it (or its
        fsync), and no truncate has dropped that part since. None when it is whole."""
        return self._failed

    def check_whole(self) -> None:
        """Before a commit: raise ``failed`` again (a new one, the same errno), if set."""
        failed = self._failed
        if failed is not None:
            raise type(failed)(f"{self.path}: not committed: an earlier write to the "
                               f"spool failed ({failed})")

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
        try:
            # Refused by the spool's bound or by its disk, the write leaves the content
            # without bytes the program wrote: the file is not committed (``failed``).
            self._charge(min(len(data), max(0, end - self.size)) if dense else len(data))
            if len(data) <= _INLINE_WRITE_MAX:
                try:
                    _pwrite(self.fd, data, offset)
                except OSError as e:  # ENOSPC, EIO of the spool's disk
                    raise from_oserror(e) from e
            else:
                await self._io(_pwrite, self.fd, data, offset)
        except AlluxioFuseError as e:
            await self._write_failed(offset, e)
            raise
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
        if size <= self._failed_from:  # the bytes a failed write lacked are gone
            self._failed = None
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
        self._life = Owed(record)
        self.size = record.size
        self._account()

    async def sync(self) -> None:
        try:
            await self._io(os.fsync, self.fd)
        except AlluxioFuseError as e:
            # After a failed fsync no byte written since the last good one can be trusted
            # to be on the disk (the kernel may have dropped the pages it could not write):
            # the whole content is in doubt.
            self._fail(0, e)
            raise

    async def fork(self) -> None:
        """Move to a copy of the data file, leaving this one to whoever holds it now: the
        under-storage (linked into place), an owed upload, or a thread given up on that
        may still be reading it (the names of the last two are kept for them)."""
        name, fd = await self._io(self.spool.copy, self.fd, self.size)
        os.close(self.fd)
        if not isinstance(self._life, Owed) and not self._abandoned:  # nobody's name now
            self.spool.remove(self.name)
        self.name, self.fd = name, fd
        self._abandoned = False
        match self._life:
            case Committed(durable=durable):
                self._life = Committed(durable=durable)
            case Owed():  # the owed upload still lands this same content
                self._life = Committed()
            case Unlinked():
                self._life = Unlinked()
        self._account()

    def set_mtime(self, mtime_ns: int) -> None:
        self.mtime_ns = mtime_ns
        self.times_set = True
        self.written()

    def rebased(self, status: FileStatus) -> None:
        """The under-storage's file is now ``status`` (a commit of the content, or
        attributes set there): its version is the base from now on."""
        self.base = status.version
        self.mtime_ns = status.mtime_ns or self.mtime_ns
        self.times_set = False

    # The transitions of the life, named after what happened.

    def written(self) -> None:
        """The content or its attributes changed (in a data file that is its own: the
        caller forks a ``shared`` one first): a commit is due, unless it has no name."""
        if not isinstance(self._life, Unlinked):
            self._life = Written()

    def landed(self, status: FileStatus, *, linked: bool, durable: bool = True) -> None:
        """A commit of the content landed, as ``status``: this data file's (``linked``:
        it became the under-storage's file), or the owed upload of it."""
        self._life = Committed(durable=durable, linked=linked)
        self.rebased(status)

    def synced(self) -> None:
        """The under-storage fsynced the content a close(2) committed."""
        if isinstance(self._life, Committed):
            self._life = Committed(durable=True, linked=self._life.linked)

    def journaled(self, record: Record) -> None:
        """The content is complete and durable in the spool, its upload owed as
        ``record``."""
        self._life = Owed(record)

    def abandon(self) -> None:
        """A commit of the data file timed out: its thread may still be reading it."""
        self._abandoned = True

    def unlink(self) -> None:
        """The file's name is gone: its content is never committed."""
        match self._life:
            case Committed(linked=linked) | Unlinked(linked=linked):
                self._life = Unlinked(linked=linked)
            case Owed():  # superseded by the unlink; its upload may still be reading
                self._life = Unlinked()
                self._abandoned = True
            case Written():
                self._life = Unlinked()

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

    async def _write_failed(self, offset: int, error: AlluxioFuseError) -> None:
        """A write at ``offset`` failed, perhaps part-way: the content is incomplete. What
        it appended past the end is cut off again (best effort), so that it takes no disk
        and a later extension reads zeros there."""
        self._fail(offset, error)
        try:
            if os.fstat(self.fd).st_size > self.size:
                await self._io(os.ftruncate, self.fd, self.size)
        except (OSError, AlluxioFuseError) as e:
            log.debug("%s: cannot cut a failed write off %s: %s", self.path,
                      self.spool.data_path(self.name), e)

    def _fail(self, offset: int, error: AlluxioFuseError) -> None:
        if self._failed is None:
            log.warning("%s: a write to the spool failed (%s: %s); the file's close fails "
                        "too and commits nothing: its previous version stays", self.path,
                        type(error).__name__, error)
            self._failed, self._failed_from = error, offset
        self._failed_from = min(self._failed_from, offset)
        self.written()  # the data file changed, in part: a close must say so

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
        try:
            held = os.fstat(self.fd).st_blocks * 512
        except OSError as e:  # a failing disk: the count stays as it was
            log.debug("%s: cannot stat %s: %s", self.path, self.spool.data_path(self.name), e)
            return
        self.spool.reserve(held - self._held, refusable=False)
        self._held = held

    def _touched(self) -> None:
        self.mtime_ns = time.time_ns()
        self.times_set = False
        self.written()


def _pwrite(fd: int, data: Data, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
