"""Page cache: fixed-size pages of file content, bounded in bytes, with single-flight misses.

A page is keyed by (inode, file version, page index): when a file's version changes its
old pages can never be served again, whatever is still cached. Misses are single-flight:
the first task to miss fetches, later ones wait for its result (or its error) instead of
fetching the same bytes again. Pages brought in by read-ahead are marked until first read,
so the metrics can tell read-ahead that paid off from read-ahead that was wasted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import NamedTuple

from alluxiofuse.flight import SingleFlight
from alluxiofuse.metrics import Metrics
from alluxiofuse.model import Data, Version


class PageKey(NamedTuple):
    ino: int
    version: Version
    page: int


class PageCache:
    """LRU of pages; cached plus in-flight bytes stay within ``capacity``, except while
    in-flight fetches alone exceed it."""

    def __init__(self, capacity: int, metrics: Metrics) -> None:
        self.capacity = capacity
        self.used = 0  # bytes of cached pages
        self.reserved = 0  # bytes of pages being fetched
        self._metrics = metrics
        self._pages: OrderedDict[PageKey, Data] = OrderedDict()
        self._flights: SingleFlight[PageKey, Data] = SingleFlight()
        self._unread_prefetch: set[PageKey] = set()
        self._by_ino: dict[int, set[PageKey]] = {}
        metrics.watch_page_cache(lambda: self.used, lambda: self.capacity)

    def __contains__(self, key: PageKey) -> bool:
        """Cached or being fetched."""
        return key in self._pages or key in self._flights

    def fetching(self, key: PageKey) -> bool:
        """Being fetched: some task will come for the page's bytes."""
        return key in self._flights

    async def get(
        self, key: PageKey, fetch: Callable[[], Awaitable[Data]], *, expected: int,
        served: int = 0, prefetch: bool = False,
    ) -> Data:
        """The page ``key``, fetching it with ``fetch()`` on a miss.

        ``expected`` is the page's length: a fetch reserves it in the cache up front, so
        bytes in flight count against the bound too. ``served`` is how many of its bytes
        the caller will hand out, for the hit metric (a miss counts the whole page). A
        fetch error reaches every task waiting for that page and is not cached. If the
        fetching task is cancelled, a waiter fetches the page itself.
        """
        data = self._pages.get(key)
        if data is not None:
            self._pages.move_to_end(key)
        else:
            call = partial(self._fetch, key, fetch, prefetch, expected)
            data, fetched = await self._flights.run(key, call)
            if fetched:
                return data
        if not prefetch:
            self._count_hit(key, served)
        return data

    async def fill(
        self, pages: Sequence[tuple[PageKey, int]],
        fetch_all: Callable[[list[PageKey]], Awaitable[Sequence[Data | Exception]]],
    ) -> None:
        """Read ahead ``pages`` (key, expected length) with one ``fetch_all(keys)`` call.

        Pages cached or in flight already are skipped. Until the call returns, each page
        is in flight like a miss of :meth:`get`, which waits for it; a page whose fetch
        failed is not cached, and the waiters get its error.
        """
        todo = [(key, length) for key, length in pages if key not in self]
        if not todo:
            return
        keys = [key for key, _ in todo]
        flights = [self._flights.begin(key) for key in keys]
        expected = sum(length for _, length in todo)
        self.reserved += expected
        self._evict()
        outcomes: Sequence[Data | Exception | None] = [None] * len(keys)  # None: cancelled
        try:
            outcomes = await fetch_all(keys)
            if len(outcomes) != len(keys):
                raise ValueError(f"{len(outcomes)} results for {len(keys)} pages")
        except Exception as e:
            outcomes = [e] * len(keys)
            raise
        finally:
            self.reserved -= expected
            for key, flight, outcome in zip(keys, flights, outcomes, strict=True):
                if isinstance(outcome, bytes | memoryview):  # Data
                    self._insert(key, outcome, prefetch=True)
                    self._flights.finish(key, flight, outcome)
                else:  # an error, or None: a waiter then fetches the page itself
                    self._flights.finish(key, flight, error=outcome)

    def resize(self, capacity: int) -> None:
        """Bound the cache to ``capacity`` bytes from now on, evicting what no longer fits."""
        self.capacity = capacity
        self._evict()

    def clear(self) -> None:
        """Forget every cached page (pages being fetched still arrive)."""
        for ino in list(self._by_ino):
            self.drop_file(ino)

    def drop_file(self, ino: int) -> None:
        """Forget every cached page of ``ino``, all versions (its content changed)."""
        for key in self._by_ino.pop(ino, set()):
            data = self._pages.pop(key, None)
            if data is not None:
                self._release(key, data, evicted=False)

    async def _fetch(
        self, key: PageKey, fetch: Callable[[], Awaitable[Data]], prefetch: bool, expected: int,
    ) -> Data:
        self.reserved += expected
        self._evict()
        try:
            data = await fetch()
        finally:
            self.reserved -= expected
        if not prefetch:
            self._metrics.page_cache_miss_bytes.inc(len(data))
        self._insert(key, data, prefetch)
        return data

    def _insert(self, key: PageKey, data: Data, prefetch: bool) -> None:
        if len(data) > self.capacity:
            return
        self._pages[key] = data
        self.used += len(data)
        self._by_ino.setdefault(key.ino, set()).add(key)
        if prefetch:
            self._unread_prefetch.add(key)
        self._evict()

    def discard(self, key: PageKey) -> None:
        """Forget page ``key``, if cached: it has been read through by a reader that will
        not be back for it."""
        data = self._pages.pop(key, None)
        if data is not None:
            self._unindex(key)
            self._release(key, data, evicted=False)

    def _evict(self) -> None:
        """Evict least recently used pages until cached plus reserved bytes fit."""
        while self._pages and self.used + self.reserved > self.capacity:
            old_key, old = self._pages.popitem(last=False)
            self._unindex(old_key)
            self._release(old_key, old, evicted=True)

    def _unindex(self, key: PageKey) -> None:
        keys = self._by_ino.get(key.ino)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_ino[key.ino]

    def _release(self, key: PageKey, data: Data, *, evicted: bool) -> None:
        self.used -= len(data)
        if evicted:
            self._metrics.page_cache_evicted_bytes.inc(len(data))
        if key in self._unread_prefetch:
            self._unread_prefetch.discard(key)
            self._metrics.readahead_wasted_bytes.inc(len(data))

    def _count_hit(self, key: PageKey, served: int) -> None:
        self._metrics.page_cache_hit_bytes.inc(served)
        if key in self._unread_prefetch:
            self._unread_prefetch.discard(key)
            page = self._pages.get(key)
            self._metrics.readahead_used_bytes.inc(len(page) if page is not None else served)
