"""A directory listing kept in columns: a handful of buffers, not an object per entry.

A listing of 100,000 entries held as ``FileStatus`` objects costs about 500 bytes an entry
(the object, its version tuple, its name and a dozen integer objects) in hundreds of
thousands of small allocations, which the allocator seldom gives back once they are freed.
Here the names are one string, each integer field one ``array`` (only the fields some entry
has), the kinds and completeness one byte each: under 100 bytes an entry for a local
directory, in a few large allocations that go back to the system when the listing goes.
An entry becomes a ``FileStatus`` again when it is asked for.

A listing that arrives in pages (S3: 1,000 keys each) is read out page by page while the
rest is on its way (``ListingStream``): ``ls`` of a million objects starts at once, and its
entries reach the kernel while the store is still listing.
"""

from __future__ import annotations

import bisect
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate, repeat
from operator import itemgetter
from typing import Any, overload

import trio

from alluxiofuse.model import FileStatus, Kind

_KINDS = (Kind.FILE, Kind.DIRECTORY, Kind.SYMLINK)
_KIND_CODES = {kind: code for code, kind in enumerate(_KINDS)}
# The optional integer fields of a status, and what stands for "not known" in a column.
_FIELDS = ("mtime_ns", "ctime_ns", "atime_ns", "mode", "uid", "gid", "nlink", "blocks",
           "version_mtime_ns")
_ABSENT = -(1 << 63)


# One entry as the columns take it: name, kind code, complete, size, etag, then _FIELDS.
Row = tuple[str, int, bool, int, "str | None", "int | None", "int | None", "int | None",
            "int | None", "int | None", "int | None", "int | None", "int | None",
            "int | None"]


_ROW_LENGTH = 5 + len(_FIELDS)


def row(status: FileStatus) -> Row:
    s = status
    return (s.name, _KIND_CODES[s.kind], s.complete, s.size, s.etag, s.mtime_ns, s.ctime_ns,
            s.atime_ns, s.mode, s.uid, s.gid, s.nlink, s.blocks, s.version_mtime_ns)


def kind_code(kind: Kind) -> int:
    return _KIND_CODES[kind]


def _column(values: Sequence[int | None]) -> array[int] | list[int] | None:
    """``values`` as a column; None when none is known."""
    try:
        column: array[int] = array("q", values)  # type: ignore[arg-type]  # None: below
    except TypeError:  # some are None
        if all(v is None for v in values):
            return None
        return _column([_ABSENT if v is None else v for v in values])
    except OverflowError:  # a value no 64-bit integer holds (a backend's bad figure)
        return [_ABSENT if v is None else v for v in values]
    # Every value absent (the rows of listings joined mark them so): no column.
    return None if column and column.count(_ABSENT) == len(column) else column


class Listing(Sequence[FileStatus]):
    """A directory's entries sorted by name (as ``str`` sorts), and when the listing was
    made (the metadata cache's timer). Indexing gives a ``FileStatus``; ``find`` a name's
    position."""

    __slots__ = ("_complete", "_etags", "_fields", "_kinds", "_names", "_sizes", "_starts",
                 "fetched_at", "nbytes")

    def __init__(self, entries: Iterable[FileStatus], fetched_at: float = 0.0) -> None:
        self._build([row(e) for e in entries], fetched_at)

    @classmethod
    def from_rows(cls, rows: list[Row], fetched_at: float = 0.0) -> Listing:
        """The listing of these entries, as ``row`` gives them (a backend that never makes
        a status object of each: a local directory's thousands of stat results)."""
        listing = cls.__new__(cls)
        listing._build(rows, fetched_at)
        return listing

    @classmethod
    def joined(cls, pages: Sequence[Listing], fetched_at: float = 0.0) -> Listing:
        """One listing of the entries of ``pages`` (each page's rows, never a status)."""
        return cls.from_rows([r for page in pages for r in page._rows()], fetched_at)

    def _rows(self) -> Iterator[Row]:
        """The entries as rows, an absent field as its column's mark (``_build`` keeps it)."""
        n = len(self)
        fields = [self._fields.get(f) or repeat(_ABSENT, n) for f in _FIELDS]
        etags = self._etags if self._etags is not None else repeat(None, n)
        # All of one length: strict would only cost a check per entry.
        return zip(self.names(), self._kinds, map(bool, self._complete), self._sizes, etags,
                   *fields, strict=False)

    def _build(self, rows: list[Row], fetched_at: float) -> None:
        rows.sort(key=itemgetter(0))
        # One tuple per column (transposed in C), each of the rows' length.
        columns: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) or [()] * _ROW_LENGTH
        names, kinds, complete, sizes, etags, *fields = columns
        self._names = "".join(names)
        self._starts = array("q", accumulate(map(len, names), initial=0))
        self._kinds = bytes(kinds)
        self._complete = bytes(complete)
        self._sizes = _column(sizes) or array("q")
        self._fields: dict[str, array[int] | list[int]] = {}
        for field, values in zip(_FIELDS, fields, strict=True):
            column = _column(values)
            if column is not None:
                self._fields[field] = column
        self._etags: Sequence[str | None] | None = etags if any(etags) else None
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
