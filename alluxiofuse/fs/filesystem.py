"""The mount's file semantics, free of FUSE: inodes, metadata cache, handles, changes.

``ops.py`` adapts this to pyfuse3; tests drive it (through ``ops``) without a kernel. Every
method raises only :mod:`alluxiofuse.errors` exceptions for conditions it understands.
State is re-read after every ``await``: another request may have changed it meanwhile.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import NoReturn

from cachetools import LRUCache, TTLCache

from alluxiofuse.backends.base import Backend
from alluxiofuse.config import MountConfig
from alluxiofuse.errors import (
    AlreadyExists,
    BackendUnavailable,
    DirectoryNotEmpty,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotFound,
    NotSupported,
    ReadOnly,
    StaleFile,
)
from alluxiofuse.flight import SingleFlight
from alluxiofuse.fs.handles import DirHandle, FileHandle, Prefetcher, Spawn, default_readahead
from alluxiofuse.fs.inodes import Inode, InodeTable
from alluxiofuse.fs.metacache import MISSING_BYTES, MetadataCache, join, parent_and_name
from alluxiofuse.fs.pages import PageCache, PageKey
from alluxiofuse.listing import Entry, Listing, ListingStream
from alluxiofuse.metrics import Metrics
from alluxiofuse.model import (
    NAME_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Attrs,
    Data,
    FileStatus,
    FsStats,
    Kind,
    valid_name,
)
from alluxiofuse.writes.staging import StagedFile
from alluxiofuse.writes.writes import Writes

log = logging.getLogger(__name__)

# An open this close to the furthest position opened so far continues an in-order streak
# (a few readers working through a listing together land a little behind or ahead).
_STREAK_DISTANCE = 4
# Opens in a row needed before files are fetched ahead.
_STREAK_START = 2
# Status misses in one directory after which it is listed rather than stat-ed per name.
_MISSES_BEFORE_LISTING = 2
# A file a listing says is this small (and within one page) has its full attributes
# fetched, where the backend can, with a read of its whole content that also tells its
# status (on S3 a GET, whose reply carries what a HEAD's does): the open and read that
# follow (a data loader's sample) then cost no request. Larger files are asked for their
# status alone: a stat should not fetch much more than the status.
_READ_WITH_STATUS_MAX = 256 * 1024

# How much longer than --negative-timeout a miss is remembered for SIGHUP: the kernel's
# timeout starts when the reply reaches it, a little after the daemon recorded the miss.
_NEGATIVE_MARGIN = 1.0

# Entry callback for readdir: (attributes, inode number, next offset) -> whether the
# kernel took it.
ReplyFn = Callable[[FileStatus | Entry, int, int], bool]

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


@dataclass
class _DirReadahead:
    """Where the opens of one directory's files have got to, and what is fetched ahead."""

    furthest: int  # the furthest listing position opened
    streak: int = -1  # opens in a row near ``furthest``
    fetched_to: int = 0  # positions before this are fetched (or being fetched) already

    def advance(self, index: int) -> bool:
        """Record an open at ``index``; whether the directory is being read in order."""
        if abs(index - self.furthest) <= _STREAK_DISTANCE:
            self.streak += 1
            self.furthest = max(index, self.furthest)
        else:
            self.streak, self.furthest, self.fetched_to = 0, index, 0
        return self.streak >= _STREAK_START


@dataclass(frozen=True)
class KernelCaches:
    """What the kernel may hold that a cache drop must make it forget too."""

    inodes: list[int]  # inodes whose attributes and pages it may cache
    misses: list[tuple[int, str]]  # negative entries it may cache: (directory inode, name)


class Filesystem:
    """One mounted tree; read-only when ``writes`` is None."""

    def __init__(
        self, config: MountConfig, backend: Backend, root: FileStatus, metrics: Metrics,
        spawn: Spawn, invalidate_attrs: Callable[[int], None] = lambda ino: None,
        writes: Writes | None = None,
    ) -> None:
        self.config = config
        self.writes = writes
        # The staged file each handle opened for writing (or opened while it was staged).
        self._staged: dict[int, StagedFile] = {}
        self._writers: set[int] = set()  # handles opened for writing: their close commits
        self._staged_inodes: dict[int, StagedFile] = {}  # inode -> staged file, while open
        self._invalidate_attrs = invalidate_attrs
        self.backend = backend
        self.inodes = InodeTable(root)
        self.meta = MetadataCache(
            attr_ttl=config.attr_timeout, negative_ttl=config.negative_timeout,
            dir_ttl=config.dir_timeout, max_bytes=config.metadata_cache_size,
        )
        self.pages = PageCache(config.page_cache_size, metrics)
        self._spawn = spawn
        self._prefetcher = Prefetcher(spawn, self.pages, config.prefetch_budget)
        self._max_readahead = (default_readahead(backend.span) if config.max_readahead is None
                               else config.max_readahead)
        # Each directory's read-ahead state.
        self._dir_streaks: LRUCache[str, _DirReadahead] = LRUCache(maxsize=1024)
        # Listing instead of stat-ing: misses per directory, and directories not to list.
        self._listings: SingleFlight[str, Listing] = SingleFlight()
        # Listings being fetched page by page for an opendir, read out as they come.
        self._streams: dict[str, ListingStream] = {}
        self._stats: SingleFlight[str, FileStatus] = SingleFlight()
        self._stat_misses: LRUCache[str, int] = LRUCache(maxsize=1024)
        self._unlisted: LRUCache[str, bool] = LRUCache(maxsize=1024)
        # The misses the kernel was told it may cache (negative entries), for SIGHUP:
        # only the kernel can drop them, and only by name. Bounded like the metadata
        # cache; one forgotten early still expires in the kernel on its own.
        self._misses: TTLCache[tuple[int, str], bool] | None = None
        if config.negative_timeout > 0 and config.metadata_cache_size >= MISSING_BYTES:
            self._misses = TTLCache(maxsize=config.metadata_cache_size // MISSING_BYTES,
                                    ttl=config.negative_timeout + _NEGATIVE_MARGIN)
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._handle_ids = itertools.count(1)
        metrics.watch_inodes(lambda: len(self.inodes))
        metrics.watch_metadata_cache(lambda: self.meta.nbytes, self.meta.max_bytes)
        metrics.watch_handles(lambda: len(self._files) + len(self._dirs))

    # -- names and attributes

    async def lookup(self, parent_ino: int, name: str) -> Inode:
        """The inode of ``name`` in directory ``parent_ino``, with one more kernel reference.
        NotFound is a negative entry the kernel caches for ``--negative-timeout``.

        A regular file a fresh listing names is answered from the listing, with no request,
        even where the listing lacks attributes the store keeps (S3 metadata): those
        attributes are then given with no attribute timeout, so the getattr that follows
        (the permission check of an open, a stat) fetches them. The kernel sends the
        lookups of one directory one at a time (libfuse before 3.17 never grants it
        parallel directory operations); getattrs of different files run side by side.
        """
        path = self._child_path(parent_ino, name)
        try:
            status = await self._stat(path, attrs=True, lookup=True)
        except NotFound:
            if self._misses is not None:
                self._misses[parent_ino, name] = True
            raise
        inode = self._learn(path, status)
        self.inodes.remember(inode)
        inode.attrs_given()
        return inode

    async def getattr(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        if not self.inodes.is_linked(inode):  # removed or replaced while open
            staged = self._staged_inodes.get(ino)
            if staged is not None:
                inode.status = staged.status(inode.status.name)
            inode.status = replace(inode.status, nlink=0)  # no name any more
            return inode
        status = await self._stat(inode.path, attrs=True)
        if status.kind is inode.status.kind:
            inode = self._learn(inode.path, status)
        inode.attrs_given()
        return inode

    def forget(self, ino: int, count: int) -> None:
        self.inodes.forget(ino, count)

    # -- cache control (SIGHUP, memory pressure)

    def drop_caches(self) -> KernelCaches:
        """Forget every cached status, listing and page, so that what is read next comes
        from the backend; files being written keep their bytes (they are in the spool).
        Returned: what the kernel may cache, to be dropped there too."""
        self.meta.clear()
        self.pages.clear()
        self._stat_misses.clear()
        misses: list[tuple[int, str]] = []
        if self._misses is not None:
            misses = list(self._misses)
            self._misses.clear()
        return KernelCaches(self.inodes.numbers(), misses)

    def resize_page_cache(self, capacity: int) -> None:
        """Bound the page cache to ``capacity`` bytes, and read-ahead in proportion."""
        c = self.config
        self.pages.resize(capacity)
        share = c.prefetch_budget * capacity // c.page_cache_size
        self._prefetcher.budget = max(c.page_size, share)

    async def readlink(self, ino: int) -> str:
        inode = self.inodes.get(ino)
        if inode.status.kind is not Kind.SYMLINK:
            raise InvalidArgument(f"{inode.path!r} is not a symbolic link")
        return await self.backend.readlink(inode.path)

    async def statfs(self) -> FsStats:
        return await self.backend.statfs()

    # -- directories

    async def opendir(self, ino: int) -> int:
        """A handle on the entries of directory ``ino``: a fresh cached listing, else one
        fetched now. A listing the source gives in pages (S3) is handed out as its pages
        come, once the first has (an error before then is the opendir's)."""
        inode = self.inodes.get(ino)
        if inode.status.kind is not Kind.DIRECTORY:
            raise NotADirectory(inode.path)
        path = inode.path
        staged = self.writes.children(path) if self.writes is not None else {}
        listing = self.meta.listing(path)
        entries: Sequence[FileStatus] | ListingStream
        if listing is None and not staged:
            stream = self._streams.get(path)
            if stream is None:
                stream = self._streams[path] = ListingStream()
                self._spawn(self._stream_listing, path, stream)
            await stream.wait_beyond(0)
            if stream.error is not None and not len(stream):
                raise stream.error
            entries = stream.listing if stream.listing is not None else stream
        else:
            if listing is None:
                listing = await self._list(path)
            entries = listing
            if staged:  # files being written: their own status, and new ones not uploaded
                entries = [s if s.name not in staged else staged[s.name].status(s.name)
                           for s in listing]
                entries += [f.status(name) for name, f in sorted(staged.items())
                            if listing.find(name) is None]
        fh = next(self._handle_ids)
        self._dirs[fh] = DirHandle(ino, path, entries)
        return fh

    async def readdir(self, fh: int, start: int, reply: ReplyFn) -> None:
        """Hand entries ``start``, ``start+1``, ... to ``reply`` until it refuses one (of a
        listing still arriving: of those that have come, once there is one beyond
        ``start``, or none will come).

        Offsets index the snapshot taken at opendir, so a listing that spans many reply
        buffers is never skipped or repeated. Each entry the kernel takes holds a lookup.
        """
        handle = self._dir(fh)
        entries = handle.entries
        if isinstance(entries, ListingStream):
            await entries.wait_beyond(start)
            if start >= len(entries) and entries.error is not None:
                raise entries.error
        for index in range(start, len(entries)):
            # The inode keeps its status as this listing's entry while nothing newer is known.
            listed: tuple[Listing, int] | None = None
            if isinstance(entries, ListingStream):
                listed = entries.locate(index)
            elif isinstance(entries, Listing):
                listed = (entries, index)
            else:  # a listing with files being written in it
                status = entries[index]
            entry = listed[0].entry(listed[1]) if listed is not None else status
            path = join(handle.path, entry.name)
            staged = self.writes.get(path) if self.writes is not None else None
            if listed is not None:
                # Kept as a row of the listing until the kernel asks for it (inodes.py).
                number = None if staged is not None else self.inodes.hold_row(
                    path, handle.path, *listed)
                if number is not None:
                    if not reply(entry, number, index + 1):
                        self.inodes.forget(number, 1)
                        break
                    continue
                status = listed[0][listed[1]]
            known = self.inodes.by_path(path)
            if staged is not None:  # being written: only its own size is right
                status, listed = staged.status(status.name), None
            elif known is not None and not (listed is not None and known.is_listed(*listed)):
                newer = self._attrs_of(known, status)
                if newer is None and known.status != status:
                    # Learned since the snapshot: never step back to the snapshot's older
                    # version (open handles of the newer one would turn stale).
                    newer = self.meta.status(path)
                if newer is not None:
                    status, listed = newer, None
            inode = self._learn(path, status, listed)
            if not reply(status, inode.ino, index + 1):
                self.inodes.discard_if_unused(inode)
                break
            self.inodes.remember(inode)
            inode.attrs_given()

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """A handle for ``ino``, and whether the kernel may keep its cached pages."""
        inode = self.inodes.get(ino)
        if inode.status.kind is Kind.DIRECTORY:
            raise IsADirectory(inode.path)
        writing = bool(flags & _WRITE_FLAGS)
        writes = self._writable() if writing else self.writes
        status = await self._stat(inode.path, attrs=writing)  # a commit keeps its attributes
        if status.kind is not inode.status.kind:
            raise StaleFile(f"{inode.path} was replaced by a {status.kind.value}")
        staged = writes.get(inode.path) if writes is not None else None
        if writing:
            assert writes is not None
            staged = await writes.open(inode.path, status)
            if flags & os.O_TRUNC and staged.size:
                await writes.truncate(staged, 0)
        if staged is not None:
            return self._open_staged(inode, staged, writing=writing), False
        self._learn(inode.path, status)
        if inode.attrs_version != status.version:
            # The kernel reads up to the size it holds: were that the old, larger size, it
            # would take this version's end for a short read and fill the rest with zeros.
            # Invalidated, its attributes are fetched again before the first read.
            self._invalidate_attrs(ino)
            inode.attrs_version = None
        keep_cache = inode.kernel_version == status.version
        inode.kernel_version = status.version
        handle = FileHandle(
            inode, status.version, backend=self.backend, pages=self.pages,
            page_size=self.config.page_size, max_readahead=self._max_readahead,
            prefetcher=self._prefetcher,
        )
        self._readahead_siblings(inode)
        if not keep_cache and not self.backend.warms:  # the first read follows at once
            handle.start()
        fh = next(self._handle_ids)
        self._files[fh] = handle
        return fh, keep_cache

    async def read(self, fh: int, offset: int, size: int) -> Data:
        staged = self._staged.get(fh)
        if staged is not None:
            assert self.writes is not None
            return await self.writes.read(staged, offset, size)
        handle = self._files.get(fh)
        if handle is None:
            raise StaleFile(f"file handle {fh} is not open")
        try:
            return await handle.read(offset, size)
        except StaleFile:
            self._changed_behind(handle.inode)
            raise

    def _changed_behind(self, inode: Inode) -> None:
        """A read found ``inode``'s file changed behind the mount: its cached status is
        old. Forgotten, the next open asks the source for the new version (and has the
        kernel refresh its attributes then) instead of failing like this read until
        ``--attr-timeout`` ran out. The kernel's attributes are left alone here: asked
        for again before the handle's next read, a removed file's would fail that read
        with ENOENT, which read(2) never returns."""
        if self.inodes.is_linked(inode):
            self.meta.forget(inode.path)

    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None:
            await handle.aclose()
        staged = self._staged.pop(fh, None)
        self._writers.discard(fh)
        if staged is not None and self.writes is not None:
            staged.handles -= 1
            if staged.handles == 0:
                for ino, known in list(self._staged_inodes.items()):
                    if known is staged:
                        del self._staged_inodes[ino]
            await self.writes.release(staged)

    def refuse_write(self, what: str) -> NoReturn:
        """Every change the mount does not make ends here."""
        self._writable()
        raise NotSupported(f"{what} is not supported")

    # -- changes

    async def create(
        self, parent_ino: int, name: str, mode: int, flags: int, owner: tuple[int, int],
    ) -> tuple[int, Inode]:
        """A new file ``name`` in ``parent_ino``, open; committed at its first flush."""
        writes = self._writable()
        path = self._new_path(parent_ino, name)
        existing = await self._status_or_none(path)
        if existing is not None:  # made meanwhile, or the kernel's view was stale
            if flags & os.O_EXCL:
                raise AlreadyExists(path)
            inode = self._learn(path, existing)
            self.inodes.remember(inode)
            fh, _ = await self.open(inode.ino, flags | os.O_WRONLY)
            return fh, inode
        if self.backend.writes.needs_parent:
            # Its directory may have been removed behind the mount: the commit could then
            # never land. (One local status more per create: cheap.)
            directory = parent_and_name(path)[0]
            if (await self._stat(directory)).kind is not Kind.DIRECTORY:
                raise NotADirectory(directory)
        staged = await writes.create(path, mode & 0o7777, *owner)
        self._forget(path)
        inode = self._learn(path, staged.status(name))
        self.inodes.remember(inode)
        inode.attrs_given()
        return self._open_staged(inode, staged, writing=True), inode

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        writes = self._writable()
        staged = self._staged.get(fh)
        if staged is None:
            raise InvalidArgument(f"file handle {fh} is not open for writing")
        await writes.write(staged, offset, data)
        return len(data)

    async def flush(self, fh: int, *, durable: bool = False) -> None:
        """close(2) (and fsync(2), ``durable``): commit what the handle's file holds."""
        staged = self._staged.get(fh)
        if staged is not None and self.writes is not None and (durable or fh in self._writers):
            await self._commit(staged, durable=durable)
        elif staged is None and durable and (handle := self._files.get(fh)) is not None:
            await self.backend.sync(handle.path)  # an earlier close may not have synced it

    async def setattr(self, ino: int, fh: int | None, size: int | None, attrs: Attrs) -> Inode:
        writes = self._writable()
        inode = self.inodes.get(ino)
        path = inode.path
        support = self.backend.writes
        if ((attrs.mode is not None and not support.modes)
                or ((attrs.uid, attrs.gid) != (None, None) and not support.owners)
                or ((attrs.atime_ns, attrs.mtime_ns) != (None, None) and not support.times)):
            raise NotSupported(f"{self.backend.description} does not keep this attribute")
        staged = self._staged.get(fh) if fh is not None else None
        if staged is None and self.inodes.is_linked(inode):
            staged = writes.get(path)
        if staged is None and size is not None:
            if inode.status.kind is not Kind.FILE:
                raise IsADirectory(path)
            staged = await writes.open(path, await self._stat(path, attrs=True))
        if staged is None:
            status = await self.backend.setattr(path, attrs)
            self.meta.put_status(path, status)
            self._learn(path, status)
            return inode
        staged.handles += 1  # held while this runs, so nothing closes it meanwhile
        try:
            if size is not None:
                await writes.truncate(staged, size)
            ufs_attrs = await writes.set_attrs(staged, attrs)
            if ufs_attrs != Attrs():
                staged.committed(await self.backend.setattr(path, ufs_attrs))
            if staged.handles == 1:  # truncate(2), chmod(2) by name: done at once
                await self._commit(staged)
        finally:
            staged.handles -= 1
            if staged.handles == 0:
                await writes.release(staged)
        if self.inodes.is_linked(inode):
            self._learn(path, staged.status(inode.status.name))
        return inode

    async def mkdir(self, parent_ino: int, name: str, mode: int, owner: tuple[int, int]) -> Inode:
        self._writable()
        path = self._new_path(parent_ino, name)
        await self._must_not_exist(path)
        status = await self.backend.mkdir(path, mode & 0o7777, owner)
        return self._made(path, status)

    async def symlink(
        self, parent_ino: int, name: str, target: str, owner: tuple[int, int],
    ) -> Inode:
        self._writable()
        if not self.backend.writes.symlinks:
            raise NotSupported(f"{self.backend.description} has no symbolic links")
        path = self._new_path(parent_ino, name)
        await self._must_not_exist(path)
        return self._made(path, await self.backend.symlink(path, target, owner))

    async def unlink(self, parent_ino: int, name: str) -> None:
        writes = self._writable()
        path = self._child_path(parent_ino, name)
        status = await self._stat(path)
        if status.kind is Kind.DIRECTORY:
            raise IsADirectory(path)
        async with writes.removing(path) as staged:
            try:
                await self.backend.unlink(path)
            except NotFound:
                if staged is None:  # else a new file not committed yet
                    raise
            writes.unlinked(path)
        self._removed(path)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        writes = self._writable()
        path = self._child_path(parent_ino, name)
        status = await self._stat(path)
        if status.kind is not Kind.DIRECTORY:
            raise NotADirectory(path)
        if any(True for _ in writes.under(path)):
            raise DirectoryNotEmpty(path)
        await self.backend.rmdir(path)
        self._removed(path, tree=True)

    async def rename(
        self, old_parent: int, old_name: str, new_parent: int, new_name: str, flags: int,
    ) -> None:
        writes = self._writable()
        old = self._child_path(old_parent, old_name)
        new = self._new_path(new_parent, new_name)
        self._check_rename_flags(flags)
        source = await self._stat(old)
        target = await self._status_or_none(new)
        if source.kind is Kind.DIRECTORY and new.startswith(old + "/"):
            raise InvalidArgument(f"cannot move {old} into itself")
        if old == new:
            return
        if target is None and flags & RENAME_EXCHANGE:
            raise NotFound(new)
        if target is not None and not flags & RENAME_EXCHANGE:
            if flags & RENAME_NOREPLACE:
                raise AlreadyExists(new)
            await self._check_replace(source, target, new)
        async with writes.moving(old, new):
            await self.backend.rename(old, new, flags)
            if flags & RENAME_EXCHANGE:
                swap = f"{old}\0exchange"  # a path no entry can have
                writes.renamed(old, swap)
                self.inodes.rename(old, swap)
                writes.renamed(new, old)
                self.inodes.rename(new, old)
                writes.renamed(swap, new)
                self.inodes.rename(swap, new)
            else:
                writes.renamed(old, new)
                self.inodes.rename(old, new)
        self._forget(old, tree=True)
        self._forget(new, tree=True)
        self._dir_changed(old, kernel=True)
        self._dir_changed(new, kernel=True)

    async def link(self, ino: int, parent_ino: int, name: str) -> Inode:
        self._writable()
        raise NotSupported("hard links are not supported")

    # -- change helpers

    def _writable(self) -> Writes:
        if self.writes is None:
            raise ReadOnly("the mount is read-only")
        return self.writes

    def _child_path(self, parent_ino: int, name: str) -> str:
        """The path of ``name`` in directory ``parent_ino``, if ``name`` can be one."""
        parent = self.inodes.get(parent_ino)
        if parent.status.kind is not Kind.DIRECTORY:
            raise NotADirectory(parent.path)
        if not valid_name(name):
            if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
                raise NameTooLong(name)
            raise InvalidArgument(f"not a file name: {name!r}")
        return join(parent.path, name)

    def _new_path(self, parent_ino: int, name: str) -> str:
        """The path of a new entry ``name`` in ``parent_ino``: one the backend can keep
        (else a new file's commit could never land, and its upload would be owed for ever)."""
        path = self._child_path(parent_ino, name)
        limit = self.backend.writes.path_max
        if limit is not None and len(path.encode("utf-8", "surrogateescape")) > limit:
            raise NameTooLong(f"{path!r}: {self.backend.description} keeps paths of up to "
                              f"{limit} bytes")
        return path

    async def _must_not_exist(self, path: str) -> None:
        if await self._status_or_none(path) is not None:
            raise AlreadyExists(path)

    async def _status_or_none(self, path: str) -> FileStatus | None:
        try:
            return await self._stat(path)
        except NotFound:
            return None

    def _open_staged(self, inode: Inode, staged: StagedFile, *, writing: bool) -> int:
        fh = next(self._handle_ids)
        self._staged[fh] = staged
        self._staged_inodes[inode.ino] = staged
        if writing:
            self._writers.add(fh)
        staged.handles += 1
        inode.kernel_version = None
        return fh

    async def _commit(self, staged: StagedFile, *, durable: bool = False) -> None:
        assert self.writes is not None
        # Tells ``committed`` of success, which forgets the directory's cached attributes:
        # the kernel may have taken them since the create, before the file was in it.
        if await self.writes.flush(staged, durable=durable) is not None:
            self._dir_changed(staged.path, kernel=True)

    def committed(self, path: str, status: FileStatus) -> None:
        """``path``'s new content is in the under-storage, as ``status``. (Its directory
        changed too: a local commit renames a new file into it.) Also called for uploads
        that drain once the kernel session is closed: nothing here may notify the kernel."""
        self._forget(path)
        self._dir_changed(path, kernel=False)
        self.meta.put_status(path, status)
        if self.inodes.by_path(path) is not None:
            self._learn(path, status)

    def _forget(self, path: str, *, tree: bool = False) -> None:
        """``path`` changed through the mount: drop what is cached about it. Its directory
        is being written: look names up there one by one from now on, rather than list
        it again after every change (tar x into a directory of 100 files listed it about
        50 times per file)."""
        self.meta.forget(path, tree=tree)
        self._unlisted[parent_and_name(path)[0]] = True

    def _dir_changed(self, path: str, *, kernel: bool) -> None:
        """An entry ``path`` was made, removed or renamed through the mount, so the mtime,
        ctime and link count of its directory changed in the under-storage: drop what the
        daemon caches of them and, with ``kernel`` (only while serving a request: the
        session is open), what the kernel does, so that the change shows at once."""
        parent = parent_and_name(path)[0]
        self.meta.forget(parent)  # its status, and the listing of its own parent
        inode = self.inodes.by_path(parent)
        if kernel and inode is not None:
            self._invalidate_attrs(inode.ino)
            inode.attrs_version = None

    def _made(self, path: str, status: FileStatus) -> Inode:
        self._forget(path)
        self._dir_changed(path, kernel=True)
        self.meta.put_status(path, status)
        inode = self._learn(path, status)
        self.inodes.remember(inode)
        inode.attrs_given()
        return inode

    def _removed(self, path: str, *, tree: bool = False) -> None:
        self._forget(path, tree=tree)
        self._dir_changed(path, kernel=True)
        self.meta.put_missing(path)
        self.inodes.unlink(path)

    def _check_rename_flags(self, flags: int) -> None:
        support = self.backend.writes
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or (
                flags & RENAME_NOREPLACE and flags & RENAME_EXCHANGE):
            raise InvalidArgument(f"rename flags {flags:#x}")
        if flags & RENAME_EXCHANGE and not support.rename_exchange:
            raise InvalidArgument(f"{self.backend.description} cannot exchange atomically")

    async def _check_replace(self, source: FileStatus, target: FileStatus, new: str) -> None:
        """The POSIX rules for a rename over an existing ``target``."""
        if target.kind is Kind.DIRECTORY and source.kind is not Kind.DIRECTORY:
            raise IsADirectory(new)
        if source.kind is Kind.DIRECTORY and target.kind is not Kind.DIRECTORY:
            raise NotADirectory(new)
        if target.kind is Kind.DIRECTORY:
            assert self.writes is not None
            if len(await self._list(new)) or any(True for _ in self.writes.under(new)):
                raise DirectoryNotEmpty(new)

    # -- internals

    def _readahead_siblings(self, inode: Inode) -> None:
        """Fetch the first pages of the next files of a directory read in order.

        ``cp -r``, ``tar``, ``sha256sum *`` and sequential data loaders open a directory's
        files in listing order, one after another (or a few at a time). Once a few opens
        in a row land within a few places of the furthest one yet, the next files' first
        pages are fetched ahead: a window that doubles with the streak, up to
        ``dir_readahead`` files, refilled in one batch whenever the reader gets within half
        a window of its end (one worker-thread job per batch). A backend whose data the
        operating system caches (a local directory) is only asked to warm the files, and
        the reads are then answered from that cache without a thread. Shuffled access
        almost never builds a streak, so it costs (almost) nothing. Only directories listed
        recently take part: nothing here asks the backend for metadata. Pages are keyed by
        the inode number each file has, or will get when the kernel looks it up.
        """
        limit = self.config.dir_readahead
        parent, name = parent_and_name(inode.path)
        listing = self.meta.recent_listing(parent) if limit else None
        index = listing.find(name) if listing is not None else None
        if listing is None or index is None:
            return
        state = self._dir_streaks.get(parent) or _DirReadahead(index)
        self._dir_streaks[parent] = state
        if not state.advance(index) or state.fetched_to >= len(listing):
            return
        window = min(limit, 2 ** (state.streak + 2))  # 16 files once a streak is established
        if state.fetched_to - state.furthest > window // 2:
            return  # enough is on its way
        start = max(state.fetched_to, state.furthest)  # from the newest open on
        entries = listing[start:start + window]
        files = []  # (listing position, path, status) of the files worth fetching
        for position, status in enumerate(entries, start):
            child = join(parent, status.name)
            known = self.inodes.by_path(child)
            # The file being opened fetches its own first page as a reader's (``start``):
            # in a batch too, a read of it that ended before the batch began would be
            # fetched a second time.
            opening = child == inode.path and not self.backend.warms
            # Nor a file whose pages the kernel holds from an earlier open of this version:
            # its open will tell the kernel to keep them, and nothing will read it here.
            if (status.kind is Kind.FILE and status.size and not opening
                    and (known is None or (known.status.version == status.version
                                           and known.kernel_version != status.version))):
                files.append((position, child, status))
        reads = [(child, 0, min(self.config.page_size, s.size), s.version)
                 for _, child, s in files]
        if self.backend.warms:  # the kernel caches the files; reads then take them inline
            state.fetched_to = start + len(entries)
            if reads:
                self._prefetcher.spawn(self.backend.warm, reads)
            return
        keys = [PageKey(self.inodes.number_for(child), s.version, 0) for _, child, s in files]
        # A small file whose listed status lacks attributes the store keeps (S3) is asked
        # for its status before it is read (the getattr of the open's permission check):
        # the request that tells status and content at once is the one made ahead.
        taken, plain = len(files), []
        for i, ((_, child, status), key) in enumerate(zip(files, keys, strict=True)):
            if not self._read_with_status(child, status):
                plain.append(i)
                continue
            job = partial(self._stats.run, child,
                          partial(self._fetch_status_and_content, child, status.size,
                                  ahead=True))
            if not self._prefetcher.run(key, status.size, job):
                taken = i
                break
        plain = [i for i in plain if i < taken]
        read_of = {keys[i]: reads[i] for i in plain}
        done = self._prefetcher.prefetch_many(
            [(keys[i], reads[i][2]) for i in plain],
            lambda wanted: self.backend.read_many([read_of[key] for key in wanted]),
        )
        if done < len(plain):
            taken = plain[done]
        # Had the budget run out, the next open tries again from the first file not taken.
        state.fetched_to = start + len(entries) if taken == len(files) else files[taken][0]

    async def _stat(self, path: str, *, attrs: bool = False, lookup: bool = False) -> FileStatus:
        """Fresh-enough status of ``path``: from the metadata cache, else the backend (what
        it can answer without waiting first, on the event loop). With ``attrs`` (what
        the kernel is given as attributes), a status from a listing that lacks
        attributes the store keeps (``complete`` False) is asked of the backend again.

        After ``_MISSES_BEFORE_LISTING`` misses in one directory, the directory is listed
        instead: one call then answers every later lookup in it (one LIST instead of a
        HEAD per file on object stores; one worker-thread hop instead of one per file
        locally). Directories too large for the metadata cache are not listed this way.
        With ``attrs``, a small file a listing named is read with its status (see
        ``_READ_WITH_STATUS_MAX``). For a ``lookup``, a regular file's status from a
        listing will do (see ``lookup``).
        """
        if self.writes is not None and (staged := self.writes.get(path)) is not None:
            return staged.status(parent_and_name(path)[1])
        status = self._cached(path, attrs=attrs, lookup=lookup)
        if status is not None:
            return status
        if self.meta.is_missing(path):
            raise NotFound(path)
        try:
            status = self.backend.stat_nowait(path)
        except NotFound:
            self.meta.put_missing(path)
            raise
        if status is not None:
            self.meta.put_status(path, status)
            return status
        parent = parent_and_name(path)[0]
        if path and self._worth_listing(parent):
            try:
                await self._list(parent)
            except Exception as e:  # only an optimisation: stat the name as usual
                log.debug("listing %r instead of a stat failed: %r", parent, e)
                self._unlisted[parent] = True
            # Answer through the caches the listing filled, so that attributes are never
            # older than --attr-timeout, whatever --dir-timeout is.
            status = self._cached(path, attrs=attrs, lookup=lookup)
            if status is not None:
                return status
            if self.meta.is_missing(path):
                raise NotFound(path)
        fetch = partial(self._fetch_status, path)
        listed = self.meta.status(path) if attrs else None
        if (listed is not None and self._read_with_status(path, listed)
                # not fetched ahead already (directory read-ahead): then the status alone
                and PageKey(self.inodes.number_for(path), listed.version, 0) not in self.pages):
            fetch = partial(self._fetch_status_and_content, path, listed.size)
        status, _ = await self._stats.run(path, fetch)
        return status

    def _read_with_status(self, path: str, listed: FileStatus) -> bool:
        """Whether file ``path``, as a listing names it, is small enough to be read whole
        when its full status is asked for (see ``_READ_WITH_STATUS_MAX``), and has none
        cached yet."""
        return (listed.kind is Kind.FILE and not listed.complete
                and 0 < listed.size <= min(_READ_WITH_STATUS_MAX, self.config.page_size)
                and self._cached(path, attrs=True) is None)

    async def _fetch_status_and_content(
        self, path: str, size: int, *, ahead: bool = False,
    ) -> FileStatus:
        """``path``'s status, and its content (``size`` bytes, as listed) into the page
        cache as the first page of the version read, if the backend tells both at once
        (``ahead``: for read-ahead)."""
        try:
            got = await self.backend.stat_and_read(path, size, ahead=ahead)
        except NotFound:  # removed, or a directory now: the ordinary way tells which
            got = None
        if got is None:
            return await self._fetch_status(path)
        status, data = got
        self.meta.put_status(path, status)
        if len(data) == status.size:  # the whole file, as one page: it has not grown
            key = PageKey(self.inodes.number_for(path), status.version, 0)
            await self.pages.get(key, partial(_given, data), expected=len(data), prefetch=True)
        return status

    async def _fetch_status(self, path: str) -> FileStatus:
        """Ask the backend for ``path``'s status, once for concurrent callers: a directory
        every reader walks through (the root) would otherwise be asked for by each of them
        the moment its attributes expire."""
        try:
            status = await self.backend.stat(path)
        except NotFound:
            self.meta.put_missing(path)
            raise
        self.meta.put_status(path, status)
        return status

    def _cached(self, path: str, *, attrs: bool, lookup: bool = False) -> FileStatus | None:
        status = self.meta.status(path)
        if status is None or status.complete or not attrs:
            return status
        return status if lookup and status.kind is Kind.FILE else None

    @staticmethod
    def _attrs_of(known: Inode, status: FileStatus) -> FileStatus | None:
        """``known``'s complete status when ``status`` (from a listing) lacks attributes
        and names the same version: on S3 the metadata cannot change without a new
        version (a copy of the object onto itself)."""
        if status.complete or not known.status.complete:
            return None
        same = known.status.version == status.version and known.status.kind is status.kind
        if not same:
            return None
        # Under the listing's name: a renamed inode keeps the status of its old name.
        return replace(known.status, name=status.name)

    def _worth_listing(self, parent: str) -> bool:
        if parent in self._unlisted:
            return False
        misses = self._stat_misses.get(parent, 0) + 1
        self._stat_misses[parent] = misses
        return misses >= _MISSES_BEFORE_LISTING

    async def _list(self, path: str) -> Listing:
        """The listing of directory ``path``: cached, or fetched once for concurrent callers."""
        listing = self.meta.listing(path)
        if listing is None:  # one larger than the whole cache is served all the same
            listing, _ = await self._listings.run(path, partial(self._fetch_listing, path))
        return listing

    async def _stream_listing(self, path: str, stream: ListingStream) -> None:
        """Fetch the listing of ``path`` for ``stream`` (or wait for the fetch in progress),
        page by page; ``stream`` ends with the listing or the error."""
        try:
            listing, _ = await self._listings.run(
                path, partial(self._fetch_listing, path, stream))
        except Exception as e:  # the stream's readers get it
            stream.finish(error=e)
        except BaseException:
            stream.finish(error=BackendUnavailable(f"listing {path!r} was stopped"))
            raise
        else:
            stream.finish(listing)
        finally:
            if self._streams.get(path) is stream:
                del self._streams[path]

    async def _fetch_listing(self, path: str, stream: ListingStream | None = None) -> Listing:
        """Fetch the listing of ``path`` and cache it; each page is also handed to
        ``stream`` as it comes."""
        pages: list[Listing] = []
        async with contextlib.aclosing(self.backend.list_pages(path)) as fetched:
            async for page in fetched:
                pages.append(page if isinstance(page, Listing) else Listing(page))
                if stream is not None:
                    stream.add(pages[-1])
        whole = pages[0] if len(pages) == 1 else Listing.joined(pages)
        listing = self.meta.put_listing(path, whole)
        self._stat_misses.pop(path, None)
        if listing.nbytes > self.meta.max_bytes:
            self._unlisted[path] = True
        return listing

    def _learn(
        self, path: str, status: FileStatus, listed: tuple[Listing, int] | None = None,
    ) -> Inode:
        """Record ``status`` (entry ``listed[1]`` of listing ``listed[0]``, if given) for
        ``path``; a new version of a file drops its cached pages."""
        known = self.inodes.by_path(path)
        old_version = known.status.version if known is not None else None
        inode = self.inodes.learn(path, status, listed)
        if inode is known and old_version != status.version:
            self.pages.drop_file(inode.ino)
        return inode

    def _dir(self, fh: int) -> DirHandle:
        handle = self._dirs.get(fh)
        if handle is None:
            raise StaleFile(f"directory handle {fh} is not open")
        return handle


async def _given(data: Data) -> Data:
    """``data``, as a page fetch that has already happened."""
    return data
