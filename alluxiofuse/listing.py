"""A directory listing kept in columns: a handful of buffers, not an object per entry.

A listing held as ``FileStatus`` objects costs a dozen objects an entry (the object, its
version tuple, its name and its integer objects), in as many small allocations, which the
allocator seldom gives back once they are freed. Here the names are one string, each
integer field one ``array`` (only the fields some entry has), the kinds and completeness
one byte each: a few large allocations that go back to the system when the listing goes
(bench/RESULTS.md has the bytes an entry). An entry becomes a ``FileStatus`` again when it
is asked for.

A listing that arrives in pages (S3: 1,000 keys each) is read out page by page while the
rest is on its way (``ListingStream``): ``ls`` of a million objects starts at once, and its
entries reach the kernel while the store is still listing.
"""

from __future__ import annotations

import bisect
import operator
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate
from typing import NamedTuple, overload

import trio

from alluxiofuse.model import FileStatus, Kind

_KINDS = (Kind.FILE, Kind.DIRECTORY, Kind.SYMLINK, Kind.FIFO, Kind.SOCKET, Kind.CHAR_DEVICE,
          Kind.BLOCK_DEVICE)
_KIND_CODES = {kind: code for code, kind in enumerate(_KINDS)}
# The optional integer fields of a status, and what stands for "not known" in a column.
_FIELDS = ("mtime_ns", "ctime_ns", "atime_ns", "mode", "uid", "gid", "nlink", "blocks",
           "rdev", "file_id", "version_mtime_ns")
_ABSENT = -(1 << 63)


class Entry(NamedTuple):
    """An entry's attributes as a listing holds them: what a readdirplus reply gives the
    kernel, without the cost of a ``FileStatus`` (a frozen dataclass sets each field through
    ``object.__setattr__``: most of what handing out an entry cost)."""

    name: str
    kind: Kind
    size: int
    mtime_ns: int | None
    ctime_ns: int | None
    atime_ns: int | None
    mode: int | None
    uid: int | None
    gid: int | None
    nlink: int | None
    blocks: int | None
    rdev: int | None
    file_id: int | None
    complete: bool


# The fields of an ``Entry`` after its size, in ``_FIELDS``.
_ENTRY_FIELDS = Entry._fields[3:-1]


def kind_code(kind: Kind) -> int:
    return _KIND_CODES[kind]


class Columns:
    """Entries added one at a time straight into columns, for a ``Listing``: a backend
    listing a directory of many entries keeps no object per entry meanwhile (a tuple per
    entry, freed once the listing was made, left part of the allocator's memory behind
    in the process)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.kinds = bytearray()
        self.complete = bytearray()
        self.sizes: array[int] = array("q")
        self.fields: dict[str, array[int]] = {field: array("q") for field in _FIELDS}
        self.etags: list[str | None] = []

    def add(self, name: str, kind: int, size: int, *fields: int | None,
            complete: bool = True, etag: str | None = None) -> None:
        """One entry: ``kind`` a ``kind_code``, ``fields`` as many as ``_FIELDS`` (None:
        not known)."""
        self.names.append(name)
        self.kinds.append(kind)
        self.complete.append(complete)
        self.sizes.append(size)
        for column, value in zip(self.fields.values(), fields, strict=True):
            try:
                column.append(_ABSENT if value is None else value)
            except OverflowError:  # no 64-bit integer holds it: a backend's bad figure
                column.append(_ABSENT)
        self.etags.append(etag)

    def add_status(self, s: FileStatus) -> None:
        self.add(s.name, _KIND_CODES[s.kind], s.size, s.mtime_ns, s.ctime_ns, s.atime_ns,
                 s.mode, s.uid, s.gid, s.nlink, s.blocks, s.rdev, s.file_id,
                 s.version_mtime_ns,
                 complete=s.complete, etag=s.etag)


class Listing(Sequence[FileStatus]):
    """A directory's entries sorted by name (as ``str`` sorts), and when the listing was
    made (the metadata cache's timer). Indexing gives a ``FileStatus``; ``find`` a name's
    position."""

    __slots__ = ("_complete", "_entry_columns", "_etags", "_fields", "_kinds", "_names",
                 "_sizes", "_starts", "fetched_at", "nbytes")

    def __init__(self, entries: Iterable[FileStatus], fetched_at: float = 0.0) -> None:
        columns = Columns()
        for entry in entries:
            columns.add_status(entry)
        self._take(columns, fetched_at)

    @classmethod
    def from_columns(cls, columns: Columns, fetched_at: float = 0.0) -> Listing:
        """The listing of the entries in ``columns`` (which it takes over)."""
        listing = cls.__new__(cls)
        listing._take(columns, fetched_at)
        return listing

    @classmethod
    def joined(cls, pages: Sequence[Listing], fetched_at: float = 0.0) -> Listing:
        """One listing of the entries of ``pages``, column by column."""
        columns = Columns()
        for page in pages:
            n = len(page)
            columns.names += page.names()
            columns.kinds += page._kinds
            columns.complete += page._complete
            columns.sizes += page._sizes
            for field, column in columns.fields.items():
                column += page._fields.get(field) or array("q", [_ABSENT]) * n
            columns.etags += page._etags or [None] * n
        return cls.from_columns(columns, fetched_at)

    def _take(self, c: Columns, fetched_at: float) -> None:
        order = sorted(range(len(c.names)), key=c.names.__getitem__)
        if order != list(range(len(order))):  # put the columns in name order
            pick = operator.itemgetter(*order)  # a tuple: two entries at least, out of order
            c.names = list(pick(c.names))
            c.kinds = bytearray(pick(c.kinds))
            c.complete = bytearray(pick(c.complete))
            c.sizes = array("q", pick(c.sizes))
            c.fields = {f: array("q", pick(col)) for f, col in c.fields.items()}
            c.etags = list(pick(c.etags))
        self._names = "".join(c.names)
        self._starts = array("q", accumulate(map(len, c.names), initial=0))
        self._kinds = bytes(c.kinds)
        self._complete = bytes(c.complete)
        self._sizes = c.sizes
        # A field no entry has takes no column.
        self._fields = {f: col for f, col in c.fields.items() if col.count(_ABSENT) != len(col)}
        self._entry_columns = tuple(self._fields.get(f) for f in _ENTRY_FIELDS)
        self._etags: list[str | None] | None = c.etags if any(c.etags) else None
        self.fetched_at = fetched_at
        # What the listing holds, for the metadata cache's bound in bytes.
        held = [self._starts, self._sizes, *self._fields.values()]
        self.nbytes = (sys.getsizeof(self._names) + len(self._kinds) + len(self._complete)
                       + sum(sys.getsizeof(c) for c in held) + _etag_bytes(self._etags))

    def __len__(self) -> int:
        return len(self._kinds)

    @overload
    def __getitem__(self, index: int) -> FileStatus: ...

    @overload
    def __getitem__(self, index: slice) -> list[FileStatus]: ...

    def __getitem__(self, index: int | slice) -> FileStatus | list[FileStatus]:
        if isinstance(index, slice):
            return [self._status(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("listing index out of range")
        return self._status(index)

    def __iter__(self) -> Iterator[FileStatus]:
        return (self._status(i) for i in range(len(self)))

    def kind(self, index: int) -> Kind:
        return _KINDS[self._kinds[index]]

    def entry(self, index: int) -> Entry:
        """Entry ``index``'s attributes (``index`` in range)."""
        return Entry._make((self.name(index), _KINDS[self._kinds[index]], self._sizes[index],
                            *[None if c is None or (v := c[index]) == _ABSENT else v
                              for c in self._entry_columns],
                            bool(self._complete[index])))

    def name(self, index: int) -> str:
        return self._names[self._starts[index]:self._starts[index + 1]]

    def find(self, name: str) -> int | None:
        """The position of ``name``, or None when the listing does not name it."""
        index = bisect.bisect_left(range(len(self)), name, key=self.name)
        return index if index < len(self) and self.name(index) == name else None

    def names(self) -> Iterator[str]:
        return (self.name(i) for i in range(len(self)))

    def _status(self, i: int) -> FileStatus:
        fields = {}
        for field, column in self._fields.items():
            value = column[i]
            if value != _ABSENT:
                fields[field] = value
        return FileStatus(self.name(i), _KINDS[self._kinds[i]], self._sizes[i],
                          etag=self._etags[i] if self._etags is not None else None,
                          complete=bool(self._complete[i]), **fields)


class ListingStream:
    """A listing still arriving: its pages so far, each a ``Listing`` (sorted within
    itself), in the order they came; and, once it is done, the whole listing or the error
    that ended it. Entry ``i`` is the ``i``-th of the pages laid end to end."""

    def __init__(self) -> None:
        self.pages: list[Listing] = []
        self._starts = [0]  # where each page begins, and the end of the last
        self.done = False
        self.listing: Listing | None = None  # the whole, once done without an error
        self.error: Exception | None = None
        self._changed = trio.Event()

    def __len__(self) -> int:
        return self._starts[-1]

    def add(self, page: Listing) -> None:
        self.pages.append(page)
        self._starts.append(self._starts[-1] + len(page))
        self._wake()

    def finish(self, listing: Listing | None = None, error: Exception | None = None) -> None:
        self.done, self.listing, self.error = True, listing, error
        self._wake()

    def locate(self, index: int) -> tuple[Listing, int]:
        """The page that holds entry ``index``, and its position there."""
        page = bisect.bisect_right(self._starts, index) - 1
        return self.pages[page], index - self._starts[page]

    async def wait_beyond(self, count: int) -> None:
        """Until more than ``count`` entries have come, or none will any more."""
        while len(self) <= count and not self.done:
            await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def _etag_bytes(etags: Sequence[str | None] | None) -> int:
    if etags is None:
        return 0
    return sys.getsizeof(etags) + sum(sys.getsizeof(e) for e in etags if e is not None)
