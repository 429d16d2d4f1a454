"""fs/replies.py: the attributes and negative entries the kernel is answered."""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import Any

from alluxiofuse.config import MountConfig
from alluxiofuse.fs.inodes import ROOT_INODE
from alluxiofuse.fs.replies import Replies
from alluxiofuse.model import FileStatus, Kind


def config(**kwargs: Any) -> MountConfig:
    return MountConfig(source="/src", mountpoint="/mnt", **kwargs)  # type: ignore[arg-type]


def test_each_attribute_comes_from_its_own_field() -> None:
    """Attributes are built positionally (readdir makes one per entry): every value must
    land in its own field, each distinct here so that a swap shows."""
    c = config(entry_timeout=7.0, attr_timeout=9.0, page_size=1 << 16)
    status = FileStatus(name="f", kind=Kind.FILE, size=5000, mtime_ns=11, ctime_ns=12,
                        atime_ns=13, mode=0o640, uid=1001, gid=1002, nlink=3, blocks=17)
    a = Replies(c).attributes(42, status)
    assert dataclasses.asdict(a) == {
        "st_ino": 42, "entry_timeout": 7.0, "attr_timeout": 9.0,
        "st_mode": stat.S_IFREG | 0o640, "st_nlink": 3, "st_uid": 1001, "st_gid": 1002,
        "st_size": 5000, "st_blksize": 1 << 16, "st_blocks": 17, "st_mtime_ns": 11,
        "st_ctime_ns": 12, "st_atime_ns": 13, "st_rdev": 0, "generation": 0,
    }


def test_what_the_source_does_not_know_is_filled_from_fixed_values() -> None:
    replies = Replies(config())
    a = replies.attributes(5, FileStatus(name="d", kind=Kind.DIRECTORY, size=1000))
    b = replies.attributes(6, FileStatus(name="d", kind=Kind.DIRECTORY, size=1000))
    assert a.st_mode == stat.S_IFDIR | 0o755 and a.st_nlink == 2
    assert (a.st_uid, a.st_gid) == (os.getuid(), os.getgid())
    assert a.st_blocks == 2  # the size in 512-byte blocks, rounded up
    # The mount's time, the same at every call, for all three times.
    assert a.st_mtime_ns == a.st_ctime_ns == a.st_atime_ns == b.st_mtime_ns


def test_the_options_override_modes_and_owners_and_the_root_expires_soon() -> None:
    c = config(file_mode=0o600, dir_mode=0o700, uid=7, gid=8, attr_timeout=60.0)
    replies = Replies(c)
    f = replies.attributes(9, FileStatus(name="f", kind=Kind.FILE, mode=0o644, uid=1, gid=2))
    assert (f.st_mode, f.st_uid, f.st_gid) == (stat.S_IFREG | 0o600, 7, 8)
    root = replies.attributes(ROOT_INODE, FileStatus(name="", kind=Kind.DIRECTORY, mode=0o755))
    assert root.st_mode == stat.S_IFDIR | 0o700
    assert root.attr_timeout == 1.0 and f.attr_timeout == 60.0


def test_a_status_that_lacks_attributes_is_not_cached() -> None:
    status = FileStatus(name="o", kind=Kind.FILE, complete=False)
    assert Replies(config(attr_timeout=60.0)).attributes(3, status).attr_timeout == 0


def test_a_miss_is_a_negative_entry_only_with_a_negative_timeout() -> None:
    replies = Replies(config(negative_timeout=5.0, metadata_cache_size=1 << 20))
    entry = replies.negative(1, "nope")
    assert entry is not None and entry.entry_timeout == 5.0
    assert replies.take_misses() == [(1, "nope")]
    assert replies.take_misses() == []  # handed out once
    assert Replies(config(negative_timeout=0.0)).negative(1, "nope") is None
