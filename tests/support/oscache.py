"""Test helper: make the kernel forget a file's cached pages, and check that it did."""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from collections.abc import Callable
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


def _raise_errno(path: Path) -> None:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err), str(path))


def cached_pages(path: Path) -> int:
    """How many of ``path``'s pages are in the kernel's page cache. Asked with
    ``mincore``: a ``RWF_NOWAIT`` read that misses starts reading the file in, so it
    cannot be the check."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr == _MAP_FAILED:
            _raise_errno(path)
    finally:
        os.close(fd)
    try:
        vec = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
        if _libc.mincore(addr, size, vec) != 0:
            _raise_errno(path)
        return sum(b & 1 for b in vec.raw)
    finally:
        _libc.munmap(addr, size)


def evict_from_os_cache(path: Path, attempts: int = 50) -> None:
    """Drop ``path``'s pages from the kernel's page cache, so reads of it wait for the disk.

    ``POSIX_FADV_DONTNEED`` is advice: a page still being written back, or held for a
    moment by someone else, survives it. So ask until ``cached_pages`` says none is left.
    """
    for _ in range(attempts):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        left = cached_pages(path)
        if left == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"the kernel kept {left} of {path}'s pages cached after {attempts} tries")


def misses_after_eviction(path: Path, probe: Callable[[], object], attempts: int = 20) -> bool:
    """Whether ``probe()``, a cache-only read of ``path``, answers None at least once, each
    time right after ``path`` is evicted.

    One miss is the proof: a cache-only read that misses starts the kernel reading the
    file in (``RWF_NOWAIT`` allows read-ahead), and a fast disk can finish before the read
    gives up, so that a single try may rightly find the page. A read that blocks until it
    has the bytes never answers None.
    """
    for _ in range(attempts):
        evict_from_os_cache(path)
        if probe() is None:
            return True
    return False
