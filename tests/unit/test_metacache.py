"""Metadata cache TTLs, negative entries, listings and bounds, on a fake clock."""

from __future__ import annotations

from collections import Counter

import pytest

from alluxiofuse.fs.metacache import (
    MISSING_BYTES,
    STATUS_BYTES,
    MetadataCache,
    join,
    parent_and_name,
)
from alluxiofuse.listing import Listing
from alluxiofuse.model import FileStatus, Kind


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def st(name: str, size: int = 1) -> FileStatus:
    return FileStatus(name, Kind.FILE, size=size, mtime_ns=1)


def make(
    clock: FakeClock, *, attr: float = 1.0, negative: float = 2.0, dirs: float = 3.0,
    max_bytes: int = 1 << 20,
) -> MetadataCache:
    return MetadataCache(
        attr_ttl=attr, negative_ttl=negative, dir_ttl=dirs, max_bytes=max_bytes, timer=clock,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_join_and_split() -> None:
    assert join("", "a") == "a"
    assert join("a/b", "c") == "a/b/c"
    assert parent_and_name("a") == ("", "a")
    assert parent_and_name("a/b/c") == ("a/b", "c")


def test_status_expires_after_attr_ttl(clock: FakeClock) -> None:
    cache = make(clock)
    status = st("f")
    cache.put_status("f", status)
    assert cache.status("f") is status
    clock.advance(0.99)
    assert cache.status("f") is status
    clock.advance(0.01)
    assert cache.status("f") is None


def test_missing_expires_after_negative_ttl(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put_missing("gone")
    assert cache.is_missing("gone")
    assert not cache.is_missing("other")
    clock.advance(1.5)  # past attr_ttl, inside negative_ttl
    assert cache.is_missing("gone")
    clock.advance(0.5)
    assert not cache.is_missing("gone")


def test_listing_expires_after_dir_ttl(clock: FakeClock) -> None:
    cache = make(clock)
    entries = [st("a"), st("b")]
    cache.put_listing("d", entries)
    listing = cache.listing("d")
    assert listing is not None and list(listing) == entries
    clock.advance(2.9)
    assert cache.listing("d") is not None
    clock.advance(0.1)
    assert cache.listing("d") is None


def test_put_listing_fills_child_statuses(clock: FakeClock) -> None:
    cache = make(clock)
    a, b = st("a"), st("b", size=7)
    cache.put_listing("", [a])
    cache.put_listing("d/e", [b])
    assert cache.status("a") == a
    assert cache.status("d/e/b") == b
    assert cache.status("b") is None
    # The children expire with attr_ttl, not dir_ttl.
    clock.advance(1.0)
    assert cache.status("a") is None
    assert cache.listing("") is not None


def test_put_listing_clears_negative_entries_of_children(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put_missing("d/a")
    cache.put_listing("d", [st("a")])
    assert not cache.is_missing("d/a")


def test_is_missing_from_fresh_parent_listing(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put_listing("d", [st("a")])
    cache.put_listing("", [st("d", 0)])
    assert cache.is_missing("d/x")
    assert not cache.is_missing("d/a")
    assert cache.is_missing("y")
    assert not cache.is_missing("d")
    assert not cache.is_missing("")  # the root is never missing
    assert not cache.is_missing("e/x")  # no listing of "e": unknown, not missing
    clock.advance(3.0)
    assert not cache.is_missing("d/x")


def test_put_status_and_put_missing_replace_each_other(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put_missing("f")
    cache.put_status("f", st("f"))
    assert not cache.is_missing("f")
    assert cache.status("f") is not None
    cache.put_missing("f")
    assert cache.is_missing("f")
    assert cache.status("f") is None


@pytest.mark.parametrize("zero", ["attr", "negative", "dirs"])
def test_ttl_zero_disables_that_cache(clock: FakeClock, zero: str) -> None:
    cache = make(clock, **{zero: 0.0})  # type: ignore[arg-type]
    cache.put_status("s", st("s"))
    cache.put_missing("m")
    cache.put_listing("d", [st("a")])
    assert (cache.status("s") is None) == (zero == "attr")
    assert cache.is_missing("m") == (zero != "negative")
    assert (cache.listing("d") is None) == (zero == "dirs")
    # Without a listing there is nothing to infer absence from.
    assert cache.is_missing("d/x") == (zero != "dirs")
    # A listing still provides child statuses when only the listing cache is off.
    assert (cache.status("d/a") is not None) == (zero != "attr")


def test_the_bound_evicts_the_least_recently_used(clock: FakeClock) -> None:
    cache = make(clock, max_bytes=3 * STATUS_BYTES)
    for name in "abc":
        cache.put_status(name, st(name))
    assert cache.status("a") is not None  # touch "a": "b" is now the oldest
    cache.put_status("d", st("d"))
    assert cache.status("b") is None
    assert [n for n in "acd" if cache.status(n) is not None] == ["a", "c", "d"]
    assert cache.nbytes == 3 * STATUS_BYTES


def test_the_bound_holds_negative_entries_too(clock: FakeClock) -> None:
    cache = make(clock, max_bytes=2 * MISSING_BYTES)
    for name in "abc":
        cache.put_missing(name)
    assert [n for n in "abc" if cache.is_missing(n)] == ["b", "c"]


def test_a_listing_counts_what_its_columns_hold(clock: FakeClock) -> None:
    size = Listing([st("1"), st("2")]).nbytes
    cache = make(clock, max_bytes=size + size // 2)
    cache.put_listing("x", [st("1"), st("2")])
    assert cache.nbytes == size
    cache.put_listing("y", [st("3"), st("4")])  # no room for both: "x" must go
    assert cache.listing("x") is None
    assert cache.listing("y") is not None


def test_listing_larger_than_bound_is_not_cached(clock: FakeClock) -> None:
    fits = [st("a"), st("b")]
    big = [st(str(i)) for i in range(300)]
    cache = make(clock, max_bytes=Listing(fits).nbytes + 200 * STATUS_BYTES)
    cache.put_listing("fits", fits)
    assert cache.listing("fits") is not None
    assert Listing(big).nbytes < cache.max_bytes < 300 * STATUS_BYTES
    cache.put_listing("huge", [st(str(i)) for i in range(20_000)])
    assert cache.listing("huge") is None
    assert not cache.is_missing("huge/zzz")
    # Its children's statuses are kept one by one, as stats' are (within the bound).
    assert cache.status("huge/9999") == st("9999")  # the last one kept, in name order
    # A too-large new listing also removes the stale smaller one for that path.
    cache.put_listing("fits", [st(str(i)) for i in range(20_000)])
    assert cache.listing("fits") is None
    assert not cache.is_missing("fits/a")


def test_a_stale_listing_is_kept_for_read_ahead(clock: FakeClock) -> None:
    """Past --dir-timeout a listing no longer answers (names, statuses, absence), but the
    directory read-ahead may still take the order of the files from it."""
    cache = make(clock)
    cache.put_listing("d", [st("a")])
    clock.advance(3.0)
    assert cache.listing("d") is None and not cache.is_missing("d/x")
    recent = cache.recent_listing("d")
    assert recent is not None and [e.name for e in recent] == ["a"]


def test_a_listing_keeps_a_complete_status_of_the_same_version(clock: FakeClock) -> None:
    """What a HEAD said (complete) outlives a listing naming the same version without the
    attributes, expiry included; a new version, or a listing that has them, replaces it."""
    from dataclasses import replace

    c = make(clock, attr=10.0, dirs=100.0)
    headed = FileStatus("a", Kind.FILE, size=1, mtime_ns=1, mode=0o600, uid=7)
    c.put_status("d/a", headed)
    c.put_status("d/b", replace(headed, name="b"))
    clock.advance(6)
    listed_a = FileStatus("a", Kind.FILE, size=1, mtime_ns=1, complete=False)
    listed_b = FileStatus("b", Kind.FILE, size=2, mtime_ns=1, complete=False)  # new version
    c.put_listing("d", [listed_a, listed_b])
    assert c.status("d/a") == headed
    assert c.status("d/b") == listed_b
    clock.advance(5)  # past the HEAD's expiry: the listing did not extend it
    assert c.status("d/a") == listed_a  # the listing's own, without the attributes
    c.put_status("d/a", headed)
    local = FileStatus("a", Kind.FILE, size=1, mtime_ns=1, mode=0o644)  # complete itself
    c.put_listing("d", [local])
    assert c.status("d/a") == local


def test_a_listing_answers_for_its_children_while_younger_than_the_status_timeout(
    clock: FakeClock,
) -> None:
    """A child's status from a listing is never older than the status timeout, however long
    the listing itself is kept; a stat of the child (put_status) is the newer word, and
    put_missing hides the listed child."""
    c = make(clock, attr=10.0, dirs=100.0)
    c.put_listing("d", [st("a"), st("b")])
    assert c.status("d/a") == st("a") and c.status("d/zzz") is None
    c.put_status("d/b", st("b", size=5))
    assert c.status("d/b") == st("b", size=5)
    c.put_missing("d/a")
    assert c.status("d/a") is None and c.is_missing("d/a")
    clock.advance(11)
    assert c.listing("d") is not None  # still names the children (absence, read-ahead)
    assert c.status("d/b") is None  # older than --attr-timeout: asked for again


def test_a_listings_children_do_not_push_other_statuses_out(clock: FakeClock) -> None:
    """Each child is kept once, in the listing: not as a status of its own too (a directory
    of 100,000 files would otherwise take 100,000 more entries and their memory)."""
    listed = [st("a"), st("b"), st("c")]
    c = make(clock, max_bytes=2 * STATUS_BYTES + Listing(listed).nbytes)
    c.put_status("x", st("x"))
    c.put_status("y", st("y"))
    c.put_listing("d", listed)
    assert c.status("x") == st("x") and c.status("y") == st("y")
    assert [c.status(f"d/{n}") for n in "abc"] == [st(n) for n in "abc"]


def test_the_children_it_counts_follow_whatever_removes_them(clock: FakeClock) -> None:
    """The count of cached statuses and missing names per directory, which lets a new
    listing skip looking for its children, stays exact through replacement, removal,
    expiry, eviction and clear."""
    from cachetools import Cache

    cache = make(clock, attr=1.0, negative=2.0, max_bytes=3 * STATUS_BYTES + MISSING_BYTES)
    held = cache._cache

    def check() -> None:
        keys = [k for k in Cache.__iter__(held) if k[0].value != "listing"]
        want = Counter(parent_and_name(path)[0] for _, path in keys)
        assert held.children == want

    cache.put_status("d/a", st("a"))
    cache.put_status("d/b", st("b"))
    cache.put_missing("e/x")
    check()
    cache.put_status("d/a", st("a", size=2))  # replaced, not added
    cache.put_listing("d", [st("a"), st("c")])  # d/a's own status goes: the listing is newer
    check()
    cache.put_status("f/1", st("1"))
    cache.put_status("f/2", st("2"))
    cache.put_status("f/3", st("3"))  # evicts the least recently used
    check()
    clock.advance(1.5)  # the statuses expire, the missing name not yet
    cache.put_missing("g/y")
    check()
    cache.put_status("f/3", st("3"))  # again, where its expired entry still sat
    check()
    cache.forget("e/x")
    check()
    cache.clear()
    check()
    assert not held.children


def test_a_listing_still_replaces_what_was_cached_of_its_children(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put_missing("d/new")
    cache.put_status("d/old", st("old", size=1))
    cache.put_listing("d", [st("new", size=5), st("old", size=2)])
    assert not cache.is_missing("d/new")
    assert cache.status("d/old") == st("old", size=2)
