#!/usr/bin/env python3
"""A do-nothing pyfuse3 daemon: the benchmark's floor for any daemon built on pyfuse3 + trio.

It walks SOURCE once at start and then serves its names and sizes from memory, and zero
bytes for every read: no under-storage, no caches, no threads. What a request costs it
is what the kernel, libfuse, pyfuse3 and trio cost; alluxiofuse cannot be faster than
this on small files or a walk. (Its reads are zeros, so the benchmark runs only the
workloads that check byte counts, not content, against it.)

With ``--read`` it serves the files' real bytes instead, read on the event loop with a
blocking ``pread`` (as fsspec.fuse does): the floor of a pyfuse3 daemon that really reads.

    python bench/floor_fs.py SOURCE MOUNTPOINT [--read]
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Any

import pyfuse3
import trio

TIMEOUT = 60.0  # entry and attribute timeouts, as alluxiofuse's defaults (since issue 16)


class Floor(pyfuse3.Operations):
    def __init__(self, source: str, *, read: bool = False) -> None:
        super().__init__()
        self.read_files = read
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {}
        self.children: dict[int, dict[bytes, int]] = {}
        self.listings: dict[int, list[tuple[bytes, int]]] = {}
        self.paths: dict[int, str] = {}
        self._add(pyfuse3.ROOT_INODE, os.lstat(source))
        inos = {source: pyfuse3.ROOT_INODE}
        for dirpath, dirs, files in os.walk(source):
            parent = inos[dirpath]
            for name in dirs + files:
                path = os.path.join(dirpath, name)
                ino = len(self.attrs) + 1
                self._add(ino, os.lstat(path))
                self.children[parent][os.fsencode(name)] = ino
                self.paths[ino] = path
                inos[path] = ino

    def _add(self, ino: int, st: os.stat_result) -> None:
        a = pyfuse3.EntryAttributes()
        a.st_ino, a.st_mode, a.st_size, a.st_nlink = ino, st.st_mode, st.st_size, st.st_nlink
        a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = st.st_mtime_ns
        a.entry_timeout = a.attr_timeout = TIMEOUT
        self.attrs[ino] = a
        if stat.S_ISDIR(st.st_mode):
            self.children[ino] = {}

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        ino = self.children.get(parent_inode, {}).get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs[ino]

    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self.attrs[inode]

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = self.listings.get(fh)
        if entries is None:  # sorted once: the kernel asks a few dozen entries at a time
            entries = self.listings[fh] = sorted(self.children[fh].items())
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            if not pyfuse3.readdir_reply(token, name, self.attrs[ino], i + 1):
                break

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        if not self.read_files:
            return bytes(max(0, min(size, self.attrs[fh].st_size - off)))
        fd = os.open(self.paths[fh], os.O_RDONLY)
        try:
            return os.pread(fd, size, off)
        finally:
            os.close(fd)


def main() -> None:
    source, mountpoint = sys.argv[1:3]
    ops = Floor(source, read="--read" in sys.argv[3:])
    pyfuse3.init(ops, mountpoint, {"ro", "default_permissions", "fsname=floor"})
    try:
        trio.run(pyfuse3.main, 4, 128)  # alluxiofuse's min and max FUSE tasks
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
