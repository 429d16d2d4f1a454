"""A passthrough FUSE file system over a directory that fails on demand: a faulty disk.

Run as ``python -m tests.support.faultfs BACKING MOUNTPOINT CONTROL``. Every request is
done on ``BACKING``; files are opened with ``direct_io``, so every read, write and fsync
reaches this process (no page cache of the mount answers for it). The JSON control file
says which requests fail, and with which errno, for the paths that contain ``match``::

    {"fail": {"write": "EIO", "fsync": "EIO", "read": "EIO", "create": "ENOSPC"},
     "match": "/journal/"}

It is re-read whenever it changes, so a test flips faults on and off while the file
system is in use (``set_faults``). The fault switches here name requests, not the
daemon's calls: ``write``, ``read``, ``fsync`` (of a file), ``fsyncdir``, ``create``,
``mkdir``, ``unlink``, ``rename`` and ``link`` (the old name is matched), ``setattr``,
``flush``.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from typing import Any

import pyfuse3
import trio


class FaultFS(pyfuse3.Operations):
    def __init__(self, backing: str, control: str) -> None:
        super().__init__()
        self._control = control
        self._stamp: tuple[int, int] | None = None
        self._rule: dict[str, Any] = {}
        root = os.lstat(backing).st_ino
        self._root_ino = root
        self._paths: dict[int, str] = {pyfuse3.ROOT_INODE: backing}
        self._fds: dict[int, str] = {}  # open file: its path

    # -- the faults

    def _fault(self, op: str, path: str) -> None:
        try:
            st = os.stat(self._control)
            stamp = (st.st_mtime_ns, st.st_ino)
            if stamp != self._stamp:
                with open(self._control) as f:
                    self._rule = json.load(f)
                self._stamp = stamp
        except (OSError, ValueError):
            self._rule, self._stamp = {}, None
        name = self._rule.get("fail", {}).get(op)
        if name and self._rule.get("match", "") in path:
            raise pyfuse3.FUSEError(getattr(errno, name))

    # -- inodes

    def _ino(self, st: os.stat_result) -> int:
        return pyfuse3.ROOT_INODE if st.st_ino == self._root_ino else st.st_ino

    def _path(self, inode: int) -> str:
        try:
            return self._paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    def _entry(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        ino = self._ino(st)
        self._paths[ino] = path
        attrs = pyfuse3.EntryAttributes()
        for field in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                      "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(attrs, field, getattr(st, field))
        attrs.st_ino = ino
        attrs.st_blksize = st.st_blksize
        attrs.st_blocks = st.st_blocks
        attrs.generation = 0
        attrs.entry_timeout = 0
        attrs.attr_timeout = 0
        return attrs

    def _do(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    # -- requests

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        return self._entry(self._child(parent_inode, name))

    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self._entry(self._path(inode))

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        path = self._path(inode)
        self._fault("setattr", path)
        if fields.update_size:
            self._do(os.truncate, path, attr.st_size)
        if fields.update_mode:
            self._do(os.chmod, path, attr.st_mode & 0o7777)
        if fields.update_mtime or fields.update_atime:
            st = os.lstat(path)
            self._do(os.utime, path, None, (
                attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
        return self._entry(path)

    async def forget(self, inode_list: Any) -> None:
        """Nothing to drop: every path seen is kept (a test's tree is small)."""

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        path = self._path(fh)
        names = sorted(self._do(os.listdir, path))
        for i, name in enumerate(names[start_id:], start_id):
            try:
                attrs = self._entry(os.path.join(path, name))
            except pyfuse3.FUSEError:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        """Nothing to close: a directory's handle is its inode number."""

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        path = self._path(fh)
        self._fault("fsyncdir", path + "/")
        fd = self._do(os.open, path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._do(os.fsync, fd)
        finally:
            os.close(fd)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        path = self._child(parent_inode, name)
        self._fault("mkdir", path)
        self._do(os.mkdir, path, mode)
        return self._entry(path)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> Any:
        path = self._child(parent_inode, name)
        self._fault("create", path)
        fd = self._do(os.open, path, flags | os.O_CREAT, mode)
        self._fds[fd] = path
        return pyfuse3.FileInfo(fh=fd, direct_io=True), self._entry(path)

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        path = self._path(inode)
        fd = self._do(os.open, path, flags & ~os.O_CREAT)
        self._fds[fd] = path
        return pyfuse3.FileInfo(fh=fd, direct_io=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self._fault("read", self._fds.get(fh, ""))
        return self._do(os.pread, fh, size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self._fault("write", self._fds.get(fh, ""))
        return self._do(os.pwrite, fh, buf, off)

    async def fsync(self, fh: int, datasync: bool) -> None:
        self._fault("fsync", self._fds.get(fh, ""))
        self._do(os.fsync, fh)

    async def flush(self, fh: int) -> None:
        self._fault("flush", self._fds.get(fh, ""))

    async def release(self, fh: int) -> None:
        self._fds.pop(fh, None)
        os.close(fh)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = self._child(parent_inode, name)
        self._fault("unlink", path)
        self._do(os.unlink, path)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = self._child(parent_inode, name)
        self._fault("unlink", path)
        self._do(os.rmdir, path)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        self._fault("rename", old)
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        self._do(os.rename, old, new)
        self._entry(new)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: Any) -> Any:
        old, new = self._path(inode), self._child(new_parent_inode, new_name)
        self._fault("link", old)
        self._do(os.link, old, new)
        return self._entry(new)

    async def statfs(self, ctx: Any) -> Any:
        st = self._do(os.statvfs, self._paths[pyfuse3.ROOT_INODE])
        out = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                      "f_ffree", "f_favail", "f_namemax"):
            setattr(out, field, getattr(st, field))
        return out


def set_faults(control: str, faults: dict[str, str], match: str = "") -> None:
    """Make the requests ``faults`` names fail with their errno, for paths containing
    ``match`` (an empty ``faults`` ends every fault)."""
    with open(control + ".tmp", "w") as f:
        json.dump({"fail": faults, "match": match}, f)
    os.replace(control + ".tmp", control)


def main(backing: str, mountpoint: str, control: str) -> None:
    fs = FaultFS(os.path.abspath(backing), control)
    options = set(pyfuse3.default_options)
    options |= {"fsname=faultfs", "allow_other"}
    options.discard("default_permissions")
    pyfuse3.init(fs, mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
