#!/usr/bin/env python3
"""A do-nothing writable pyfuse3 daemon: the floor of write_bench.py for any daemon built
on pyfuse3 + trio.

It keeps the tree (names, sizes, modes, owners, times) in memory, starting empty, and
does no I/O: writes record the new size and throw the bytes away, reads return zeros up
to the size. What a request costs it is what the kernel, libfuse, pyfuse3 and trio cost;
alluxiofuse cannot write faster than this. (It keeps no data, so write_bench checks only
its own counts of files and bytes, not the content.) Mounted with alluxiofuse's mount
options (minus ``ro``) and its minimum and maximum number of FUSE tasks.

With ``--writeback`` it asks for the kernel's write-back cache (``enable_writeback_cache``):
the kernel then buffers writes in the page cache and sends them in large merged blocks,
which shows what that alone would change. At exit it prints how many requests of each
kind it answered (``floor_write requests: {...}`` as JSON, with ``write_bytes``).

    python bench/floor_write.py SOURCE MOUNTPOINT [--writeback]   (SOURCE: only a name)
"""

from __future__ import annotations

import errno
import inspect
import json
import stat
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import trio
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, RequestContext

TIMEOUT = 1.0  # entry and attribute timeouts, as alluxiofuse's defaults
MIN_TASKS, MAX_TASKS = 4, 128  # alluxiofuse's: pyfuse3.main(min_tasks=4, max_tasks=128)


class FloorWrite(pyfuse3.Operations):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.attrs: dict[int, EntryAttributes] = {}
        self.children: dict[int, dict[bytes, int]] = {}
        self._new(stat.S_IFDIR | 0o755, 0, 0, ino=pyfuse3.ROOT_INODE)
        for name, fn in vars(pyfuse3.Operations).items():  # count the ENOSYS ones too
            if inspect.iscoroutinefunction(fn) and name not in vars(FloorWrite):
                setattr(self, name, self._counted(name, getattr(self, name)))

    def _counted(self, name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def wrapper(*args: Any) -> Any:
            self.calls[name] += 1
            return await fn(*args)
        return wrapper

    def _new(self, mode: int, uid: int, gid: int, ino: int = 0) -> EntryAttributes:
        a = EntryAttributes()
        a.st_ino = ino or len(self.attrs) + 1
        a.st_mode, a.st_nlink, a.st_uid, a.st_gid = mode, 1, uid, gid
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = time.time_ns()
        a.entry_timeout = a.attr_timeout = TIMEOUT
        self.attrs[a.st_ino] = a
        if stat.S_ISDIR(mode):
            self.children[a.st_ino] = {}
        return a

    def _add(self, parent: int, name: bytes, mode: int, ctx: RequestContext) -> EntryAttributes:
        if name in self.children[parent]:
            raise FUSEError(errno.EEXIST)
        a = self._new(mode & ~ctx.umask, ctx.uid, ctx.gid)
        self.children[parent][name] = a.st_ino
        return a

    async def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        self.calls["lookup"] += 1
        if (ino := self.children[parent_inode].get(name)) is None:
            raise FUSEError(errno.ENOENT)
        return self.attrs[ino]

    async def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        self.calls["getattr"] += 1
        return self.attrs[inode]

    async def setattr(self, inode: int, attr: EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: RequestContext) -> EntryAttributes:
        self.calls["setattr"] += 1
        a = self.attrs[inode]
        if fields.update_size:
            a.st_size = attr.st_size
        if fields.update_mode:
            a.st_mode = stat.S_IFMT(a.st_mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            a.st_uid = attr.st_uid
        if fields.update_gid:
            a.st_gid = attr.st_gid
        if fields.update_atime:
            a.st_atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            a.st_mtime_ns = attr.st_mtime_ns
        a.st_ctime_ns = time.time_ns()
        return a

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: RequestContext) -> EntryAttributes:
        self.calls["mkdir"] += 1
        return self._add(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        self.calls["create"] += 1
        a = self._add(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        return FileInfo(fh=a.st_ino), a

    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        self.calls["open"] += 1
        if flags & 0o1000:  # O_TRUNC
            self.attrs[inode].st_size = 0
        return FileInfo(fh=inode)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self.calls["write"] += 1
        self.calls["write_bytes"] += len(buf)
        a = self.attrs[fh]
        a.st_size = max(a.st_size, off + len(buf))
        return len(buf)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.calls["read"] += 1
        return bytes(max(0, min(size, self.attrs[fh].st_size - off)))

    async def flush(self, fh: int) -> None:
        self.calls["flush"] += 1

    async def fsync(self, fh: int, datasync: bool) -> None:
        self.calls["fsync"] += 1

    async def release(self, fh: int) -> None:
        self.calls["release"] += 1

    async def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        self.calls["unlink"] += 1
        if self.children[parent_inode].pop(name, None) is None:
            raise FUSEError(errno.ENOENT)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: RequestContext) -> None:
        self.calls["rename"] += 1
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise FUSEError(errno.EINVAL)
        if flags and name_new in self.children[parent_inode_new]:
            raise FUSEError(errno.EEXIST)
        if (ino := self.children[parent_inode_old].pop(name_old, None)) is None:
            raise FUSEError(errno.ENOENT)
        self.children[parent_inode_new][name_new] = ino

    async def opendir(self, inode: int, ctx: RequestContext) -> int:
        self.calls["opendir"] += 1
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        self.calls["readdir"] += 1
        entries = list(self.children[fh].items())
        for i in range(start_id, len(entries)):
            if not pyfuse3.readdir_reply(token, entries[i][0], self.attrs[entries[i][1]], i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        self.calls["releasedir"] += 1

    async def statfs(self, ctx: RequestContext) -> pyfuse3.StatvfsData:
        self.calls["statfs"] += 1
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 30
        s.f_files = s.f_ffree = s.f_favail = 1 << 24
        s.f_namemax = 255
        return s


def main() -> None:
    source, mountpoint = sys.argv[1:3]
    FloorWrite.enable_writeback_cache = "--writeback" in sys.argv[3:]
    ops = FloorWrite()
    fsname = source.replace("\\", "\\\\").replace(",", "\\,")
    pyfuse3.init(ops, mountpoint, {"default_permissions", f"fsname={fsname}",
                                   "subtype=floor_write"})
    try:
        trio.run(pyfuse3.main, MIN_TASKS, MAX_TASKS)
    finally:
        pyfuse3.close(unmount=True)
        print("floor_write requests: " + json.dumps(dict(sorted(ops.calls.items()))),
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
