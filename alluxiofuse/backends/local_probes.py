"""Cache-only probes of a local directory: answers from the kernel's caches, or none.

A local file's status and bytes are usually in the kernel's caches, where a system call
costs far less of the event loop's time than handing it to a worker thread does
(bench/RESULTS.md). These probes are safe to run on the event loop because they cannot
wait for a disk: ``openat2(2)`` with ``RESOLVE_CACHED`` fails with EAGAIN unless every path
component is in the dentry cache, and ``preadv2(2)`` with ``RWF_NOWAIT`` fails with
EAGAIN unless the range is in the page cache. A probe that cannot answer returns None,
and the caller goes to a worker thread as usual.

They are only used where opening and ``fstat``-ing a cached inode does no I/O: the root
must be on a local block or memory filesystem (checked with ``statfs``), and a probe never
crosses into another mount below the root (``RESOLVE_NO_XDEV``), so an NFS or FUSE
directory mounted inside the source is always read from a worker thread. Symbolic links
inside the path end a probe too (``RESOLVE_NO_SYMLINKS``); the worker thread then
resolves the path exactly as before.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

_SYS_OPENAT2 = 437  # the same number on every architecture that has it (Linux >= 5.6)
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_CACHED = 0x20  # Linux >= 5.12
_RESOLVE = _RESOLVE_CACHED | _RESOLVE_NO_XDEV | _RESOLVE_NO_SYMLINKS

# statfs f_type of filesystems whose open and fstat of a cached inode stay in memory.
_LOCAL_FILESYSTEMS = {
    0xEF53: "ext2/3/4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0xF2F52010: "f2fs",
    0x2FC12FC1: "zfs",
    0x01021994: "tmpfs",
    0x858458F6: "ramfs",
    0x794C7630: "overlayfs",
}


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class _StatFs(ctypes.Structure):
    # Only f_type (the first field) is read; the rest of struct statfs is padding here.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_long * 31)]


class CacheProbes:
    """Cache-only ``lstat`` and ``pread`` of paths below one local root directory."""

    def __init__(self, root: str) -> None:
        self._root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        # PyDLL keeps the GIL: the call cannot block, and handing the GIL to a worker
        # thread for it would stall the event loop until that thread gives it back.
        libc = ctypes.PyDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._syscall.argtypes = [
            ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t,
        ]
        self._stat_how = _OpenHow(os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, 0, _RESOLVE)
        self._read_how = _OpenHow(os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0, _RESOLVE)

    @classmethod
    def for_root(cls, root: str) -> CacheProbes | None:
        """Probes for ``root``, or None where they cannot be trusted not to block."""
        if not sys.platform.startswith("linux") or not hasattr(os, "RWF_NOWAIT"):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            buf = _StatFs()
            if libc.statfs(os.fsencode(root), ctypes.byref(buf)) != 0:
                return None
            if buf.f_type & 0xFFFFFFFF not in _LOCAL_FILESYSTEMS:
                return None
            probes = cls(root)
        except (OSError, AttributeError):
            return None
        if not probes._works():
            probes.close()
            return None
        return probes

    def lstat(self, path: str) -> os.stat_result | None:
        """``lstat`` of ``path`` (relative to the root) if the kernel has it cached.

        Raises FileNotFoundError when the kernel knows the path does not exist.
        """
        fd = self._open(path, self._stat_how)
        if fd is None:
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def pread(self, path: str, offset: int, length: int) -> tuple[bytes, os.stat_result] | None:
        """Up to ``length`` bytes at ``offset`` and the file's ``fstat`` after reading them,
        if all of them are in the page cache (a short read only at the end of the file).

        Raises FileNotFoundError when the kernel knows the path does not exist.
        """
        fd = self._open(path, self._read_how)
        if fd is None:
            return None
        try:
            buf = bytearray(length)
            try:
                n = os.preadv(fd, [buf], offset, os.RWF_NOWAIT) if length else 0
            except BlockingIOError:
                return None
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if n < length and offset + n < st.st_size:
            return None  # only part of the range was cached
        return bytes(buf) if n == length else bytes(memoryview(buf)[:n]), st

    def close(self) -> None:
        os.close(self._root_fd)

    def _open(self, path: str, how: _OpenHow) -> int | None:
        fd: int = self._syscall(
            _SYS_OPENAT2, self._root_fd, os.fsencode(path), ctypes.byref(how),
            ctypes.sizeof(how),
        )
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code == errno.ENOENT:
            raise FileNotFoundError(code, os.strerror(code), path)
        return None  # EAGAIN (not cached), EXDEV, ELOOP, ...: the worker thread decides

    def _works(self) -> bool:
        """Whether this kernel has openat2 with RESOLVE_CACHED (EINVAL or ENOSYS if not)."""
        fd: int = self._syscall(
            _SYS_OPENAT2, self._root_fd, b".", ctypes.byref(self._stat_how),
            ctypes.sizeof(self._stat_how),
        )
        if fd >= 0:
            os.close(fd)
            return True
        return ctypes.get_errno() == errno.EAGAIN
