"""The columnar listing gives back exactly the statuses it was made of."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from alluxiofuse.listing import Columns, Entry, Listing, ListingStream
from alluxiofuse.model import FileStatus, Kind


def statuses() -> list[FileStatus]:
    return [
        FileStatus("b.jpg", Kind.FILE, size=7, mtime_ns=1_700_000_000_123_456_789,
                   ctime_ns=5, atime_ns=-1, mode=0o644, uid=2**32 - 2, gid=0, nlink=1,
                   blocks=8),
        FileStatus("a", Kind.DIRECTORY),
        FileStatus("ünï\udcff", Kind.SYMLINK, size=3, etag='"abc"', complete=False),
        FileStatus("c", Kind.FILE, size=2**40, mtime_ns=1, version_mtime_ns=9, etag=None),
    ]


def test_a_listing_gives_back_each_status_sorted_by_name() -> None:
    given = statuses()
    listing = Listing(given, fetched_at=3.5)
    want = sorted(given, key=lambda s: s.name)
    assert list(listing) == want
    assert [listing[i] for i in range(len(listing))] == want
    assert [listing.kind(i) for i in range(4)] == [s.kind for s in want]
    assert listing[-1] == want[-1] and listing[1:3] == want[1:3]
    assert listing[3].version == want[3].version  # the content's mtime, not the metadata's
    assert list(listing.names()) == [s.name for s in want]
    assert listing.fetched_at == 3.5
    with pytest.raises(IndexError):
        listing[4]


def test_an_entry_holds_the_attributes_its_status_has() -> None:
    listing = Listing(statuses())
    for i, status in enumerate(listing):
        entry = listing.entry(i)
        assert entry == tuple(getattr(status, f) for f in Entry._fields)
    assert listing.entry(0).mode is None and listing.entry(1).mode == 0o644  # a, b.jpg


def test_find_names_a_position_or_none() -> None:
    listing = Listing(statuses())
    for i, name in enumerate(listing.names()):
        assert listing.find(name) == i
    for absent in ("", "0", "b", "b.jpg0", "zzz"):
        assert listing.find(absent) is None
    assert Listing([]).find("a") is None and len(Listing([])) == 0


def test_a_value_too_large_for_a_column_is_not_known() -> None:
    huge = FileStatus("x", Kind.FILE, size=1, mtime_ns=2**70, mode=0o600)
    assert list(Listing([huge])) == [FileStatus("x", Kind.FILE, size=1, mode=0o600)]


async def test_a_stream_lays_its_pages_end_to_end_and_wakes_its_readers() -> None:
    stream = ListingStream()
    woken: list[int] = []

    async def reader(count: int) -> None:
        await stream.wait_beyond(count)
        woken.append(count)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, 0)
        nursery.start_soon(reader, 3)
        await trio.testing.wait_all_tasks_blocked()
        first = Listing([FileStatus("b", Kind.FILE), FileStatus("a", Kind.FILE)])
        stream.add(first)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [0]  # 2 entries: more than 0, not more than 3
        second = Listing([FileStatus(n, Kind.FILE) for n in "cde"])
        stream.add(second)
    assert woken == [0, 3] and len(stream) == 5
    assert stream.locate(0) == (first, 0) and stream.locate(1) == (first, 1)
    assert stream.locate(2) == (second, 0) and stream.locate(4) == (second, 2)
    stream.finish(error=ValueError("over"))
    await stream.wait_beyond(99)  # done: no more to wait for
    assert stream.done and stream.listing is None


def test_listings_joined_and_made_from_rows_hold_the_same_entries() -> None:
    given = statuses()
    first, second = Listing(given[:2]), Listing(given[2:])
    joined = Listing.joined([second, first])
    assert list(joined) == sorted(given, key=lambda s: s.name)
    columns = Columns()
    for status in given:
        columns.add_status(status)
    assert list(Listing.from_columns(columns)) == list(joined)
    # A field no entry has takes no column, joined or not.
    plain = [FileStatus(n, Kind.FILE, size=1, mtime_ns=2) for n in "xyz"]
    assert Listing.joined([Listing(plain[:1]), Listing(plain[1:])]).nbytes == Listing(plain).nbytes
