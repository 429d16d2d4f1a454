"""The kernel's mount table, ``/proc/self/mountinfo``: what is mounted where, read without
asking any mount (a stat of a hung mount would hang, of a dead one fail)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
# The kernel writes space, tab, newline and backslash in a field as octal escapes.
_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of the table, its path fields unescaped."""

    device: str  # major:minor
    mountpoint: str
    fstype: str  # "fuse.alluxiofuse" for ours
    source: str
    options: str  # the per-mount options (ro, nosuid, ...)


def mounts(mountinfo: str = MOUNTINFO) -> list[Mount]:
    """Every mount, in the table's order (a mount stacked on another comes after it).
    Raises OSError when the table cannot be read."""
    found = []
    with open(mountinfo, "rb") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index(b"-", 6)
                found.append(Mount(fields[2].decode(), _field(fields[4]),
                                   fields[sep + 1].decode(), _field(fields[sep + 2]),
                                   fields[5].decode()))
            except (ValueError, IndexError):  # not a line the kernel writes
                continue
    return found


def _field(raw: bytes) -> str:
    return os.fsdecode(_OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), raw))
