"""Which byte ranges of a file are held locally: a set of disjoint half-open ranges.

A staged file (one being written) holds only the ranges a program wrote or that were
fetched from the file's previous content; reads of the other ranges go to that content
first. This is the bookkeeping, kept small and exact: ranges are sorted, disjoint and
never touching (adjacent ranges are merged), so two sets with the same bytes compare
equal and the journal stores a canonical form. Pure computation, no I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


class Extents:
    """A set of byte offsets, kept as sorted, disjoint, non-adjacent ``[start, end)`` ranges."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(start, end)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Extents):
            return NotImplemented
        return self._starts == other._starts and self._ends == other._ends

    def __repr__(self) -> str:
        return f"Extents({list(self)!r})"

    @property
    def total(self) -> int:
        """How many bytes the set holds."""
        return sum(self._ends) - sum(self._starts)

    def add(self, start: int, end: int) -> None:
        """Add ``[start, end)``, merging it with every range it overlaps or touches."""
        _check(start, end)
        if start == end:
            return
        # Ranges i..j-1 overlap or touch [start, end): their end >= start, their start <= end.
        i = bisect.bisect_left(self._ends, start)
        j = bisect.bisect_right(self._starts, end)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def truncate(self, size: int) -> None:
        """Drop every offset at or after ``size``."""
        _check(size, size)
        i = bisect.bisect_left(self._starts, size)  # ranges from i on start at or past size
        del self._starts[i:], self._ends[i:]
        if i and self._ends[i - 1] > size:
            self._ends[i - 1] = size

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` the set does not hold, in order."""
        _check(start, end)
        gaps = []
        i = bisect.bisect_right(self._ends, start)  # the first range ending after start
        position = start
        while position < end and i < len(self._starts) and self._starts[i] < end:
            if self._starts[i] > position:
                gaps.append((position, self._starts[i]))
            position = max(position, self._ends[i])
            i += 1
        if position < end:
            gaps.append((position, end))
        return gaps

    def covers(self, start: int, end: int) -> bool:
        """Whether every offset of ``[start, end)`` is held."""
        return not self.missing(start, end)


def _check(start: int, end: int) -> None:
    if start < 0 or end < start:
        raise ValueError(f"not a byte range: [{start}, {end})")
