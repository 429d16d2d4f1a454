"""The write side of a mount: staged files by path, commits by write type, owed uploads.

Write types (Alluxio's names):

- ``THROUGH``: flush, fsync and close return once the under-storage has the file.
- ``CACHE_THROUGH``: the same, and then the cluster is asked to cache the file.
- ``MUST_CACHE`` (an Alluxio 2.x proxy only): as ``THROUGH``, the backend being Alluxio
  storage, which keeps the file without persisting it.
- ``ASYNC_THROUGH``: they return once the file is complete and fsynced in the spool and
  recorded in its journal; the :class:`~alluxiofuse.writes.uploader.Uploader` uploads it in the
  background, and again after a restart if the daemon dies first.

Whatever the type, a file whose upload failed keeps its bytes: the flush says EIO, the
next flush tries again, and a file released with its upload still failing is journaled and
retried in the background. A file is never uploaded in part: every commit sends the
whole file, fetching first any range of the old content not yet held.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from alluxiofuse.backends.base import Backend
from alluxiofuse.config import MountConfig
from alluxiofuse.errors import AlluxioFuseError, BackendTimeout, NotFound
from alluxiofuse.model import Attrs, Commit, Data, FileStatus
from alluxiofuse.writes.spool import Record, Spool, owed_uploads
from alluxiofuse.writes.staging import (
    Committed,
    DiskIO,
    FetchBase,
    StagedFile,
    Unlinked,
    Written,
)
from alluxiofuse.writes.uploader import Uploader

log = logging.getLogger(__name__)

# Empty data files kept ready, so that a create(2) needs no worker-thread hop to make one.
_READY_FILES = 32

OnCommitted = Callable[[str, FileStatus], None]  # a path's new content is in the under-storage


class Writes:
    """Staged files of one mount, keyed by their current path."""

    def __init__(
        self, config: MountConfig, backend: Backend, spool: Spool, io: DiskIO,
    ) -> None:
        self.config = config
        self.backend = backend
        self.spool = spool
        self._io = io
        self._on_committed: OnCommitted = lambda path, status: None
        self._by_path: dict[str, StagedFile] = {}
        self._ready: list[tuple[str, int]] = []  # data files made ahead
        self._want_more = trio.Event()
        self.uploader = Uploader(spool, io, config.upload_threads, self._upload, self._uploaded)

    def when_committed(self, call: OnCommitted) -> None:
        """Have ``call(path, status)`` told of each path whose new content the under-storage
        now holds, by a close, an fsync or an upload that drains later. The file layer is
        built after the writes it serves, so it asks for this itself."""
        self._on_committed = call

    async def run(self) -> None:
        """Upload what is owed and keep data files ready, until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.uploader.run)
                nursery.start_soon(self._make_ready)
        finally:
            self._drop_ready()

    def _drop_ready(self) -> None:
        for name, fd in self._ready:
            os.close(fd)
            self.spool.remove(name)
        self._ready.clear()

    async def _make_ready(self) -> None:
        while True:
            if len(self._ready) < _READY_FILES // 2:
                try:
                    # Shielded: a thread abandoned at shutdown would make its files after
                    # _drop_ready, leaking their descriptors and leaving them in data/,
                    # where the next mount takes them for files a crash left open.
                    with trio.CancelScope(shield=True):
                        made = await self._io(self.spool.create_many,
                                              _READY_FILES - len(self._ready))
                    self._ready += made
                except AlluxioFuseError as e:  # create() makes them one by one instead
                    log.debug("making spool files ahead failed: %s", e)
                    await trio.sleep(1)
            await self._want_more.wait()
            self._want_more = trio.Event()

    # -- what the rest of the filesystem sees

    def get(self, path: str) -> StagedFile | None:
        return self._by_path.get(path)

    def under(self, path: str) -> Iterator[StagedFile]:
        """Staged files at ``path`` or below it."""
        prefix = path + "/"
        for staged_path, staged in list(self._by_path.items()):
            if staged_path == path or staged_path.startswith(prefix) or not path:
                yield staged

    def children(self, directory: str) -> dict[str, StagedFile]:
        """Staged files directly in ``directory``, by name."""
        prefix = directory + "/" if directory else ""
        return {p[len(prefix):]: s for p, s in self._by_path.items()
                if p.startswith(prefix) and "/" not in p[len(prefix):]}

    # -- staging

    async def create(self, path: str, mode: int, uid: int | None, gid: int | None) -> StagedFile:
        """A new, empty file at ``path``: committed at its first flush even if nothing is
        written."""
        staged = await self._new(path, base=None, mode=mode, uid=uid, gid=gid)
        # Its times are those of this create, given to the committed file: the data file
        # was made ahead (its own mtime is then), and a file never written keeps it.
        staged.set_mtime(staged.mtime_ns)
        return staged

    async def open(self, path: str, status: FileStatus) -> StagedFile:
        """The staged file of ``path`` (made over its current ``status`` if there is none)."""
        staged = self._by_path.get(path)
        if staged is None:
            staged = await self._new(path, base=status, mode=status.mode, uid=status.uid,
                                     gid=status.gid)
        return staged

    async def _new(
        self, path: str, *, base: FileStatus | None, mode: int | None, uid: int | None,
        gid: int | None,
    ) -> StagedFile:
        if self._ready:
            name, fd = self._ready.pop()
            if len(self._ready) < _READY_FILES // 2:
                self._want_more.set()
        else:
            name, fd = await self._io(self.spool.create)
        mtime = base.mtime_ns if base is not None and base.mtime_ns else time.time_ns()
        staged = StagedFile(self.spool, self._io, name, fd, path, base=base, mode=mode,
                            uid=uid, gid=gid, mtime_ns=mtime)
        if base is not None:
            try:
                await self._io(_extend, fd, base.size)
            except BaseException:
                staged.close()
                raise
        raced = self._by_path.get(path)
        if raced is not None and base is not None:  # another open staged it meanwhile
            staged.close()
            return raced
        self._by_path[path] = staged
        return staged

    async def write(self, staged: StagedFile, offset: int, data: bytes) -> None:
        async with staged.lock:
            await self._own(staged)
            await staged.write(offset, data)

    async def truncate(self, staged: StagedFile, size: int) -> None:
        async with staged.lock:
            await self._own(staged)
            await staged.truncate(size)

    async def set_attrs(self, staged: StagedFile, attrs: Attrs) -> Attrs:
        """Record ``attrs`` in ``staged``, so its commits keep them; what must be set in
        the under-storage now (nothing if a commit of this file is still to come)."""
        if attrs == Attrs():
            return attrs
        async with staged.lock:
            # New content still to be committed (or uploaded): its commit carries them.
            # A file without a name keeps them alone (only a truncate, which changed it
            # already, reaches here with one).
            pending = (isinstance(staged.life, (Written, Unlinked)) or staged.base is None
                       or self.uploader.uploading(staged.record))
            if pending:
                await self._own(staged)
            if attrs.mode is not None:
                staged.mode = attrs.mode
            if attrs.uid is not None:
                staged.uid = attrs.uid
            if attrs.gid is not None:
                staged.gid = attrs.gid
            if not pending:
                return attrs
            if attrs.mtime_ns is not None:
                staged.set_mtime(attrs.mtime_ns)
            staged.written()
            return Attrs()

    async def read(self, staged: StagedFile, offset: int, size: int) -> bytes:
        async with staged.lock:
            return await staged.read(offset, size, self._fetcher(staged))

    async def _own(self, staged: StagedFile) -> None:
        """Before a change (the lock is held): a data file that became the
        under-storage's own file (linked into place), that an owed upload names, or that a
        thread given up on may still be reading is theirs now; work on a copy."""
        if staged.shared:
            await staged.fork()

    # -- commits

    async def flush(self, staged: StagedFile, *, durable: bool = False) -> FileStatus | None:
        """Commit ``staged`` by the write type if it changed (``durable``: fsync(2), else
        close(2)); its new status (None if nothing was committed). Raises on failure,
        keeping every staged byte."""
        async with staged.lock:  # no write lands in the middle of a commit
            return await self._flush_locked(staged, durable=durable)

    async def _flush_locked(self, staged: StagedFile, *, durable: bool = False,
                            ) -> FileStatus | None:
        """``flush`` with the lock held."""
        life = staged.life
        if not isinstance(life, Written):
            if durable and isinstance(life, Committed) and not life.durable:
                await self.backend.sync(staged.path)  # committed by a close(2) before
                staged.synced()
            return None
        staged.check_whole()
        await staged.fill_locked(self._fetcher(staged))
        if self.config.write_type == "ASYNC_THROUGH":
            await self._journal(staged)
            return None
        # An older upload of this file still owed (after a failed close) must not
        # land after this one: it is dropped; one being sent cannot land once this
        # commit has begun (the commit fence), and is dropped when it ends.
        await self.uploader.supersede(staged.path)
        await self.uploader.wait(staged.path, self.config.drain_timeout)
        try:
            done = await self.backend.commit(
                staged.path, self.spool.data_path(staged.name), mode=staged.mode,
                owner=_owner(staged),
                mtime_ns=staged.mtime_ns if staged.times_set else None,
                durable=durable, size=staged.size,
            )
        except BackendTimeout:
            staged.abandon()  # its thread may still be reading the data file
            raise
        status = _as_mounted(done)
        staged.landed(status, linked=done.linked, durable=durable)
        self._on_committed(staged.path, status)
        if self.config.write_type == "CACHE_THROUGH":
            await self.backend.cache(staged.path)
        return status

    async def _journal(self, staged: StagedFile) -> None:
        """Make the staged content durable locally and owe its upload (the lock is held)."""
        await staged.sync()
        record = Record(data=staged.name, path=staged.path, size=staged.size, mode=staged.mode,
                        uid=staged.uid, gid=staged.gid,
                        mtime_ns=staged.mtime_ns if staged.times_set else None,
                        closed_ns=time.time_ns())
        await self._io(self.spool.journal, record)
        staged.journaled(record)
        self.uploader.submit(record)

    async def release(self, staged: StagedFile) -> None:
        """The last handle of ``staged`` is closed."""
        if staged.handles > 0:
            return
        try:
            async with staged.lock:
                if isinstance(staged.life, Written) and staged.failed is not None:
                    # The spool's disk refused part of it, and the program was told so
                    # (the write and the close failed): nothing of it is owed.
                    log.info("%s: closed incomplete (%s): dropped, never committed; its "
                             "previous version stays", staged.path, staged.failed)
                elif isinstance(staged.life, Written):
                    # Its commit failed and the program was told so; the bytes still have
                    # no other home: owe them, retried in the background until they land.
                    await staged.fill_locked(self._fetcher(staged))
                    await self._journal(staged)
                    log.warning("%s: upload owed after a failed commit; its bytes are in %s",
                                staged.path, self.spool.data_path(staged.name))
        except AlluxioFuseError as e:
            kept = self.spool.data_path(staged.name)
            if staged.handles == 0:
                self._drop(staged, keep_data=True)
                # Out of data/, where the next mount would take it for a file a crash
                # left open; the spool's disk may refuse this too (it stays there then).
                with contextlib.suppress(AlluxioFuseError):
                    kept = await self._io(self.spool.set_aside, staged.name)
            log.error("%s: closed with a failed upload, and it cannot be retried (%s); "
                      "its bytes are kept in %s", staged.path, e, kept)
            return
        if staged.handles == 0 and not self.uploader.uploading(staged.record):
            self._drop(staged)

    def _drop(self, staged: StagedFile, *, keep_data: bool = False) -> None:
        if self._by_path.get(staged.path) is staged:
            del self._by_path[staged.path]
        staged.close(keep_data=keep_data)

    async def _upload(self, record: Record) -> Commit:
        return await self.backend.commit(
            record.path, self.spool.data_path(record.data), mode=record.mode,
            owner=None if record.uid is None or record.gid is None else (record.uid, record.gid),
            mtime_ns=record.mtime_ns, size=record.size,
        )

    def _uploaded(self, record: Record, done: Commit) -> bool:
        """An owed upload landed; whether its data file is still a staged file's (one
        changed since has moved to a copy, and owes nothing to this record any more)."""
        staged = self._by_path.get(record.path)
        status = _as_mounted(done)
        self._on_committed(record.path, status)
        if staged is None or staged.record is not record:
            return False
        staged.landed(status, linked=done.linked)
        if staged.handles == 0:
            del self._by_path[record.path]
            staged.close(keep_data=True)
            return False
        return True

    # -- names

    @asynccontextmanager
    async def moving(self, *paths: str) -> AsyncIterator[None]:
        """Around a rename of ``paths``: every staged file under them is committed,
        completed (a copy in an object store is a new version: the old one can no longer
        be fetched) and locked, and the uploads owed there have landed; so the
        under-storage holds what moves, and nothing lands at a name that has moved on."""
        async with AsyncExitStack() as stack:
            await self._lock_under(stack, paths)
            for staged in self._locked(paths):
                await self._flush_locked(staged)
                if not isinstance(staged.life, Unlinked):
                    await staged.fill_locked(self._fetcher(staged))
            for path in paths:
                await self.uploader.wait(path, self.config.drain_timeout)
            yield

    @asynccontextmanager
    async def removing(self, path: str) -> AsyncIterator[StagedFile | None]:
        """Around an unlink of ``path``: its staged file (if any) is locked, so no commit
        runs meanwhile, and no upload of it is owed any more."""
        async with AsyncExitStack() as stack:
            await self._lock_under(stack, (path,))
            await self.uploader.supersede(path)
            await self.uploader.wait(path, self.config.drain_timeout)
            yield self._by_path.get(path)

    async def _lock_under(self, stack: AsyncExitStack, paths: tuple[str, ...]) -> None:
        """Take the locks of the staged files under ``paths``, in path order (so that two
        renames never wait for each other), until no new one has appeared meanwhile."""
        held: set[int] = set()
        while todo := [s for s in self._locked(paths) if id(s) not in held]:
            for staged in todo:
                await stack.enter_async_context(staged.lock)
                held.add(id(staged))

    def _locked(self, paths: tuple[str, ...]) -> list[StagedFile]:
        found = {id(s): s for path in paths for s in self.under(path)}
        return sorted(found.values(), key=lambda s: s.path)

    def unlinked(self, path: str) -> StagedFile | None:
        """``path`` is gone: its staged file (if any) is never committed."""
        staged = self._by_path.pop(path, None)
        if staged is not None:
            staged.unlink()
            if staged.handles == 0:
                staged.close()
        return staged

    def renamed(self, old: str, new: str) -> None:
        """``old`` (and everything under it) is now ``new``."""
        self.unlinked(new)
        prefix = old + "/"
        for path in list(self._by_path):
            if path == old or path.startswith(prefix):
                staged = self._by_path.pop(path)
                staged.path = new + path[len(old):]
                self._by_path[staged.path] = staged

    # -- start and stop

    async def recover(self, tidy: Callable[[], object] | None = None) -> int:
        """Owe again the uploads a previous daemon journaled; how many (a record that
        cannot be read is set aside, with a warning, not owed). ``tidy`` first
        removes what a commit cut short by a crash left in the source (its temporary file,
        a second link to a data file): only then does a data file's link count say whether
        its bytes are committed, and an orphan never committed is kept, not removed."""
        if tidy is not None:
            await self._io(tidy)
        for path, why in await self._io(self.spool.set_aside_unreadable):
            log.warning("a journal record the last daemon left cannot be read (%s): set "
                        "aside as %s, not uploaded; its data file, if any, is kept in "
                        "orphaned/", why, path)
        moved = await self._io(self.spool.set_aside_orphans)
        for path in moved:
            log.warning("a file being written when the last daemon stopped was never closed; "
                        "its bytes are kept in %s", path)
        records = await self._io(self.spool.records)
        for record in records:
            try:
                fd = await self._io(_open_data, self.spool.data_path(record.data))
            except AlluxioFuseError as e:
                log.error("an owed upload of %s has lost its data file (%s); its journal "
                          "record is left in %s", record.path, e, self.spool.root)
                continue
            staged = StagedFile(self.spool, self._io, record.data, fd, record.path, base=None,
                                mode=record.mode, uid=record.uid, gid=record.gid,
                                mtime_ns=record.mtime_ns or record.closed_ns)
            await staged.adopt(record)
            older = self._by_path.get(record.path)
            if older is not None:  # superseded by this record: the uploader drops it
                older.close(keep_data=True)
            self._by_path[record.path] = staged
            self.uploader.submit(record)
        if records:
            log.info("resuming %d uploads owed from before a restart", len(records))
        return len(records)

    async def shutdown(self) -> None:
        """Unmounted: owe what is still being written, then wait (``drain_timeout``) for
        every owed upload; what is left stays journaled for the next start."""
        for staged in list(self._by_path.values()):
            if isinstance(staged.life, Written) and staged.failed is not None:
                log.info("%s: open at unmount and incomplete (%s): never committed; its "
                         "previous version stays", staged.path, staged.failed)
            elif isinstance(staged.life, Written):
                try:
                    async with staged.lock:
                        await staged.fill_locked(self._fetcher(staged))
                        await self._journal(staged)
                except AlluxioFuseError as e:
                    log.error("%s: open at unmount and cannot be completed (%s); its bytes "
                              "are kept in %s", staged.path, e, self.spool.data_path(staged.name))
        self._drop_ready()
        try:
            await self.uploader.wait("", self.config.drain_timeout)
        except AlluxioFuseError:
            # The journal's count, as `alluxiofuse status` and the metrics give it: what
            # resumes at the next mount, queued here or not.
            owed = len(await self._io(owed_uploads, self.spool.root))
            log.error("%d uploads still owed after %ss; they resume at the next mount of "
                      "this source (spool %s)", owed, self.config.drain_timeout,
                      self.spool.root)

    def _fetcher(self, staged: StagedFile) -> FetchBase:
        base = staged.base
        path = staged.path

        async def fetch(offset: int, length: int) -> Data:
            if base is None:  # cannot happen: a new file has no base range to fetch
                raise NotFound(path)
            return await self.backend.read(path, offset, length, base)
        return fetch


def _as_mounted(done: Commit) -> FileStatus:
    """The committed file's status as the mount shows it: a data file linked into place
    is the spool's link too, one more than the file keeps once the spool lets go."""
    if done.linked and done.status.nlink is not None and done.status.nlink > 1:
        return dataclasses.replace(done.status, nlink=done.status.nlink - 1)
    return done.status


def _owner(staged: StagedFile) -> tuple[int, int] | None:
    if staged.uid is None or staged.gid is None:
        return None
    return staged.uid, staged.gid


def _extend(fd: int, size: int) -> None:
    os.ftruncate(fd, size)


def _open_data(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)
