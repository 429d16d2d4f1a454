"""Inode table: kernel-visible inode numbers, their paths, statuses and lookup counts.

An inode number is a 63-bit hash of the mount-relative path (of a file with several hard
links: of what it is in the source, so that all its names are one inode), so the same path
keeps the same number for the mount's whole life (and across remounts), even after the
kernel has forgotten it, without the table having to remember every path it ever saw. If
two live paths hash alike, the later one probes on to the next free number. When a path
changes kind (a file replaced by a directory) it gets a fresh number, because the kernel
treats an inode whose type changes as broken.

The kernel holds a reference per successful lookup (and per readdirplus entry); it gives
them back with ``forget``. An inode leaves the table when its count reaches zero.

An inode the kernel was handed in a readdirplus reply and has asked nothing of since is a
row, not an object: its number maps to a position in the listing it came from, and its
lookup count is kept in an array beside that listing (``ls -l`` of a directory of a
million files leaves a million inodes, and an object with its number, path and dict slots
costs several times what the listing's own entry does, in small allocations the
interpreter seldom gives back once freed; see bench/RESULTS.md). A row becomes an
``Inode`` object once the kernel asks for it by number or a path is learned anew; a row's
number is always its path's first candidate, so the path alone finds it.
"""

from __future__ import annotations

import enum
import hashlib
from array import array
from collections.abc import Iterator

from alluxiofuse.errors import StaleFile
from alluxiofuse.listing import Listing
from alluxiofuse.model import FileStatus, Kind, Version

ROOT_INODE = 1
_INO_MASK = (1 << 63) - 1
# A dict keeps the room its largest size took after entries leave it: once the table is
# this many times smaller than at its largest (and that was large), it is copied into
# dicts of its present size (a large walk otherwise leaves its empty tables behind).
_SHRINK = 4
_SHRINK_FROM = 10_000


class _Attrs(enum.Enum):
    CURRENT = "the inode's own status"


class Inode:
    """One inode: its number, its path, its status, and what the kernel holds of it.

    A file with several hard links has one inode for all its names the kernel was given:
    ``path``, the one its content is read and written by, and ``aliases``."""

    __slots__ = ("_attrs", "_index", "_listing", "_status", "aliases", "ino", "kernel_version",
                 "lookups", "path")

    def __init__(
        self, ino: int, path: str, status: FileStatus, lookups: int = 0, *,
        listed: tuple[Listing, int] | None = None,
    ) -> None:
        self.ino = ino
        self.path = path
        self.aliases: list[str] | None = None  # its other names (hard links), if any
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

    @property
    def names(self) -> list[str]:
        return [self.path, *(self.aliases or ())]

    def add_name(self, path: str) -> None:
        if path != self.path and path not in (self.aliases or ()):
            self.aliases = [*(self.aliases or ()), path]

    def rename_name(self, old: str, new: str) -> None:
        if self.path == old:
            self.path = new
        elif self.aliases and old in self.aliases:
            self.aliases = [new if name == old else name for name in self.aliases]

    def drop_name(self, path: str) -> None:
        """``path`` no longer names this inode; another of its names becomes its path.
        Its last name stays its path: an open file that was removed is still read by it."""
        if self.aliases and path == self.path:
            self.path = self.aliases.pop()
        elif self.aliases and path in self.aliases:
            self.aliases.remove(path)
        if not self.aliases:
            self.aliases = None

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


# A row's reference: its listing's rows id above its index, in a signed 64-bit integer.
_INDEX_BITS = 32
_INDEX = (1 << _INDEX_BITS) - 1
_ROWS_ID = (1 << 31) - 1


class _Rows:
    """The row inodes of one listing of ``directory``: entry ``i``'s kernel references
    (0: not a row)."""

    __slots__ = ("directory", "id", "listing", "live", "lookups")

    def __init__(self, id: int, directory: str, listing: Listing) -> None:
        self.id = id
        self.directory = directory
        self.listing = listing
        self.lookups = array("q", bytes(8 * len(listing)))
        self.live = 0  # entries with references

    def path(self, index: int) -> str:
        name = self.listing.name(index)
        return f"{self.directory}/{name}" if self.directory else name


class _NumberMap:
    """Inode number -> row reference (its ``_Rows`` id and index), as an open-addressing
    table in two arrays: two machine integers a slot in one allocation, where a dict would
    hold two integer objects and a slot in small allocations. Numbers are hashes,
    so their low bits spread well; 0 marks a free slot (no inode number is 0)."""

    _SMALLEST = 1024

    def __init__(self) -> None:
        self._reset(self._SMALLEST)

    def _reset(self, slots: int) -> None:
        self._mask = slots - 1
        self._keys = array("q", bytes(8 * slots))
        self._values = array("q", bytes(8 * slots))
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        return (key for key in self._keys if key)

    def get(self, key: int) -> int:
        """``key``'s value, or -1."""
        keys, mask = self._keys, self._mask
        i = key & mask
        while (found := keys[i]) != key:
            if not found:
                return -1
            i = (i + 1) & mask
        return self._values[i]

    def put(self, key: int, value: int) -> int:
        """Map ``key`` to ``value``; what it mapped to before, or -1."""
        keys, mask = self._keys, self._mask
        i = key & mask
        while (found := keys[i]) != key:
            if not found:
                keys[i] = key
                self.count += 1
                self._values[i] = value
                if self.count * 3 > len(keys) * 2:
                    self._resize(len(keys) * 2)
                return -1
            i = (i + 1) & mask
        old, self._values[i] = self._values[i], value
        return old

    def reserve(self, count: int) -> None:
        """Room for ``count`` more keys without growing on the way."""
        slots = len(self._keys)
        while (self.count + count) * 3 > slots * 2:
            slots *= 2
        if slots > len(self._keys):
            self._resize(slots)

    def pop(self, key: int) -> None:
        keys, values, mask = self._keys, self._values, self._mask
        i = key & mask
        while (found := keys[i]) != key:
            if not found:
                return
            i = (i + 1) & mask
        # Shift back the entries after it that probed past it, so no search stops early.
        j = i
        while found := keys[j := (j + 1) & mask]:
            home = found & mask
            if (i < home <= j) if i <= j else (i < home or home <= j):
                continue  # it stays: its home is after the hole
            keys[i], values[i] = found, values[j]
            i = j
        keys[i] = values[i] = 0
        self.count -= 1
        if len(keys) > self._SMALLEST and self.count * 8 < len(keys):
            self._resize(len(keys) // 4)  # the arrays go back to the system

    def _resize(self, slots: int) -> None:
        old = zip(self._keys, self._values, strict=True)
        self._reset(max(self._SMALLEST, slots))
        for key, value in old:
            if key:
                self.put(key, value)


class InodeTable:
    """Live inodes by number and by path. Pure state: no I/O, no awaits.

    An inode is an ``Inode`` object (held in ``_by_ino``, and in ``_by_path`` while its
    path names it) or a row of a listing (``_numbers``), never both; a path names at most
    one of them.
    """

    def __init__(self, root_status: FileStatus) -> None:
        root = Inode(ROOT_INODE, "", root_status, lookups=1)
        self._by_ino: dict[int, Inode] = {ROOT_INODE: root}
        self._by_path: dict[str, Inode] = {"": root}
        # Inodes of files with several links, by ``FileStatus.file_id``: another name of
        # the same file is learned as one more name of the same inode.
        self._by_file: dict[int, Inode] = {}
        self._largest = 1  # the most inodes held since the tables were last sized
        self._numbers = _NumberMap()
        self._rows: dict[int, _Rows] = {}  # by id
        self._rows_of: dict[int, _Rows] = {}  # by the id() of their listing
        self._next_rows = 0

    def __len__(self) -> int:
        return len(self._by_ino) + len(self._numbers)

    def numbers(self) -> list[int]:
        return [*self._by_ino, *self._numbers]

    def get(self, ino: int) -> Inode:
        """The live inode ``ino``; a number the table does not hold is a stale handle."""
        inode = self._by_ino.get(ino)
        if inode is not None:
            return inode
        ref = self._numbers.get(ino)
        if ref < 0:
            raise StaleFile(f"inode {ino} is not known")
        return self._promote(ino, ref)

    def by_path(self, path: str) -> Inode | None:
        inode = self._by_path.get(path)
        if inode is not None:
            return inode
        number = inode_number(path)
        ref = self._row(number, path)
        return self._promote(number, ref) if ref >= 0 else None

    def number_for(self, path: str) -> int:
        """The number ``path`` has, or would get if it were learned now."""
        inode = self._by_path.get(path)
        if inode is not None:
            return inode.ino
        number = inode_number(path)
        return number if self._row(number, path) >= 0 else self._free_number(path)

    def learn(
        self, path: str, status: FileStatus, listed: tuple[Listing, int] | None = None,
    ) -> Inode:
        """The inode for ``path``, created or updated with ``status`` (entry ``listed[1]``
        of listing ``listed[0]``, if given); lookups unchanged."""
        inode = self.by_path(path)
        if inode is not None and inode.kind is status.kind:
            self._set_status(inode, status, listed)
            return inode
        if inode is not None:  # changed kind: detach the old inode, it lives on until forgotten
            self.unlink(path)
        linked = self._by_file.get(status.file_id) if status.file_id is not None else None
        if linked is not None:
            self.add_name(linked, path, status)
            return linked
        # A file with several links is numbered by what it is, not by one of its names:
        # whichever name the kernel asks for first, the others get the same number.
        key = path if status.file_id is None else f"\0file {status.file_id}"
        inode = Inode(self._free_number(key), path, status, listed=listed)
        self._add(inode)
        if status.file_id is not None:
            self._by_file[status.file_id] = inode
        return inode

    def add_name(self, inode: Inode, path: str, status: FileStatus) -> None:
        """``path`` is one more name (a hard link) of ``inode``, whose status is now
        ``status``."""
        self.unlink(path)
        inode.add_name(path)
        self._set_status(inode, status)
        self._by_path[path] = inode

    def hold_row(self, path: str, directory: str, listing: Listing, index: int) -> int | None:
        """Entry ``index`` of ``listing`` (of ``directory``, at ``path``) is being handed to
        the kernel: its number, with one more reference, kept as a row of ``listing``
        (``forget`` gives it back if the kernel does not take it). None when it must be an
        object instead: an object has ``path`` or its number, or a row of another listing
        has it with a status this entry does not match."""
        if path in self._by_path or listing.entry(index).file_id is not None:
            return None  # an object already, or a name of a file with several
        number = inode_number(path)
        if number in self._by_ino:
            return None
        rows = self._rows_of.get(id(listing))
        if rows is None:
            while self._next_rows in self._rows:  # only after 2**31 listings
                self._next_rows = (self._next_rows + 1) & _ROWS_ID
            rows = _Rows(self._next_rows, directory, listing)
            self._next_rows = (self._next_rows + 1) & _ROWS_ID
            self._rows[rows.id] = self._rows_of[id(listing)] = rows
            self._numbers.reserve(len(listing))
        ref = rows.id << _INDEX_BITS | index
        old = self._numbers.put(number, ref)
        held = 0
        if old >= 0 and old != ref:
            other, at = self._rows[old >> _INDEX_BITS], old & _INDEX
            if other.path(at) != path or other.listing[at] != listing[index]:
                self._numbers.put(number, old)  # not this entry's, or not as it is now
                if not rows.live:
                    del self._rows[rows.id], self._rows_of[id(listing)]
                return None
            held = other.lookups[at]  # a listing of the directory made since: move over
            self._clear_row(other, at)
        if old == ref:
            rows.lookups[index] += 1
        else:
            rows.live += 1
            rows.lookups[index] = held + 1
        return number

    def remember(self, inode: Inode) -> None:
        """The kernel was handed ``inode`` once more (a lookup or a readdirplus entry)."""
        inode.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        inode = self._by_ino.get(ino)
        if inode is None:
            ref = self._numbers.get(ino)
            if ref >= 0:
                rows, at = self._rows[ref >> _INDEX_BITS], ref & _INDEX
                rows.lookups[at] = max(0, rows.lookups[at] - count)
                if not rows.lookups[at]:
                    self._clear_row(rows, at)
                    self._numbers.pop(ino)
            return
        if ino == ROOT_INODE:
            return
        inode.lookups -= count
        self.discard_if_unused(inode)

    def discard_if_unused(self, inode: Inode) -> None:
        """Drop ``inode`` if the kernel holds no reference to it."""
        if inode.lookups > 0 or inode.ino == ROOT_INODE:
            return
        self._by_ino.pop(inode.ino, None)
        for name in inode.names:
            if self._by_path.get(name) is inode:
                del self._by_path[name]
        file_id = inode.status.file_id
        if file_id is not None and self._by_file.get(file_id) is inode:
            del self._by_file[file_id]
        if self._largest >= _SHRINK_FROM and len(self._by_ino) * _SHRINK < self._largest:
            self._by_ino, self._by_path = dict(self._by_ino), dict(self._by_path)
            self._largest = len(self._by_ino)

    def unlink(self, path: str) -> None:
        """``path`` no longer names its inode; the inode lives on until forgotten (an
        open file that was removed), and a new entry at ``path`` gets a new number."""
        inode = self.by_path(path)  # a row becomes an object, which can outlive its name
        if inode is not None:
            del self._by_path[path]
            inode.drop_name(path)

    def rename(self, old: str, new: str) -> None:
        """``old`` and everything under it move to ``new``; what ``new`` named is unlinked."""
        self.unlink(new)
        moved = self.by_path(old)
        if moved is None:
            return
        del self._by_path[old]
        moved.rename_name(old, new)
        self._by_path[new] = moved
        if moved.kind is Kind.DIRECTORY:
            prefix = old + "/"
            # Rows under it are found by the hash of their path: they become objects.
            for rows in [r for r in self._rows.values()
                         if r.directory == old or r.directory.startswith(prefix)]:
                for at in [i for i, held in enumerate(rows.lookups) if held]:
                    path = rows.path(at)
                    self._promote(inode_number(path), rows.id << _INDEX_BITS | at)
            for path in [p for p in self._by_path if p.startswith(prefix)]:
                inode = self._by_path.pop(path)
                inode.rename_name(path, new + path[len(old):])
                self._by_path[new + path[len(old):]] = inode

    def is_linked(self, inode: Inode) -> bool:
        """Whether ``inode`` is still what its path names (not removed or replaced)."""
        return self._by_path.get(inode.path) is inode

    def _row(self, number: int, path: str) -> int:
        """The reference of the row ``path`` is, under its first number; or -1."""
        ref = self._numbers.get(number)
        if ref >= 0 and self._rows[ref >> _INDEX_BITS].path(ref & _INDEX) != path:
            return -1
        return ref

    def _promote(self, number: int, ref: int) -> Inode:
        """Row ``ref`` as an object, holding what the row held."""
        rows, at = self._rows[ref >> _INDEX_BITS], ref & _INDEX
        listing = rows.listing
        inode = Inode(number, rows.path(at), listing[at], rows.lookups[at],
                      listed=(listing, at))
        inode.attrs_given()  # the kernel has what the listing says
        self._clear_row(rows, at)
        self._numbers.pop(number)
        self._add(inode)
        return inode

    def _clear_row(self, rows: _Rows, at: int) -> None:
        rows.lookups[at] = 0
        rows.live -= 1
        if not rows.live:
            del self._rows[rows.id], self._rows_of[id(rows.listing)]

    def _set_status(
        self, inode: Inode, status: FileStatus, listed: tuple[Listing, int] | None = None,
    ) -> None:
        """``inode.set_status``, keeping ``_by_file`` true: a file's identity changes when
        a commit renames a new file over its name, and an identity the file system frees
        can be given to another file later."""
        old = inode.status.file_id
        inode.set_status(status, listed)
        if old != status.file_id and old is not None and self._by_file.get(old) is inode:
            del self._by_file[old]
        if status.file_id is not None:
            self._by_file[status.file_id] = inode

    def _add(self, inode: Inode) -> None:
        self._by_ino[inode.ino] = inode
        self._by_path[inode.path] = inode
        self._largest = max(self._largest, len(self._by_ino))

    def _free_number(self, path: str) -> int:
        probe = 0
        while ((number := inode_number(path, probe)) in self._by_ino
               or self._numbers.get(number) >= 0):
            probe += 1
        return number

