"""The mount's file semantics, free of FUSE: names, attributes, open files and changes.

Statuses and listings come through ``statuses.py``, open directories are ``directories.py``,
what is fetched ahead is ``readahead.py``, open handles are ``handles.py`` and replies are
built by ``replies.py``; this module ties them to the inodes.

``ops.py`` adapts this to pyfuse3; tests drive it (through ``ops``) without a kernel. Every
method raises only :mod:`alluxiofuse.errors` exceptions for conditions it understands.
State is re-read after every ``await``: another request may have changed it meanwhile.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NoReturn

from alluxiofuse.backends.base import Backend
from alluxiofuse.config import MountConfig
from alluxiofuse.errors import (
    AlreadyExists,
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
from alluxiofuse.fs.directories import Directories, ReplyFn
from alluxiofuse.fs.diskreads import DiskReads
from alluxiofuse.fs.handles import DirHandle, FileHandle, HandleTable, StagedHandle
from alluxiofuse.fs.inodes import Inode, InodeTable
from alluxiofuse.fs.metacache import MetadataCache, join, parent_and_name
from alluxiofuse.fs.pages import PageCache
from alluxiofuse.fs.readahead import DirectoryReadahead, Prefetcher, Spawn, default_readahead
from alluxiofuse.fs.replies import Attributes, NegativeEntry, Replies, Unimplemented
from alluxiofuse.fs.statuses import Statuses
from alluxiofuse.listing import Listing
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

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


@dataclass(frozen=True)
class KernelCaches:
    """What the kernel may hold that a cache drop must make it forget too."""

    inodes: list[int]  # inodes whose attributes and pages it may cache
    misses: list[tuple[int, str]]  # negative entries it may cache: (directory inode, name)


class Filesystem:
    """One mounted tree; read-only when ``writes`` is None, else told by ``writes`` of
    each file it commits."""

    def __init__(
        self, config: MountConfig, backend: Backend, root: FileStatus, metrics: Metrics,
        spawn: Spawn, invalidate_attrs: Callable[[int], None] = lambda ino: None,
        writes: Writes | None = None, disk: DiskReads | None = None,
    ) -> None:
        self.config = config
        self.writes = writes
        if writes is not None:
            writes.when_committed(self.committed)
        self._invalidate_attrs = invalidate_attrs
        self.backend = backend
        self.inodes = InodeTable(root)
        self.meta = MetadataCache(
            attr_ttl=config.attr_timeout, negative_ttl=config.negative_timeout,
            dir_ttl=config.dir_timeout, max_bytes=config.metadata_cache_size,
        )
        self.pages = PageCache(config.page_cache_size, metrics)
        self.disk = disk
        self.statuses = Statuses(config, backend, self.meta, self.pages, self.inodes, writes,
                                 spawn, disk)
        self._prefetcher = Prefetcher(spawn, self.pages, config.prefetch_budget)
        self._dir_readahead = DirectoryReadahead(config, backend, self.inodes, self.meta,
                                                 self.statuses, self._prefetcher, disk)
        self.replies = Replies(config)
        self._directories = Directories(self.inodes, self.meta, self.statuses, writes,
                                        self._learn, self.replies)
        self._max_readahead = (default_readahead(backend.span) if config.max_readahead is None
                               else config.max_readahead)
        self._handles = HandleTable()
        metrics.watch_inodes(lambda: len(self.inodes))
        metrics.watch_metadata_cache(lambda: self.meta.nbytes, self.meta.max_bytes)
        metrics.watch_handles(lambda: len(self._handles))

    # -- names and attributes

    async def lookup(self, parent_ino: int, name: str) -> Attributes | NegativeEntry:
        """The inode of ``name`` in directory ``parent_ino``, with one more kernel reference.
        A missing name is a negative entry the kernel caches for ``--negative-timeout``
        (NotFound when that is 0).

        A regular file a fresh listing names is answered from the listing, with no request,
        even where the listing lacks attributes the store keeps (S3 metadata): those
        attributes are then given with no attribute timeout, so the getattr that follows
        (the permission check of an open, a stat) fetches them. The kernel sends the
        lookups of one directory one at a time (libfuse before 3.17 never grants it
        parallel directory operations); getattrs of different files run side by side.
        """
        try:
            inode = await self._lookup(parent_ino, name)
        except NotFound:
            negative = self.replies.negative(parent_ino, name)
            if negative is None:
                raise
            return negative
        return self._attributes(inode)

    async def _lookup(self, parent_ino: int, name: str) -> Inode:
        path = self._child_path(parent_ino, name)
        status = await self.statuses.stat(path, attrs=True, lookup=True)
        inode = self._learn(path, status)
        self.inodes.remember(inode)
        inode.attrs_given()
        return inode

    async def getattr(self, ino: int) -> Attributes:
        return self._attributes(await self._getattr(ino))

    async def _getattr(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        if not self.inodes.is_linked(inode):  # removed or replaced while open
            staged = self._handles.staged(ino)
            if staged is not None:
                inode.status = staged.status(inode.status.name)
            inode.status = replace(inode.status, nlink=0)  # no name any more
            return inode
        status = await self.statuses.stat(inode.path, attrs=True)
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
        self.statuses.clear_misses()
        return KernelCaches(self.inodes.numbers(), self.replies.take_misses())

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
        """A handle on the entries of directory ``ino`` (see ``Directories.open``)."""
        handle = await self._directories.open(ino)
        return self._handles.add(handle)

    async def readdir(self, fh: int, start: int, reply: ReplyFn) -> None:
        """Hand entries from ``start`` on to ``reply`` (see ``Directories.read``)."""
        await self._directories.read(self._dir(fh), start, reply)

    def releasedir(self, fh: int) -> None:
        if isinstance(self._handles.get(fh), DirHandle):
            self._handles.remove(fh)

    # -- files

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """A handle for ``ino``, and whether the kernel may keep its cached pages."""
        inode = self.inodes.get(ino)
        if inode.status.kind is Kind.DIRECTORY:
            raise IsADirectory(inode.path)
        writing = bool(flags & _WRITE_FLAGS)
        writes = self._writable() if writing else self.writes
        # A commit keeps its attributes: a file opened for writing needs them whole.
        status = await self.statuses.stat(inode.path, attrs=writing)
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
            prefetcher=self._prefetcher, disk=self.disk,
        )
        self._dir_readahead.opened(inode)
        if not keep_cache and not self.backend.warms:  # the first read follows at once
            handle.start()
        return self._handles.add(handle), keep_cache

    async def read(self, fh: int, offset: int, size: int) -> Data:
        match self._handles.get(fh):
            case StagedHandle(staged=staged):
                assert self.writes is not None
                return await self.writes.read(staged, offset, size)
            case FileHandle() as handle:
                try:
                    return await handle.read(offset, size)
                except StaleFile:
                    self._changed_behind(handle.inode)
                    raise
            case _:
                raise StaleFile(f"file handle {fh} is not open")

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
        match self._handles.get(fh):
            case FileHandle() as handle:
                self._handles.remove(fh)
                await handle.aclose()
            case StagedHandle(staged=staged):
                self._handles.remove(fh)
                assert self.writes is not None
                staged.handles -= 1
                await self.writes.release(staged)

    def refuse_write(self, what: str) -> NoReturn:
        """Every change the mount does not make ends here."""
        self._writable()
        raise NotSupported(f"{what} is not supported")

    # -- changes

    async def create(
        self, parent_ino: int, name: str, mode: int, flags: int, owner: tuple[int, int],
    ) -> tuple[int, Attributes]:
        """A new file ``name`` in ``parent_ino``, open; committed at its first flush."""
        fh, inode = await self._create(parent_ino, name, mode, flags, owner)
        return fh, self._attributes(inode)

    async def mknod(
        self, parent_ino: int, name: str, mode: int, rdev: int, owner: tuple[int, int],
    ) -> Attributes:
        """An empty regular file, committed at once; or a FIFO, socket or device node,
        where the source keeps them (a local directory)."""
        if not stat.S_ISREG(mode):
            self._writable()
            if not self.backend.writes.nodes:
                raise NotSupported(f"{self.backend.description} keeps no FIFOs, sockets or "
                                   "devices")
            path = self._new_path(parent_ino, name)
            await self._must_not_exist(path)
            status = await self.backend.mknod(path, mode, rdev, owner)
            return self._attributes(self._made(path, status))
        fh, inode = await self._create(parent_ino, name, mode, os.O_WRONLY | os.O_EXCL, owner)
        try:
            await self.flush(fh)
        finally:
            await self.release(fh)
        return self._attributes(inode)

    async def _create(
        self, parent_ino: int, name: str, mode: int, flags: int, owner: tuple[int, int],
    ) -> tuple[int, Inode]:
        writes = self._writable()
        path = self._new_path(parent_ino, name)
        existing = await self.statuses.status_or_none(path)
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
            if (await self.statuses.stat(directory)).kind is not Kind.DIRECTORY:
                raise NotADirectory(directory)
        staged = await writes.create(path, mode & 0o7777, *owner)
        self.statuses.changed(path)
        inode = self._learn(path, staged.status(name))
        self.inodes.remember(inode)
        inode.attrs_given()
        return self._open_staged(inode, staged, writing=True), inode

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        writes = self._writable()
        handle = self._handles.get(fh)
        if not isinstance(handle, StagedHandle):
            raise InvalidArgument(f"file handle {fh} is not open for writing")
        await writes.write(handle.staged, offset, data)
        return len(data)

    async def flush(self, fh: int, *, durable: bool = False) -> None:
        """close(2) (and fsync(2), ``durable``): commit what the handle's file holds.

        A read-only mount does not implement them: told so, the kernel stops sending a
        flush at every close, and saves that round trip."""
        if self.writes is None:
            raise Unimplemented("flush of a read-only mount")
        match self._handles.get(fh):
            case StagedHandle() as handle if durable or handle.writing:
                await self._commit(handle.staged, durable=durable)
            case FileHandle() as handle if durable:
                await self.backend.sync(handle.path)  # an earlier close may not have synced it

    async def setattr(
        self, ino: int, fh: int | None, size: int | None, attrs: Attrs,
    ) -> Attributes:
        return self._attributes(await self._setattr(ino, fh, size, attrs))

    async def _setattr(self, ino: int, fh: int | None, size: int | None, attrs: Attrs) -> Inode:
        writes = self._writable()
        inode = self.inodes.get(ino)
        path = inode.path
        support = self.backend.writes
        if ((attrs.mode is not None and not support.modes)
                or ((attrs.uid, attrs.gid) != (None, None) and not support.owners)
                or ((attrs.atime_ns, attrs.mtime_ns) != (None, None) and not support.times)):
            raise NotSupported(f"{self.backend.description} does not keep this attribute")
        handle = self._handles.get(fh) if fh is not None else None
        staged = handle.staged if isinstance(handle, StagedHandle) else None
        if staged is None and self.inodes.is_linked(inode):
            staged = writes.get(path)
        if staged is None and size is not None:
            if inode.status.kind is not Kind.FILE:
                raise IsADirectory(path)
            staged = await writes.open(path, await self.statuses.stat(path, attrs=True))
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
                staged.rebased(await self.backend.setattr(path, ufs_attrs))
            if staged.handles == 1:  # truncate(2), chmod(2) by name: done at once
                await self._commit(staged)
        finally:
            staged.handles -= 1
            if staged.handles == 0:
                await writes.release(staged)
        if self.inodes.is_linked(inode):
            self._learn(path, staged.status(inode.status.name))
        return inode

    async def mkdir(
        self, parent_ino: int, name: str, mode: int, owner: tuple[int, int],
    ) -> Attributes:
        self._writable()
        path = self._new_path(parent_ino, name)
        await self._must_not_exist(path)
        status = await self.backend.mkdir(path, mode & 0o7777, owner)
        return self._attributes(self._made(path, status))

    async def symlink(
        self, parent_ino: int, name: str, target: str, owner: tuple[int, int],
    ) -> Attributes:
        self._writable()
        if not self.backend.writes.symlinks:
            raise NotSupported(f"{self.backend.description} has no symbolic links")
        path = self._new_path(parent_ino, name)
        await self._must_not_exist(path)
        return self._attributes(self._made(path, await self.backend.symlink(path, target, owner)))

    async def unlink(self, parent_ino: int, name: str) -> None:
        writes = self._writable()
        path = self._child_path(parent_ino, name)
        status = await self.statuses.stat(path)
        if status.kind is Kind.DIRECTORY:
            raise IsADirectory(path)
        await self._commit_for_other_names(path)
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
        status = await self.statuses.stat(path)
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
        source = await self.statuses.stat(old)
        target = await self.statuses.status_or_none(new)
        if source.kind is Kind.DIRECTORY and new.startswith(old + "/"):
            raise InvalidArgument(f"cannot move {old} into itself")
        if old == new:
            return
        if target is None and flags & RENAME_EXCHANGE:
            raise NotFound(new)
        replaced = None
        if target is not None and not flags & RENAME_EXCHANGE:
            if flags & RENAME_NOREPLACE:
                raise AlreadyExists(new)
            await self._check_replace(source, target, new)
            replaced = self.inodes.by_path(new)
            await self._commit_for_other_names(new)
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
        self.statuses.changed(old, tree=True)
        self.statuses.changed(new, tree=True)
        self._dir_changed(old, kernel=True)
        self._dir_changed(new, kernel=True)
        if replaced is not None:
            self._name_gone(replaced)

    async def link(self, ino: int, parent_ino: int, name: str) -> Attributes:
        """One more name for a file, where the source keeps hard links (a local directory):
        both names are one inode from then on. A file being written is committed first, so
        that the new name is of the file as it stands."""
        writes = self._writable()
        if not self.backend.writes.links:
            raise NotSupported(f"{self.backend.description} has no hard links")
        inode = self.inodes.get(ino)
        if not self.inodes.is_linked(inode):
            raise NotFound(f"{inode.path} was removed")
        path = self._new_path(parent_ino, name)
        await self._must_not_exist(path)
        staged = writes.get(inode.path)
        if staged is not None:
            await self._commit(staged, durable=False)
        status = await self.backend.link(inode.path, path)
        for known in inode.names:  # their link count and ctime changed
            self.statuses.changed(known)
        self.statuses.changed(path)
        self._dir_changed(path, kernel=True)
        self.meta.put_status(path, status)
        self.inodes.add_name(inode, path, status)
        self.inodes.remember(inode)
        inode.attrs_given()
        return self._attributes(inode)

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
        if await self.statuses.status_or_none(path) is not None:
            raise AlreadyExists(path)

    def _open_staged(self, inode: Inode, staged: StagedFile, *, writing: bool) -> int:
        fh = self._handles.add(StagedHandle(inode.ino, staged, writing))
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
        self.statuses.changed(path)
        self._dir_changed(path, kernel=False)
        self.meta.put_status(path, status)
        if self.inodes.by_path(path) is not None:
            self._learn(path, status)

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
        self.statuses.changed(path)
        self._dir_changed(path, kernel=True)
        self.meta.put_status(path, status)
        inode = self._learn(path, status)
        self.inodes.remember(inode)
        inode.attrs_given()
        return inode

    def _removed(self, path: str, *, tree: bool = False) -> None:
        self.statuses.changed(path, tree=tree)
        self._dir_changed(path, kernel=True)
        self.meta.put_missing(path)
        inode = self.inodes.by_path(path)
        self.inodes.unlink(path)
        if inode is not None:
            self._name_gone(inode)

    async def _commit_for_other_names(self, path: str) -> None:
        """``path`` is about to go (removed, or renamed over) while its file may live on
        under other names (hard links): what was written through it and not committed
        yet is theirs too, so it is committed now."""
        inode = self.inodes.by_path(path)
        staged = self.writes.get(path) if self.writes is not None else None
        if inode is not None and inode.aliases and staged is not None:
            await self._commit(staged, durable=False)

    def _name_gone(self, inode: Inode) -> None:
        """One of ``inode``'s names is gone; if it has others, they name it still, with one
        link fewer and a new ctime, which the kernel and the caches must hear of."""
        if self.inodes.is_linked(inode):
            for name in inode.names:
                self.statuses.changed(name)
            self._invalidate_attrs(inode.ino)
            inode.attrs_version = None

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
            if len(await self.statuses.list(new)) or any(True for _ in self.writes.under(new)):
                raise DirectoryNotEmpty(new)

    # -- internals

    def _attributes(self, inode: Inode) -> Attributes:
        return self.replies.attributes(inode.ino, inode.status)

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
        handle = self._handles.get(fh)
        if not isinstance(handle, DirHandle):
            raise StaleFile(f"directory handle {fh} is not open")
        return handle

