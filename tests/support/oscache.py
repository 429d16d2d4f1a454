"""Test helper: make the kernel forget a file's cached pages."""

from __future__ import annotations

import os
from pathlib import Path


def evict_from_os_cache(path: Path) -> None:
    """Drop ``path``'s pages from the kernel's page cache, so reads of it wait for the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
