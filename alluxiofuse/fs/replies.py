"""What the kernel is answered, free of FUSE: attributes and their timeouts, negative entries,
and operations a mount does not implement."""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass

from cachetools import TTLCache

from alluxiofuse.config import MountConfig
from alluxiofuse.fs.inodes import ROOT_INODE
from alluxiofuse.fs.metacache import MISSING_BYTES
from alluxiofuse.listing import Entry
from alluxiofuse.model import FileStatus, Kind

_TYPE_BITS = {Kind.FILE: stat.S_IFREG, Kind.DIRECTORY: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK,
              Kind.FIFO: stat.S_IFIFO, Kind.SOCKET: stat.S_IFSOCK, Kind.CHAR_DEVICE: stat.S_IFCHR,
              Kind.BLOCK_DEVICE: stat.S_IFBLK}
_DEFAULT_MODES = {Kind.FILE: 0o644, Kind.DIRECTORY: 0o755, Kind.SYMLINK: 0o777,
                  Kind.FIFO: 0o644, Kind.SOCKET: 0o755, Kind.CHAR_DEVICE: 0o644,
                  Kind.BLOCK_DEVICE: 0o644}
# The longest the kernel keeps the root's attributes. A stat of the mountpoint answered
# from them would hide a daemon that died (ENOTCONN) for the whole --attr-timeout: the
# CLI's dead-mount check and health probes stat it. Asking again costs the daemon a
# request answered from its own cache, not a trip to the store.
_ROOT_ATTR_TIMEOUT = 1.0
# How much longer than --negative-timeout a miss is remembered for SIGHUP: the kernel's
# timeout starts when the reply reaches it, a little after the daemon recorded the miss.
_NEGATIVE_MARGIN = 1.0


@dataclass(slots=True)
class Attributes:
    """An inode's attributes as the kernel takes them (``struct stat`` and the timeouts
    for which it may keep the entry and the attributes)."""

    st_ino: int
    entry_timeout: float
    attr_timeout: float
    st_mode: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_blksize: int
    st_blocks: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_atime_ns: int
    st_rdev: int = 0
    generation: int = 0


@dataclass(frozen=True, slots=True)
class NegativeEntry:
    """A name that does not exist, which the kernel may remember as missing for
    ``entry_timeout`` (a lookup reply with inode 0)."""

    entry_timeout: float


class Unimplemented(Exception):
    """An operation this mount does not implement at all: the kernel is answered ENOSYS
    and stops sending it. Not an error: nothing failed, and it is not counted as one."""

    errno = errno.ENOSYS


class Replies:
    """Attributes of statuses under the mount's options (forced modes and owners, and
    stand-ins, fixed at mount time, for what the source does not keep), and negative
    entries, remembered while the kernel may hold them."""

    def __init__(self, config: MountConfig) -> None:
        self._config = config
        # Fixed stand-ins for what a backend does not know: never "now" at each call.
        self._mount_time_ns = time.time_ns()
        self._uid = os.getuid()
        self._gid = os.getgid()
        # The misses the kernel was told it may cache (negative entries), for SIGHUP:
        # only the kernel can drop them, and only by name. Bounded like the metadata
        # cache; one forgotten early still expires in the kernel on its own.
        self._misses: TTLCache[tuple[int, str], bool] | None = None
        if config.negative_timeout > 0 and config.metadata_cache_size >= MISSING_BYTES:
            self._misses = TTLCache(maxsize=config.metadata_cache_size // MISSING_BYTES,
                                    ttl=config.negative_timeout + _NEGATIVE_MARGIN)

    def attributes(self, ino: int, s: FileStatus | Entry) -> Attributes:
        c = self._config
        # Attributes a listing lacked (S3 metadata) are not cached: a stat asks getattr.
        attr_timeout = c.attr_timeout if s.complete else 0
        if ino == ROOT_INODE:
            attr_timeout = min(attr_timeout, _ROOT_ATTR_TIMEOUT)
        override = c.dir_mode if s.kind is Kind.DIRECTORY else c.file_mode
        if s.kind is Kind.SYMLINK:
            override = None
        perm = override if override is not None else s.mode
        mtime = s.mtime_ns if s.mtime_ns is not None else self._mount_time_ns
        # Positional, in field order: keywords cost more, once per readdir entry.
        return Attributes(
            ino,  # st_ino
            c.entry_timeout,
            attr_timeout,
            _TYPE_BITS[s.kind] | (perm if perm is not None else _DEFAULT_MODES[s.kind]),  # mode
            s.nlink if s.nlink is not None else (2 if s.kind is Kind.DIRECTORY else 1),
            c.uid if c.uid is not None else s.uid if s.uid is not None else self._uid,
            c.gid if c.gid is not None else s.gid if s.gid is not None else self._gid,
            s.size,
            c.page_size,  # st_blksize
            s.blocks if s.blocks is not None else (s.size + 511) // 512,
            mtime,
            s.ctime_ns if s.ctime_ns is not None else mtime,  # st_ctime_ns
            s.atime_ns if s.atime_ns is not None else mtime,  # st_atime_ns
            s.rdev or 0,  # st_rdev
        )

    def negative(self, parent_ino: int, name: str) -> NegativeEntry | None:
        """The reply to a lookup of ``name`` in directory ``parent_ino`` that found
        nothing: a negative entry the kernel caches itself, or None (ENOENT) when
        --negative-timeout is 0."""
        timeout = self._config.negative_timeout
        if timeout <= 0:
            return None
        if self._misses is not None:
            self._misses[parent_ino, name] = True
        return NegativeEntry(timeout)

    def take_misses(self) -> list[tuple[int, str]]:
        """The negative entries the kernel may still hold, (directory inode, name), each
        handed out once: the caches are being dropped."""
        if self._misses is None:
            return []
        misses = list(self._misses)
        self._misses.clear()
        return misses
