"""Small file systems for fault tests: filling one to its last byte."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fill(disk: Path) -> Path:
    """Fill the file system of directory ``disk`` to its last byte with one file (in
    smaller and smaller writes, down to a byte); that file."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while os.write(fd, b"\1" * size) == size:
                    continue
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return ballast
