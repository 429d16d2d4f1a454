"""The mount's file semantics, free of FUSE: inodes, metadata cache, handles, read-only rules.

``ops.py`` adapts this to pyfuse3; tests drive it (through ``ops``) without a kernel. Every
method raises only :mod:`alluxiofuse.errors` exceptions for conditions it understands.
State is re-read after every ``await``: another request may have changed it meanwhile.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import NoReturn

from alluxiofuse.backends.base import Backend
from alluxiofuse.config import MountConfig
from alluxiofuse.errors import (
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotFound,
    ReadOnly,
    StaleFile,
)
from alluxiofuse.handles import DirHandle, FileHandle, Prefetcher, Spawn
from alluxiofuse.inodes import Inode, InodeTable
from alluxiofuse.metacache import MetadataCache, join
from alluxiofuse.metrics import Metrics
from alluxiofuse.model import NAME_MAX, FileStatus, FsStats, Kind, valid_name
from alluxiofuse.pages import PageCache

# Entry callback for readdir: (status, inode, next offset) -> whether the kernel took it.
ReplyFn = Callable[[FileStatus, Inode, int], bool]

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


class Filesystem:
    """One mounted tree, read-only."""

    def __init__(
        self, config: MountConfig, backend: Backend, root: FileStatus, metrics: Metrics,
        spawn: Spawn,
    ) -> None:
        self.config = config
        self.backend = backend
        self.inodes = InodeTable(root)
        self.meta = MetadataCache(
            attr_ttl=config.attr_timeout, negative_ttl=config.negative_timeout,
            dir_ttl=config.dir_timeout, max_entries=config.metadata_cache_entries,
        )
        self.pages = PageCache(config.page_cache_size, metrics)
        self._prefetcher = Prefetcher(spawn, config.prefetch_budget)
        self._metrics = metrics
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._handle_ids = itertools.count(1)

    # -- names and attributes

    async def lookup(self, parent_ino: int, name: str) -> Inode:
        """The inode of ``name`` in directory ``parent_ino``, with one more kernel reference."""
        parent = self.inodes.get(parent_ino)
        if parent.status.kind is not Kind.DIRECTORY:
            raise NotADirectory(parent.path)
        if not valid_name(name):
            if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
                raise NameTooLong(name)
            raise InvalidArgument(f"not a file name: {name!r}")
        path = join(parent.path, name)
        inode = self._learn(path, await self._stat(path))
        self.inodes.remember(inode)
        self._metrics.inodes.set(len(self.inodes))
        return inode

    async def getattr(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        status = await self._stat(inode.path)
        return self._learn(inode.path, status) if status.kind is inode.status.kind else inode

    def forget(self, ino: int, count: int) -> None:
        self.inodes.forget(ino, count)
        self._metrics.inodes.set(len(self.inodes))

    async def readlink(self, ino: int) -> str:
        inode = self.inodes.get(ino)
        if inode.status.kind is not Kind.SYMLINK:
            raise InvalidArgument(f"{inode.path!r} is not a symbolic link")
        return await self.backend.readlink(inode.path)

    async def statfs(self) -> FsStats:
        return await self.backend.statfs()

    # -- directories

    async def opendir(self, ino: int) -> int:
        inode = self.inodes.get(ino)
        if inode.status.kind is not Kind.DIRECTORY:
            raise NotADirectory(inode.path)
        entries = self.meta.listing(inode.path)
        if entries is None:
            entries = await self.backend.list(inode.path)
            self.meta.put_listing(inode.path, entries)
        fh = next(self._handle_ids)
        self._dirs[fh] = DirHandle(ino, inode.path, sorted(entries, key=lambda e: e.name))
        self._count_handles()
        return fh

    def readdir(self, fh: int, start: int, reply: ReplyFn) -> None:
        """Hand entries ``start``, ``start+1``, ... to ``reply`` until it refuses one.

        Offsets index the snapshot taken at opendir, so a listing that spans many reply
        buffers is never skipped or repeated. Each entry the kernel takes holds a lookup.
        """
        handle = self._dir(fh)
        for index in range(start, len(handle.entries)):
            status = handle.entries[index]
            inode = self._learn(join(handle.path, status.name), status)
            if not reply(status, inode, index + 1):
                self.inodes.discard_if_unused(inode)
                break
            self.inodes.remember(inode)
        self._metrics.inodes.set(len(self.inodes))

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)
        self._count_handles()

    # -- files

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """A handle for reading ``ino``, and whether the kernel may keep its cached pages."""
        if flags & _WRITE_FLAGS:
            raise ReadOnly("the mount is read-only")
        inode = self.inodes.get(ino)
        if inode.status.kind is Kind.DIRECTORY:
            raise IsADirectory(inode.path)
        status = await self._stat(inode.path)
        if status.kind is not inode.status.kind:
            raise StaleFile(f"{inode.path} was replaced by a {status.kind.value}")
        self._learn(inode.path, status)
        keep_cache = inode.kernel_version == status.version
        inode.kernel_version = status.version
        handle = FileHandle(
            inode, status.version, backend=self.backend, pages=self.pages,
            page_size=self.config.page_size, max_readahead=self.config.max_readahead,
            prefetcher=self._prefetcher,
        )
        if not keep_cache:  # the kernel will ask for the first page right away
            handle.start()
        fh = next(self._handle_ids)
        self._files[fh] = handle
        self._count_handles()
        return fh, keep_cache

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self._files.get(fh)
        if handle is None:
            raise StaleFile(f"file handle {fh} is not open")
        return await handle.read(offset, size)

    def release(self, fh: int) -> None:
        self._files.pop(fh, None)
        self._count_handles()

    @staticmethod
    def refuse_write(what: str) -> NoReturn:
        """Every mutation of this read-only mount ends here."""
        raise ReadOnly(f"{what}: the mount is read-only")

    # -- internals

    async def _stat(self, path: str) -> FileStatus:
        """Fresh-enough status of ``path``: from the metadata cache, else the backend."""
        status = self.meta.status(path)
        if status is not None:
            return status
        if self.meta.is_missing(path):
            raise NotFound(path)
        try:
            status = await self.backend.stat(path)
        except NotFound:
            self.meta.put_missing(path)
            raise
        self.meta.put_status(path, status)
        return status

    def _learn(self, path: str, status: FileStatus) -> Inode:
        """Record ``status`` for ``path``; a new version of a file drops its cached pages."""
        known = self.inodes.by_path(path)
        old_version = known.status.version if known is not None else None
        inode = self.inodes.learn(path, status)
        if inode is known and old_version != status.version:
            self.pages.drop_file(inode.ino)
        return inode

    def _dir(self, fh: int) -> DirHandle:
        handle = self._dirs.get(fh)
        if handle is None:
            raise StaleFile(f"directory handle {fh} is not open")
        return handle

    def _count_handles(self) -> None:
        self._metrics.open_handles.set(len(self._files) + len(self._dirs))
