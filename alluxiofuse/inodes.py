"""Inode table: kernel-visible inode numbers, their paths, statuses and lookup counts.

An inode number is a 63-bit hash of the mount-relative path, so the same path keeps the
same number for the mount's whole life (and across remounts), even after the kernel has
forgotten it, without the table having to remember every path it ever saw. If two live
paths hash alike, the later one probes on to the next free number. When a path changes
kind (a file replaced by a directory) it gets a fresh number, because the kernel treats an
inode whose type changes as broken.

The kernel holds a reference per successful lookup (and per readdirplus entry); it gives
them back with ``forget``. An inode leaves the table when its count reaches zero.

An inode the kernel learned from a listing (every entry of a readdirplus) keeps its status
as a position in that listing, not as a status object of its own: ``ls -l`` of a directory
of a million files leaves a million inodes in the table, and a status object with its
integers costs four times what the rest of the inode does (see listing.py).
"""

from __future__ import annotations

import enum
import hashlib

from alluxiofuse.errors import StaleFile
from alluxiofuse.listing import Listing
from alluxiofuse.model import FileStatus, Kind, Version

ROOT_INODE = 1
_INO_MASK = (1 << 63) - 1
# A dict keeps the room its largest size took after entries leave it: once the table is
# this many times smaller than at its largest (and that was large), it is copied into
# dicts of its present size (a walk of a million files left 50 MB of empty tables).
_SHRINK = 4
_SHRINK_FROM = 10_000


class _Attrs(enum.Enum):
    CURRENT = "the inode's own status"


class Inode:
    """One inode: its number, its path, its status, and what the kernel holds of it."""

    __slots__ = ("_attrs", "_index", "_listing", "_status", "ino", "kernel_version", "lookups",
                 "path")

    def __init__(
        self, ino: int, path: str, status: FileStatus, lookups: int = 0, *,
        listed: tuple[Listing, int] | None = None,
    ) -> None:
        self.ino = ino
        self.path = path
        self.lookups = lookups
        # The file version whose pages the kernel may still hold, for FOPEN_KEEP_CACHE.
        self.kernel_version: Version | None = None
        # The file version whose size the kernel's cached attributes hold (None: unknown).
        self._attrs: Version | _Attrs | None = None
        self._status: FileStatus | None = None
        self._listing: Listing | None = None
        self._index = 0
        self._set(status, listed)

    @property
    def status(self) -> FileStatus:
        if self._listing is not None:
            return self._listing[self._index]
        assert self._status is not None
        return self._status

    @status.setter
    def status(self, status: FileStatus) -> None:
        self.set_status(status)

    @property
    def kind(self) -> Kind:
        if self._listing is not None:
            return self._listing.kind(self._index)
        assert self._status is not None
        return self._status.kind

    def set_status(self, status: FileStatus, listed: tuple[Listing, int] | None = None) -> None:
        """``status``, which is entry ``listed[1]`` of listing ``listed[0]`` if given."""
        if self._attrs is _Attrs.CURRENT and self.status.version != status.version:
            self._attrs = self.status.version  # what the kernel holds stays as it was
        self._set(status, listed)

    def is_listed(self, listing: Listing, index: int) -> bool:
        """Whether the status is entry ``index`` of ``listing`` (nothing learned since)."""
        return self._listing is listing and self._index == index

    @property
    def attrs_version(self) -> Version | None:
        """The file version whose size the kernel's cached attributes hold (None: unknown)."""
        if self._attrs is _Attrs.CURRENT:
            return self.status.version
        return self._attrs

    @attrs_version.setter
    def attrs_version(self, version: Version | None) -> None:
        self._attrs = version

    def attrs_given(self) -> None:
        """The kernel was handed this inode's status as it is now."""
        self._attrs = _Attrs.CURRENT

    def _set(self, status: FileStatus, listed: tuple[Listing, int] | None) -> None:
        if listed is None:
            self._status, self._listing, self._index = status, None, 0
        else:
            self._status = None
            self._listing, self._index = listed


def inode_number(path: str, probe: int = 0) -> int:
    """The ``probe``-th candidate inode number for ``path`` (never 0 or the root's 1)."""
    data = path.encode("utf-8", "surrogateescape") + (b"\0%d" % probe if probe else b"")
    number = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & _INO_MASK
    return number if number > ROOT_INODE else number + 2


class InodeTable:
    """Live inodes by number and by path. Pure state: no I/O, no awaits."""

    def __init__(self, root_status: FileStatus) -> None:
        root = Inode(ROOT_INODE, "", root_status, lookups=1)
        self._by_ino: dict[int, Inode] = {ROOT_INODE: root}
        self._by_path: dict[str, Inode] = {"": root}
        self._largest = 1  # the most inodes held since the tables were last sized

    def __len__(self) -> int:
        return len(self._by_ino)

    def numbers(self) -> list[int]:
        return list(self._by_ino)

    def get(self, ino: int) -> Inode:
        """The live inode ``ino``; a number the table does not hold is a stale handle."""
        try:
            return self._by_ino[ino]
        except KeyError:
            raise StaleFile(f"inode {ino} is not known") from None

    def by_path(self, path: str) -> Inode | None:
        return self._by_path.get(path)

    def number_for(self, path: str) -> int:
        """The number ``path`` has, or would get if it were learned now."""
        inode = self._by_path.get(path)
        return inode.ino if inode is not None else self._free_number(path)

    def learn(
        self, path: str, status: FileStatus, listed: tuple[Listing, int] | None = None,
    ) -> Inode:
        """The inode for ``path``, created or updated with ``status`` (entry ``listed[1]``
        of listing ``listed[0]``, if given); lookups unchanged."""
        inode = self._by_path.get(path)
        if inode is not None and inode.kind is status.kind:
            inode.set_status(status, listed)
            return inode
        if inode is not None:  # changed kind: detach the old inode, it lives on until forgotten
            del self._by_path[path]
        inode = Inode(self._free_number(path), path, status, listed=listed)
        self._by_ino[inode.ino] = inode
        self._by_path[path] = inode
        self._largest = max(self._largest, len(self._by_ino))
        return inode

    def remember(self, inode: Inode) -> None:
        """The kernel was handed ``inode`` once more (a lookup or a readdirplus entry)."""
        inode.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        inode = self._by_ino.get(ino)
        if inode is None or ino == ROOT_INODE:
            return
        inode.lookups -= count
        self.discard_if_unused(inode)

    def discard_if_unused(self, inode: Inode) -> None:
        """Drop ``inode`` if the kernel holds no reference to it."""
        if inode.lookups > 0 or inode.ino == ROOT_INODE:
            return
        self._by_ino.pop(inode.ino, None)
        if self._by_path.get(inode.path) is inode:
            del self._by_path[inode.path]
        if self._largest >= _SHRINK_FROM and len(self._by_ino) * _SHRINK < self._largest:
            self._by_ino, self._by_path = dict(self._by_ino), dict(self._by_path)
            self._largest = len(self._by_ino)

    def unlink(self, path: str) -> None:
        """``path`` no longer names its inode; the inode lives on until forgotten (an
        open file that was removed), and a new entry at ``path`` gets a new number."""
        self._by_path.pop(path, None)

    def rename(self, old: str, new: str) -> None:
        """``old`` and everything under it move to ``new``; what ``new`` named is unlinked."""
        self.unlink(new)
        moved = self._by_path.pop(old, None)
        if moved is None:
            return
        moved.path = new
        self._by_path[new] = moved
        if moved.kind is Kind.DIRECTORY:
            prefix = old + "/"
            for path in [p for p in self._by_path if p.startswith(prefix)]:
                inode = self._by_path.pop(path)
                inode.path = new + path[len(old):]
                self._by_path[inode.path] = inode

    def is_linked(self, inode: Inode) -> bool:
        """Whether ``inode`` is still what its path names (not removed or replaced)."""
        return self._by_path.get(inode.path) is inode

    def _free_number(self, path: str) -> int:
        probe = 0
        while (number := inode_number(path, probe)) in self._by_ino:
            probe += 1
        return number
