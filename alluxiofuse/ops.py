"""The kernel adapter: pyfuse3 requests in, :class:`~alluxiofuse.fs.filesystem.Filesystem` down.

The filesystem decides every reply (attributes and their timeouts, negative entries,
what a mount does not implement: ``fs/replies.py``); this module only translates them
into pyfuse3's objects. It is the one place exceptions become ``FUSEError``. Each handler
times itself, calls down and lets :meth:`Operations._call` map what comes back: a domain
error becomes its errno (an unimplemented operation ENOSYS, not counted as an error);
anything else becomes EIO with a log line and a metric, or is re-raised under ``--strict``
so that tests see the bug.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pyfuse3
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, StatvfsData

from alluxiofuse.config import MountConfig
from alluxiofuse.errors import AlluxioFuseError, BackendError
from alluxiofuse.fs.filesystem import Filesystem
from alluxiofuse.fs.replies import Attributes, NegativeEntry, Unimplemented
from alluxiofuse.metrics import Metrics
from alluxiofuse.model import Attrs, Data

log = logging.getLogger(__name__)


class _Call:
    """Times one request and maps what escapes it (a class: cheaper than @contextmanager)."""

    __slots__ = ("_op", "_ops", "_start")

    def __init__(self, ops: Operations, op: str) -> None:
        self._ops = ops
        self._op = op
        self._start = time.perf_counter()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        seconds = time.perf_counter() - self._start
        self._ops._metrics.fuse_op_seconds.observe(self._op, seconds)
        if seconds > self._ops._slow > 0:
            log.warning("slow %s: %.3fs (%s)", self._op, seconds,
                        "ok" if e is None else type(e).__name__)
        if e is not None and (answer := self._ops._map(self._op, e)) is not None:
            raise answer from None


class Operations(pyfuse3.Operations):
    """pyfuse3 handlers; a few lines each."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self, fs: Filesystem, config: MountConfig, metrics: Metrics,
        on_init: Callable[[], object] | None = None,
    ) -> None:
        super().__init__()
        self.fs = fs
        self._on_init = on_init
        self._config = config
        self._metrics = metrics
        self._slow = config.slow_op_threshold

    def init(self) -> None:
        """The kernel's INIT handshake; its reply is sent when this returns."""
        if self._on_init is not None:
            self._on_init()

    def _call(self, op: str) -> _Call:
        """``with self._call(op):`` around a handler's body: the one errno mapping point."""
        return _Call(self, op)

    def _map(self, op: str, e: BaseException) -> FUSEError | None:
        """The FUSEError that answers ``e``; None to let ``e`` through (``--strict``)."""
        if isinstance(e, Unimplemented):  # an answer, not an error
            return FUSEError(e.errno)
        if isinstance(e, AlluxioFuseError):
            self._metrics.fuse_errors.labels(op, errno.errorcode.get(e.errno, str(e.errno))).inc()
            if isinstance(e, BackendError):
                self._metrics.backend_errors.labels(e.reason).inc()
                log.warning("%s: %s: %s", op, type(e).__name__, e)
            else:
                log.debug("%s: %s: %s", op, type(e).__name__, e)
            return FUSEError(e.errno)
        if isinstance(e, FUSEError) or not isinstance(e, Exception):
            return None  # already an answer, or cancellation and the like: not ours to map
        self._metrics.unexpected_errors.labels(op, type(e).__name__).inc()
        self._metrics.fuse_errors.labels(op, "EIO").inc()
        log.error("%s: unexpected %s: %s", op, type(e).__name__, e, exc_info=e)
        return None if self._config.strict else FUSEError(errno.EIO)

    # -- names and attributes

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None,
    ) -> EntryAttributes:
        with self._call("lookup"):
            found = await self.fs.lookup(parent_inode, os.fsdecode(name))
            if isinstance(found, NegativeEntry):  # inode 0: the kernel caches the miss
                negative = EntryAttributes()
                negative.st_ino = 0
                negative.entry_timeout = found.entry_timeout
                return negative
            return entry_attributes(found)

    async def getattr(self, inode: int, ctx: Any = None) -> EntryAttributes:
        with self._call("getattr"):
            return entry_attributes(await self.fs.getattr(inode))

    async def forget(self, inode_list: Any) -> None:
        with self._call("forget"):
            for ino, count in inode_list:
                self.fs.forget(ino, count)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        with self._call("readlink"):
            return os.fsencode(await self.fs.readlink(inode))

    async def statfs(self, ctx: Any) -> StatvfsData:
        with self._call("statfs"):
            s = await self.fs.statfs()
            out = StatvfsData()
            out.f_bsize = out.f_frsize = s.block_size
            out.f_blocks, out.f_bfree, out.f_bavail = s.blocks, s.blocks_free, s.blocks_avail
            out.f_files, out.f_ffree, out.f_favail = s.files, s.files_free, s.files_free
            out.f_namemax = s.name_max
            return out

    # -- directories

    async def opendir(self, inode: int, ctx: Any) -> int:
        with self._call("opendir"):
            return await self.fs.opendir(inode)

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        with self._call("readdir"):
            def reply(name: str, attrs: Attributes, next_id: int) -> bool:
                entry = entry_attributes(attrs)
                return bool(pyfuse3.readdir_reply(token, os.fsencode(name), entry, next_id))

            await self.fs.readdir(fh, start_id, reply)

    async def releasedir(self, fh: int) -> None:
        with self._call("releasedir"):
            self.fs.releasedir(fh)

    # -- files

    async def open(self, inode: int, flags: int, ctx: Any) -> FileInfo:
        with self._call("open"):
            fh, keep_cache = await self.fs.open(inode, flags)
            return FileInfo(fh=fh, keep_cache=keep_cache)

    # pyfuse3 replies with any contiguous buffer (PyObject_GetBuffer), not only the bytes
    # its stub names: a page received into a buffer goes to the kernel with no copy.
    async def read(self, fh: int, off: int, size: int) -> Data:  # type: ignore[override]
        with self._call("read"):
            return await self.fs.read(fh, off, size)

    async def flush(self, fh: int) -> None:
        with self._call("flush"):
            await self.fs.flush(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        with self._call("fsync"):
            await self.fs.flush(fh, durable=True)

    async def release(self, fh: int) -> None:
        with self._call("release"):
            await self.fs.release(fh)

    # -- changes

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any,
    ) -> tuple[FileInfo, EntryAttributes]:
        with self._call("create"):
            fh, attrs = await self.fs.create(parent_inode, os.fsdecode(name), mode, flags,
                                             _owner(ctx))
            return FileInfo(fh=fh), entry_attributes(attrs)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        with self._call("write"):
            return await self.fs.write(fh, off, buf)

    async def setattr(
        self, inode: int, attr: EntryAttributes, fields: Any, fh: int | None, ctx: Any,
    ) -> EntryAttributes:
        with self._call("setattr"):
            attrs = Attrs(
                mode=stat.S_IMODE(attr.st_mode) if fields.update_mode else None,
                uid=attr.st_uid if fields.update_uid else None,
                gid=attr.st_gid if fields.update_gid else None,
                atime_ns=attr.st_atime_ns if fields.update_atime else None,
                mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            )
            size = attr.st_size if fields.update_size else None
            return entry_attributes(await self.fs.setattr(inode, fh, size, attrs))

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any,
    ) -> EntryAttributes:
        with self._call("mknod"):
            attrs = await self.fs.mknod(parent_inode, os.fsdecode(name), mode, rdev,
                                        _owner(ctx))
            return entry_attributes(attrs)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: Any,
    ) -> EntryAttributes:
        with self._call("mkdir"):
            attrs = await self.fs.mkdir(parent_inode, os.fsdecode(name), mode, _owner(ctx))
            return entry_attributes(attrs)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        with self._call("unlink"):
            await self.fs.unlink(parent_inode, os.fsdecode(name))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        with self._call("rmdir"):
            await self.fs.rmdir(parent_inode, os.fsdecode(name))

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: Any,
    ) -> EntryAttributes:
        with self._call("symlink"):
            attrs = await self.fs.symlink(parent_inode, os.fsdecode(name), os.fsdecode(target),
                                          _owner(ctx))
            return entry_attributes(attrs)

    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
        flags: int, ctx: Any,
    ) -> None:
        with self._call("rename"):
            await self.fs.rename(parent_inode_old, os.fsdecode(name_old), parent_inode_new,
                                 os.fsdecode(name_new), flags)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any,
    ) -> EntryAttributes:
        with self._call("link"):
            attrs = await self.fs.link(inode, new_parent_inode, os.fsdecode(new_name))
            return entry_attributes(attrs)

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        with self._call("setxattr"):
            self.fs.refuse_write("setxattr")

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        with self._call("removexattr"):
            self.fs.refuse_write("removexattr")


def entry_attributes(a: Attributes) -> EntryAttributes:
    """``a``, as pyfuse3 takes attributes."""
    e = EntryAttributes()
    e.st_ino = a.st_ino
    e.generation = a.generation
    e.entry_timeout = a.entry_timeout
    e.attr_timeout = a.attr_timeout
    e.st_mode = a.st_mode
    e.st_nlink = a.st_nlink
    e.st_uid = a.st_uid
    e.st_gid = a.st_gid
    e.st_rdev = a.st_rdev
    e.st_size = a.st_size
    e.st_blksize = a.st_blksize
    e.st_blocks = a.st_blocks
    e.st_mtime_ns = a.st_mtime_ns
    e.st_ctime_ns = a.st_ctime_ns
    e.st_atime_ns = a.st_atime_ns
    return e


def _owner(ctx: Any) -> tuple[int, int]:
    """Who asked: the owner of what the request makes (without a context, the daemon)."""
    if ctx is None:
        return os.getuid(), os.getgid()
    return int(ctx.uid), int(ctx.gid)
