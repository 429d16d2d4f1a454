"""Read-ahead: each open file's window, the mount-wide budget of background page fetches,
the stream a streaming backend's file is read from, and the first pages of the next files
of a directory read in order. (The page cache counts which fetched-ahead pages were read,
for the metrics.)

A file's window: a read that stays on the current page or moves to the next one is
sequential and doubles the window (up to ``max_readahead``) each time it enters a new
page; any other read is random and resets the window to zero. The pages of the window
that are neither cached nor being fetched are prefetched in the background, but only
while the bytes in flight stay under the daemon-wide prefetch budget. Where the backend
reads several pages in one request well (its ``span``: ranged GETs of an object store),
the window is asked for in runs of that many pages, one request each, several in flight,
and a run is only cut short where the reader is about to need it or the file ends.
Sequential readers drop behind: pages they have read through leave the page cache at once
(the kernel caches them).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import trio
from cachetools import LRUCache

from alluxiofuse.backends.base import Backend, ByteStream
from alluxiofuse.config import MountConfig
from alluxiofuse.errors import BackendError, StaleFile
from alluxiofuse.fs.diskreads import DiskReads
from alluxiofuse.fs.inodes import Inode, InodeTable
from alluxiofuse.fs.metacache import MetadataCache, join, parent_and_name
from alluxiofuse.fs.pages import PageCache, PageKey
from alluxiofuse.fs.statuses import Statuses
from alluxiofuse.model import Data, Kind, Version

log = logging.getLogger(__name__)

# An open this close to the furthest position opened so far continues an in-order streak
# (a few readers working through a listing together land a little behind or ahead).
_STREAK_DISTANCE = 4
# Opens in a row needed before files are fetched ahead.
_STREAK_START = 2

Spawn = Callable[..., object]  # nursery.start_soon

# The read-ahead window of a file unless --max-readahead says otherwise: a backend read
# page by page, or this many requests of its span in flight, enough to hide each one's
# wait for its first byte behind the others' transfers (bench/RESULTS.md).
_READAHEAD = 16 * 1024 * 1024
_READAHEAD_REQUESTS = 8


def default_readahead(span: int) -> int:
    """The largest read-ahead window of a file from a backend whose ``span`` is this."""
    return max(_READAHEAD, _READAHEAD_REQUESTS * span)


@dataclass
class Prefetcher:
    """Background page fetches, under one budget of bytes in flight for the whole mount."""

    spawn: Spawn
    pages: PageCache
    budget: int
    in_flight: int = 0
    # Spawned but maybe not started yet, so not yet a flight the page cache knows about.
    _pending: set[PageKey] = field(default_factory=set)

    def prefetch(
        self, key: PageKey, fetch: Callable[[], Awaitable[Data]], length: int,
        wanted: Callable[[], bool],
    ) -> bool:
        """Fetch page ``key`` in the background unless it is cached or being fetched, or
        no longer ``wanted()`` once the task starts.

        Returns False when the budget is spent, so the caller stops asking for more.
        """
        return self.run(key, length, partial(self._fetch, key, fetch, length, wanted))

    def run(self, key: PageKey, length: int, job: Callable[[], Awaitable[object]]) -> bool:
        """Run ``job``, which brings page ``key`` (``length`` bytes) into the cache along
        with more (the file's status), in the background, unless the page is cached or on
        its way. Returns False when the budget is spent, as ``prefetch`` does."""
        if key in self._pending or key in self.pages:
            return True
        if self.in_flight + length > self.budget:
            return False
        self.in_flight += length
        self._pending.add(key)
        self.spawn(self._job, key, length, job)
        return True

    async def _job(self, key: PageKey, length: int, job: Callable[[], Awaitable[object]]) -> None:
        try:
            await job()
        except Exception as e:  # a demand read of the page reports it (or fetches again)
            log.debug("prefetch of %s failed: %r", key, e)
        finally:
            self.in_flight -= length
            self._pending.discard(key)

    async def _fetch(
        self, key: PageKey, fetch: Callable[[], Awaitable[Data]], length: int,
        wanted: Callable[[], bool],
    ) -> None:
        # A reader can get to the page first (fetching it itself) and read it through
        # before this task starts: fetching it again would be for nothing.
        if wanted():
            await self.pages.get(key, fetch, expected=length, prefetch=True)

    def coming(self, key: PageKey) -> bool:
        """Whether a task is on its way for page ``key`` (spawned, or fetching it)."""
        return key in self._pending or self.pages.fetching(key)

    def prefetch_many(
        self, pages: Sequence[tuple[PageKey, int]],
        fetch_all: Callable[[list[PageKey]], Awaitable[Sequence[Data | Exception]]],
    ) -> int:
        """Fetch several pages in the background with one ``fetch_all`` call.

        Pages already cached or in flight are skipped; the rest are taken in order while
        the budget lasts. Returns how many of ``pages`` were dealt with (skipped or taken):
        the caller can come back for the others. Each page still gets its own single-flight
        entry, so a demand read of one of them waits for the batch instead of fetching it.
        """
        taken: list[tuple[PageKey, int]] = []
        done = 0
        for key, length in pages:
            if key not in self._pending and key not in self.pages:
                if self.in_flight + length > self.budget:
                    break
                self.in_flight += length
                self._pending.add(key)
                taken.append((key, length))
            done += 1
        if taken:
            self.spawn(self._fill, taken, fetch_all)
        return done

    async def _fill(
        self, pages: list[tuple[PageKey, int]],
        fetch_all: Callable[[list[PageKey]], Awaitable[Sequence[Data | Exception]]],
    ) -> None:
        try:
            await self.pages.fill(pages, fetch_all)
        except Exception as e:  # a demand read of one of the pages reports it
            log.debug("read-ahead of %d pages failed: %r", len(pages), e)
        finally:
            for key, length in pages:
                self.in_flight -= length
                self._pending.discard(key)


class StreamCursor:
    """One open file's stream, for a backend whose reads are streams (``streams``).

    Pages are read from the stream in order. It is opened at the first page wanted and
    reopened (at the page wanted) only when a read goes back, or when reading on from where
    it stands fails (a proxy closes a stream left unused long enough). Read-ahead fetches
    pages in tasks of their own, which may come for them out of order: pages passed over
    on the way to a later one are kept for the fetches already waiting for them
    (``wanted``), never read twice. At the end of the file the stream is closed at once.
    """

    def __init__(
        self, backend: Backend, path: str, version: Version, *, page_size: int,
        wanted: Callable[[int], bool], spawn: Spawn,
    ) -> None:
        self._backend = backend
        self._path = path
        self._version = version
        self._page_size = page_size
        self._wanted = wanted
        self._spawn = spawn
        self._lock = trio.Lock()
        self._stream: ByteStream | None = None
        self._position = 0
        self._passed: dict[int, Data] = {}  # page index -> its bytes, for fetches waiting
        self._closed = False

    async def page(self, index: int, length: int) -> Data:
        """Page ``index`` (``length`` bytes) from the stream."""
        try:  # a free lock is taken without a trip through the scheduler
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()
        try:
            return await self._page(index, length)
        finally:
            self._lock.release()

    async def _page(self, index: int, length: int) -> Data:
        for stale in [i for i in self._passed if not self._wanted(i)]:
            del self._passed[stale]
        data = self._passed.pop(index, None)
        if data is not None:
            return data
        if self._closed:
            raise StaleFile(f"{self._path}: read after the file was closed")
        offset = index * self._page_size
        reused = self._stream is not None and self._position <= offset
        try:
            return await self._read_page(index, length)
        except BackendError as e:
            await self._drop()
            if not reused:
                raise
            log.debug("%s: reading on from %d failed (%s); reopening", self._path,
                      self._position, e)
        return await self._read_page(index, length)

    async def aclose(self) -> None:
        """The file is closed: so is its stream, and nothing opens another."""
        async with self._lock:
            self._closed = True
            self._passed.clear()
            await self._drop()

    async def _read_page(self, index: int, length: int) -> Data:
        offset = index * self._page_size
        if self._stream is None or offset < self._position:
            await self._drop()
            self._stream = await self._backend.open_stream(self._path, offset, self._version)
            self._position = offset
        try:
            while self._position < offset:
                passed = self._position // self._page_size
                data = await self._read(min(self._page_size, self._version.size - self._position))
                if self._wanted(passed):
                    self._passed[passed] = data
            data = await self._read(length)
            if self._position >= self._version.size:
                await self._at_end()
        except BaseException:
            await self._drop()  # where the stream stands is not known any more
            raise
        return data

    async def _read(self, n: int) -> Data:
        assert self._stream is not None
        data = await self._stream.read(n)
        if len(data) != n:
            raise StaleFile(f"{self._path} is shorter than when it was opened")
        self._position += n
        return data

    async def _at_end(self) -> None:
        """The last byte is read: the file must end here, and the stream is closed (in the
        background: the reader waiting for this page need not wait for that)."""
        assert self._stream is not None
        if await self._stream.read(1):
            raise StaleFile(f"{self._path} is longer than when it was opened")
        stream, self._stream = self._stream, None
        self._spawn(_close_stream, stream, self._path)

    async def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await _close_stream(stream, self._path)


async def _close_stream(stream: ByteStream, path: str) -> None:
    try:
        with trio.CancelScope(shield=True):
            await stream.aclose()
    except Exception as e:  # closing is tidying up: the reads it served are done
        log.debug("%s: closing its stream failed: %r", path, e)


class FileReadahead:
    """One open file's read-ahead: the window, grown while reads are sequential and reset
    by any other, the pages of it asked for, and the pages sequential reads drop behind
    them."""

    def __init__(
        self, ino: int, version: Version, *, page_size: int, max_readahead: int, span: int,
        pages: PageCache, prefetcher: Prefetcher,
        fetch: Callable[[int], Awaitable[Data]],
        fetch_run: Callable[[list[PageKey]], Awaitable[Sequence[Data | Exception]]],
    ) -> None:
        self.ino = ino
        self.version = version
        self._size = version.size
        self._page_size = page_size
        self._max_window = max_readahead // page_size
        self._span = span // page_size  # pages read ahead in one request; 0, 1: one
        self._pages = pages
        self._prefetcher = prefetcher
        self._fetch = fetch  # page index -> its bytes, fetched in the background
        self._fetch_run = fetch_run  # several pages in one request
        self._last_page = -1
        self.window = 0  # in pages
        self._behind = -1  # the last page read through by sequential reads (and dropped)
        self._read_to = -1  # where the last read ended
        self._asked = -1  # the last page read ahead in this run of sequential reads

    def coming(self, index: int) -> bool:
        """Whether a fetch is on its way for page ``index``."""
        return self._prefetcher.coming(PageKey(self.ino, self.version, index))

    def done(self, offset: int, end: int) -> None:
        """A read of bytes ``offset`` to ``end`` is done: drop what it read through."""
        ps = self._page_size
        first, last = offset // ps, (end - 1) // ps
        # A read that starts inside a page has read it through only if the bytes before
        # it on the page were read just before (the kernel's concurrent read-ahead
        # requests can arrive out of order; the page is kept for the earlier part).
        through_from = first if offset % ps == 0 or offset == self._read_to else first + 1
        self._read_to = end
        if not self.window:
            self._behind = -1
        else:
            self._drop_behind(through_from,
                              last if end % ps == 0 or end == self._size else last - 1)

    def start(self) -> None:
        """Begin fetching the first page now: the kernel's first read follows the open, so
        the page is fetched as a reader's (``read``), never queued as read-ahead behind
        other files' runs."""
        if self._size > 0:
            key = PageKey(self.ino, self.version, 0)
            fetch = partial(self._fetch, 0)
            if self._prefetcher.prefetch(key, fetch, self._length(0), self._unread):
                self._asked = max(self._asked, 0)

    def _unread(self) -> bool:
        """Whether no read has come yet. Once one has, the page fetched at the open is
        the reader's own business: read (and perhaps dropped) already, or wanted no more."""
        return self._last_page < 0

    def advance(self, first: int, last: int) -> None:
        """A read of pages ``first`` to ``last`` begins: grow or reset the window, and
        ask for what it holds."""
        if first in (self._last_page, self._last_page + 1):
            if last > self._last_page:
                self.window = min(self._max_window, max(1, self.window * 2))
        else:  # a new run: what the last one read through is not behind this one
            self.window = 0
            self._asked = -1
            self._behind = -1
        self._last_page = last
        self._schedule_prefetch(last + 1, last + self.window)

    def _schedule_prefetch(self, first: int, last: int) -> None:
        """Read ahead pages ``first`` to ``last``, but for those already asked for in
        this run of sequential reads (each read would ask again for most of its window)."""
        last = min(last, (self._size - 1) // self._page_size)
        if self._span > 1:
            self._schedule_runs(max(first, self._asked + 1), last)
            return
        for index in range(max(first, self._asked + 1), last + 1):
            key = PageKey(self.ino, self.version, index)
            fetch = partial(self._fetch, index)
            wanted = partial(self._ahead, index)
            if not self._prefetcher.prefetch(key, fetch, self._length(index), wanted):
                return
            self._asked = index

    def _schedule_runs(self, first: int, last: int) -> None:
        """Read ahead pages ``first`` to ``last`` in runs of ``span`` pages, one backend
        request each (``read_many``). A shorter run is asked for only when it is the
        reader's next (it starts within a span of the last page read) or ends the file:
        otherwise it waits for the window to grow, so that requests stay full."""
        end = (self._size - 1) // self._page_size
        start = first
        while start <= last:
            stop = min(start + self._span - 1, last)
            if stop - start + 1 < self._span and stop < end and (
                    start > self._last_page + self._span):
                return
            run = [(PageKey(self.ino, self.version, i), self._length(i))
                   for i in range(start, stop + 1)]
            taken = self._prefetcher.prefetch_many(run, self._fetch_run)
            self._asked = start + taken - 1
            if taken < len(run):  # the budget is spent: the next read asks again
                return
            start = stop + 1

    def _drop_behind(self, first: int, last: int) -> None:
        """A sequential reader has read pages ``first`` to ``last`` through: they leave the
        page cache at once. The kernel keeps what it was given in its own cache (other
        readers of the file are answered from there too), and this reader will not be
        back; freed now, their memory takes the next pages. Kept until evicted instead, a
        large file read once filled the page cache with pages nobody would ask for again,
        each of them fresh memory (a page fault per 4 KiB, the kernel zeroing each one),
        and held the process's memory as high as the cache's bound for nothing."""
        for index in range(first, last + 1):
            self._pages.discard(PageKey(self.ino, self.version, index))
        self._behind = max(self._behind, last)

    def _ahead(self, index: int) -> bool:
        """Whether page ``index`` is still to be read (not read through and dropped)."""
        return index > self._behind

    def _length(self, index: int) -> int:
        return max(0, min(self._page_size, self._size - index * self._page_size))


@dataclass
class _Streak:
    """Where the opens of one directory's files have got to, and what is fetched ahead."""

    furthest: int  # the furthest listing position opened
    streak: int = -1  # opens in a row near ``furthest``
    fetched_to: int = 0  # positions before this are fetched (or being fetched) already

    def advance(self, index: int) -> bool:
        """Record an open at ``index``; whether the directory is being read in order."""
        if abs(index - self.furthest) <= _STREAK_DISTANCE:
            self.streak += 1
            self.furthest = max(index, self.furthest)
        else:
            self.streak, self.furthest, self.fetched_to = 0, index, 0
        return self.streak >= _STREAK_START


class DirectoryReadahead:
    """Where the opens of each directory's files have got to, and the fetches ahead of them."""

    def __init__(
        self, config: MountConfig, backend: Backend, inodes: InodeTable, meta: MetadataCache,
        statuses: Statuses, prefetcher: Prefetcher, disk: DiskReads | None = None,
    ) -> None:
        self._config = config
        self._backend = backend
        self._disk = disk
        self._inodes = inodes
        self._meta = meta
        self._statuses = statuses
        self._prefetcher = prefetcher
        self._streaks: LRUCache[str, _Streak] = LRUCache(maxsize=1024)

    def opened(self, inode: Inode) -> None:
        """Fetch the first pages of the next files of a directory read in order.

        ``cp -r``, ``tar``, ``sha256sum *`` and sequential data loaders open a directory's
        files in listing order, one after another (or a few at a time). Once a few opens
        in a row land within a few places of the furthest one yet, the next files' first
        pages are fetched ahead: a window that doubles with the streak, up to
        ``dir_readahead`` files, refilled in one batch whenever the reader gets within half
        a window of its end (one worker-thread job per batch). A backend whose data the
        operating system caches (a local directory) is only asked to warm the files, and
        the reads are then answered from that cache without a thread. Shuffled access
        almost never builds a streak, so it costs (almost) nothing. Only directories listed
        recently take part, and only what their opens would ask the backend for is asked
        ahead (the attributes a listing lacks, on S3). Pages are keyed by the inode number
        each file has, or will get when the kernel looks it up.
        """
        limit = self._config.dir_readahead
        parent, name = parent_and_name(inode.path)
        listing = self._meta.recent_listing(parent) if limit else None
        index = listing.find(name) if listing is not None else None
        if listing is None or index is None:
            return
        state = self._streaks.get(parent) or _Streak(index)
        self._streaks[parent] = state
        if not state.advance(index) or state.fetched_to >= len(listing):
            return
        window = min(limit, 2 ** (state.streak + 2))
        if state.fetched_to - state.furthest > window // 2:
            return  # enough is on its way
        start = max(state.fetched_to, state.furthest)  # from the newest open on
        entries = listing[start:start + window]
        files = []  # (listing position, path, status) of the files worth fetching
        for position, status in enumerate(entries, start):
            child = join(parent, status.name)
            known = self._inodes.by_path(child)
            # The file being opened fetches its own first page as a reader's (``start``):
            # in a batch too, a read of it that ended before the batch began would be
            # fetched a second time.
            opening = child == inode.path and not self._backend.warms
            # Nor a file whose pages the kernel holds from an earlier open of this version:
            # its open will tell the kernel to keep them, and nothing will read it here.
            if (status.kind is Kind.FILE and status.size and not opening
                    and (known is None or (known.status.version == status.version
                                           and known.kernel_version != status.version))):
                files.append((position, child, status))
        reads = [(child, 0, min(self._config.page_size, s.size), s.version)
                 for _, child, s in files]
        if self._backend.warms:  # the kernel caches the files; reads then take them inline
            state.fetched_to = start + len(entries)
            if reads:
                self._prefetcher.spawn(self._backend.warm, reads)
            return
        keys = [PageKey(self._inodes.number_for(child), s.version, 0) for _, child, s in files]
        # A small file whose listed status lacks attributes the store keeps (S3) is asked
        # for its status before it is read (the getattr of the open's permission check):
        # the request that tells status and content at once is the one made ahead.
        taken, plain = len(files), []
        for i, ((_, child, status), key) in enumerate(zip(files, keys, strict=True)):
            if not self._statuses.read_with_status(child, status):
                plain.append(i)
                if not status.complete and self._statuses.cached(child, attrs=True) is None:
                    # Its open will ask for the attributes the listing lacked (S3 object
                    # metadata): asked now, the request's wait overlaps the reads before.
                    self._prefetcher.spawn(self._fetch_status, child)
                continue
            job = partial(self._statuses.flights.run, child,
                          partial(self._statuses.fetch_status_and_content, child, status.size,
                                  ahead=True))
            if not self._prefetcher.run(key, status.size, job):
                taken = i
                break
        plain = [i for i in plain if i < taken]
        read_of = {keys[i]: reads[i] for i in plain}
        done = self._prefetcher.prefetch_many(
            [(keys[i], reads[i][2]) for i in plain],
            lambda wanted: self._read_many([read_of[key] for key in wanted]),
        )
        if done < len(plain):
            taken = plain[done]
        # Had the budget run out, the next open tries again from the first file not taken.
        state.fetched_to = start + len(entries) if taken == len(files) else files[taken][0]

    async def _fetch_status(self, path: str) -> None:
        try:
            await self._statuses.stat(path, attrs=True)
        except Exception as e:  # the open asks again, and reports what it meets
            log.debug("status of %s ahead of its open failed: %r", path, e)

    async def _read_many(
        self, reads: list[tuple[str, int, int, Version]],
    ) -> Sequence[Data | Exception]:
        if self._disk is not None:
            return await self._disk.read_many(self._backend, reads)
        return await self._backend.read_many(reads)
