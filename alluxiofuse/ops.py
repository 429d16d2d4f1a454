"""The kernel adapter: pyfuse3 requests in, :class:`~alluxiofuse.fs.filesystem.Filesystem` down.

This is the one place exceptions become ``FUSEError``. Each handler times itself, calls
down and lets :meth:`Operations._call` map what comes back: a domain error becomes its
errno; anything else becomes EIO with a log line and a metric, or is re-raised under
``--strict`` so that tests see the bug.
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
from alluxiofuse.errors import AlluxioFuseError, BackendError, NotFound
from alluxiofuse.fs.filesystem import Filesystem
from alluxiofuse.fs.inodes import ROOT_INODE, Inode
from alluxiofuse.listing import Entry
from alluxiofuse.metrics import Metrics
from alluxiofuse.model import Attrs, Data, FileStatus, Kind

log = logging.getLogger(__name__)

_TYPE_BITS = {Kind.FILE: stat.S_IFREG, Kind.DIRECTORY: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK}
_DEFAULT_MODES = {Kind.FILE: 0o644, Kind.DIRECTORY: 0o755, Kind.SYMLINK: 0o777}
# The longest the kernel keeps the root's attributes. A stat of the mountpoint answered
# from them would hide a daemon that died (ENOTCONN) for the whole --attr-timeout: the
# CLI's dead-mount check and health probes stat it. Asking again costs the daemon a
# request answered from its own cache, not a trip to the store.
_ROOT_ATTR_TIMEOUT = 1.0


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
        # Fixed stand-ins for what a backend does not know: never "now" at each call.
        self._mount_time_ns = time.time_ns()
        self._uid = os.getuid()
        self._gid = os.getgid()

    def init(self) -> None:
        """The kernel's INIT handshake; its reply is sent when this returns."""
        if self._on_init is not None:
            self._on_init()

    def _call(self, op: str) -> _Call:
        """``with self._call(op):`` around a handler's body: the one errno mapping point."""
        return _Call(self, op)

    def _map(self, op: str, e: BaseException) -> FUSEError | None:
        """The FUSEError that answers ``e``; None to let ``e`` through (``--strict``)."""
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

    def _attrs(self, inode: Inode) -> EntryAttributes:
        return self._entry(inode.ino, inode.status)

    def _entry(self, ino: int, s: FileStatus | Entry) -> EntryAttributes:
        c = self._config
        a = EntryAttributes()
        a.st_ino = ino
        a.generation = 0
        a.entry_timeout = c.entry_timeout
        # Attributes a listing lacked (S3 metadata) are not cached: a stat asks getattr.
        a.attr_timeout = c.attr_timeout if s.complete else 0
        if ino == ROOT_INODE:
            a.attr_timeout = min(a.attr_timeout, _ROOT_ATTR_TIMEOUT)
        override = c.dir_mode if s.kind is Kind.DIRECTORY else c.file_mode
        if s.kind is Kind.SYMLINK:
            override = None
        perm = override if override is not None else s.mode
        a.st_mode = _TYPE_BITS[s.kind] | (perm if perm is not None else _DEFAULT_MODES[s.kind])
        a.st_nlink = s.nlink if s.nlink is not None else (2 if s.kind is Kind.DIRECTORY else 1)
        a.st_uid = c.uid if c.uid is not None else s.uid if s.uid is not None else self._uid
        a.st_gid = c.gid if c.gid is not None else s.gid if s.gid is not None else self._gid
        a.st_rdev = 0
        a.st_size = s.size
        a.st_blksize = c.page_size
        a.st_blocks = s.blocks if s.blocks is not None else (s.size + 511) // 512
        mtime = s.mtime_ns if s.mtime_ns is not None else self._mount_time_ns
        a.st_mtime_ns = mtime
        a.st_ctime_ns = s.ctime_ns if s.ctime_ns is not None else mtime
        a.st_atime_ns = s.atime_ns if s.atime_ns is not None else mtime
        return a

    # -- names and attributes

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None,
    ) -> EntryAttributes:
        with self._call("lookup"):
            try:
                return self._attrs(await self.fs.lookup(parent_inode, os.fsdecode(name)))
            except NotFound:
                if self._config.negative_timeout <= 0:
                    raise
            # A negative entry (inode 0) lets the kernel cache the miss itself.
            negative = EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self._config.negative_timeout
            return negative

    async def getattr(self, inode: int, ctx: Any = None) -> EntryAttributes:
        with self._call("getattr"):
            return self._attrs(await self.fs.getattr(inode))

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
            def reply(status: FileStatus | Entry, ino: int, next_id: int) -> bool:
                attrs = self._entry(ino, status)  # the inode's status, at hand already
                return bool(pyfuse3.readdir_reply(token, os.fsencode(status.name), attrs, next_id))

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
            if self.fs.writes is None:
                # ENOSYS makes the kernel stop sending flushes: a read-only mount saves a
                # round trip on every close.
                raise FUSEError(errno.ENOSYS)
            await self.fs.flush(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        with self._call("fsync"):
            if self.fs.writes is None:
                raise FUSEError(errno.ENOSYS)
            await self.fs.flush(fh, durable=True)

    async def release(self, fh: int) -> None:
        with self._call("release"):
            await self.fs.release(fh)

    # -- changes

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any,
    ) -> tuple[FileInfo, EntryAttributes]:
        with self._call("create"):
            fh, inode = await self.fs.create(parent_inode, os.fsdecode(name), mode, flags,
                                             _owner(ctx))
            return FileInfo(fh=fh), self._attrs(inode)

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
            return self._attrs(await self.fs.setattr(inode, fh, size, attrs))

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any,
    ) -> EntryAttributes:
        with self._call("mknod"):
            if not stat.S_ISREG(mode):
                self.fs.refuse_write("mknod of a device, FIFO or socket")
            fh, inode = await self.fs.create(parent_inode, os.fsdecode(name), mode,
                                             os.O_WRONLY | os.O_EXCL, _owner(ctx))
            try:
                await self.fs.flush(fh)
            finally:
                await self.fs.release(fh)
            return self._attrs(inode)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: Any,
    ) -> EntryAttributes:
        with self._call("mkdir"):
            inode = await self.fs.mkdir(parent_inode, os.fsdecode(name), mode, _owner(ctx))
            return self._attrs(inode)

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
            inode = await self.fs.symlink(parent_inode, os.fsdecode(name),
                                          os.fsdecode(target), _owner(ctx))
            return self._attrs(inode)

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
            return self._attrs(await self.fs.link(inode, new_parent_inode,
                                                  os.fsdecode(new_name)))

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        with self._call("setxattr"):
            self.fs.refuse_write("setxattr")

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        with self._call("removexattr"):
            self.fs.refuse_write("removexattr")


def _owner(ctx: Any) -> tuple[int, int]:
    """Who asked: the owner of what the request makes (without a context, the daemon)."""
    if ctx is None:
        return os.getuid(), os.getgid()
    return int(ctx.uid), int(ctx.gid)
