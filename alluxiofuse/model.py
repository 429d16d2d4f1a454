"""Plain data shared by every layer: what a backend says about a file."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

NAME_MAX = 255  # bytes in one path component, as on Linux

# File content as the layers hand it on: ``bytes``, or a read-only ``memoryview`` of the
# buffer a stream read received it into (socket to kernel with no copy in between).
Data = bytes | memoryview


def valid_name(name: str) -> bool:
    """Whether ``name`` can be a directory entry: no ``/`` or NUL, not ``.``/``..``, ≤ 255 bytes."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        return False
    return len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX


class Kind(enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    # Special files: only a local directory keeps them. The kernel serves their opens
    # (a FIFO's pipe, a device's driver, a socket's connections): the daemon only makes,
    # lists, renames and removes them.
    FIFO = "fifo"
    SOCKET = "socket"
    CHAR_DEVICE = "character device"
    BLOCK_DEVICE = "block device"


class Version(NamedTuple):
    """What identifies one content of a file: if any part changes, cached bytes are stale.

    A tuple, not a dataclass: it is part of every page key, and a tuple hashes and
    compares in C (a dataclass's generated ``__hash__`` runs in Python, on every page lookup).
    """

    size: int
    mtime_ns: int
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class FileStatus:
    """One entry as the backend reports it; ``None`` means the backend does not know.

    ``name`` is the last path component ("" for the mount's root). Fields the backend
    cannot supply (mode, owner, times) are filled in by the inode layer from fixed
    config values, never invented per call.
    """

    name: str
    kind: Kind
    size: int = 0
    mtime_ns: int | None = None
    ctime_ns: int | None = None
    atime_ns: int | None = None
    mode: int | None = None  # permission bits only (0o7777)
    uid: int | None = None
    gid: int | None = None
    nlink: int | None = None
    blocks: int | None = None  # 512-byte blocks, when the backend knows real allocation
    rdev: int | None = None  # a device's number
    # Where names can be hard links (a local directory): what the source's file is, the
    # same for all its names; given for a file with more than one link.
    file_id: int | None = None
    etag: str | None = None
    # The content's own modification time when ``mtime_ns`` is another one (an object's
    # LastModified, when its metadata says the file's mtime, as ``cp -a`` left it): the
    # version is the content's, so a listing (no metadata) and a HEAD name one version.
    version_mtime_ns: int | None = None
    # False: from a listing that does not carry all the attributes the store keeps (S3
    # object metadata); its mode, owner and times may be defaults, its version is right.
    complete: bool = True
    # Derived once, at construction: every page lookup compares versions.
    version: Version = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        mtime = self.mtime_ns if self.version_mtime_ns is None else self.version_mtime_ns
        object.__setattr__(self, "version", Version(self.size, mtime or 0, self.etag))

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIRECTORY


# rename(2) flags, as in <linux/fs.h>.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


@dataclass(frozen=True, slots=True)
class WriteSupport:
    """What a backend can change and keep, known before any change is attempted, so that
    what it cannot do is refused at once with a documented errno."""

    files: bool = True  # files can be written at all (not over HTTP, inside archives, ...)
    modes: bool = False  # chmod
    owners: bool = False  # chown
    times: bool = False  # utimens
    symlinks: bool = False
    nodes: bool = False  # FIFOs, sockets and devices (mknod)
    links: bool = False  # hard links
    rename_noreplace: bool = False  # RENAME_NOREPLACE, atomically
    rename_exchange: bool = False  # RENAME_EXCHANGE, atomically
    directories: bool = True  # empty directories exist on their own (else: marker objects)
    # The longest path a new entry may have, in UTF-8 bytes from the mount's root (object
    # stores: what their key length leaves); None: no bound but the names'.
    path_max: int | None = None
    # A file's commit needs its directory to exist (a local rename into it): a create
    # checks that it still does, else the new file could never be committed.
    needs_parent: bool = False


class Commit(NamedTuple):
    """What a commit of a staged file made."""

    status: FileStatus
    # The staged file itself became the new content (hard-linked into place): it must
    # never be changed again.
    linked: bool = False


@dataclass(frozen=True, slots=True)
class Attrs:
    """A change of attributes: the fields that are not None are set."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


@dataclass(frozen=True, slots=True)
class FsStats:
    """Capacity figures for statfs; all zero when the backend has no notion of capacity."""

    block_size: int = 4096
    blocks: int = 0
    blocks_free: int = 0
    blocks_avail: int = 0
    files: int = 0
    files_free: int = 0
    name_max: int = 255
