"""Open handles: one table of them by number, each a file read at one version, a file being
written, or a directory; a file's reads go through the page cache, with adaptive
sequential read-ahead.

A handle pins the file version it was opened with: every page it reads is keyed by that
version and fetched as that version. Once a change is seen (a refreshed status, or the
backend's own check on the range it reads), reads through the handle fail with ESTALE
instead of mixing in bytes of the new version.

Read-ahead: a read that stays on the current page or moves to the next one is sequential
and doubles the handle's window (up to ``max_readahead``) each time it enters a new page;
any other read is random and resets the window to zero. The pages of the window that are
neither cached nor being fetched are prefetched in the background, but only while the
bytes in flight stay under the daemon-wide prefetch budget. Where the backend reads
several pages in one request well (its ``span``: ranged GETs of an object store), the
window is asked for in runs of that many pages, one request each, several in flight, and
a run is only cut short where the reader is about to need it or the file ends. Sequential
readers drop behind: pages they have read through leave the page cache at once (the
kernel caches them).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial

from alluxiofuse.backends.base import Backend
from alluxiofuse.errors import StaleFile
from alluxiofuse.fs.inodes import Inode
from alluxiofuse.fs.pages import PageCache, PageKey
from alluxiofuse.fs.readahead import Prefetcher, StreamCursor
from alluxiofuse.listing import ListingStream
from alluxiofuse.model import Data, FileStatus, Version
from alluxiofuse.writes.staging import StagedFile

# Largest page a waiting reader takes from the backend's non-blocking path (see _fetch).
_INLINE_READ_MAX = 128 * 1024


class FileHandle:
    """One open of a file at one version."""

    def __init__(
        self, inode: Inode, version: Version, *, backend: Backend, pages: PageCache,
        page_size: int, max_readahead: int, prefetcher: Prefetcher,
    ) -> None:
        self.inode = inode
        self.ino = inode.ino
        self.path = inode.path
        self.version = version
        self._backend = backend
        self._pages = pages
        self._page_size = page_size
        self._max_window = max_readahead // page_size
        self._span = backend.span // page_size  # pages read ahead in one request; 0, 1: one
        self._prefetcher = prefetcher
        self._last_page = -1
        self.window = 0  # in pages
        self._stream = StreamCursor(
            backend, self.path, version, page_size=page_size, spawn=prefetcher.spawn,
            wanted=self._wanted,
        ) if backend.streams else None
        self._reading: Counter[int] = Counter()  # pages of the reads in progress
        self._behind = -1  # the last page read through by sequential reads (and dropped)
        self._read_to = -1  # where the last read ended
        self._asked = -1  # the last page read ahead in this run of sequential reads

    @property
    def size(self) -> int:
        return self.version.size

    async def read(self, offset: int, size: int) -> Data:
        """Up to ``size`` bytes at ``offset``; fewer only at the end of the file.

        Raises ``StaleFile`` once the file is known to have changed since the open.
        """
        if self.inode.status.version != self.version:
            raise StaleFile(f"{self.path} changed since it was opened")
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        ps = self._page_size
        first, last = offset // ps, (end - 1) // ps
        self._advance_window(first, last)
        pages = range(first, last + 1)
        streaming = self._stream is not None
        if streaming:
            self._reading.update(pages)
        try:
            parts = []
            for index in pages:
                start = max(offset, index * ps) - index * ps
                stop = min(end, (index + 1) * ps) - index * ps
                page = await self._page(index, served=stop - start)
                parts.append(page[start:stop] if (start, stop) != (0, len(page)) else page)
        finally:
            if streaming:
                self._reading.subtract(pages)
                for index in pages:
                    if not self._reading[index]:
                        del self._reading[index]
        # A read that starts inside a page has read it through only if the bytes before
        # it on the page were read just before (the kernel's concurrent read-ahead
        # requests can arrive out of order; the page is kept for the earlier part).
        through_from = first if offset % ps == 0 or offset == self._read_to else first + 1
        self._read_to = end
        if not self.window:
            self._behind = -1
        else:
            self._drop_behind(through_from,
                              last if end % ps == 0 or end == self.size else last - 1)
        return parts[0] if len(parts) == 1 else b"".join(parts)

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

    def _wanted(self, index: int) -> bool:
        """Whether a task will come for page ``index``: a read in progress, or a fetch."""
        return (self._reading[index] > 0
                or self._prefetcher.coming(PageKey(self.ino, self.version, index)))

    async def aclose(self) -> None:
        """The file is closed (its stream, if it has one, too)."""
        if self._stream is not None:
            await self._stream.aclose()

    def start(self) -> None:
        """Begin fetching the first page now: the kernel's first read follows the open, so
        the page is fetched as a reader's (``read``), never queued as read-ahead behind
        other files' runs."""
        if self.size > 0:
            key = PageKey(self.ino, self.version, 0)
            fetch = partial(self._fetch, 0, inline=False)
            if self._prefetcher.prefetch(key, fetch, self._length(0), self._unread):
                self._asked = max(self._asked, 0)

    def _unread(self) -> bool:
        """Whether no read has come yet. Once one has, the page fetched at the open is
        the reader's own business: read (and perhaps dropped) already, or wanted no more."""
        return self._last_page < 0

    def _advance_window(self, first: int, last: int) -> None:
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
        last = min(last, (self.size - 1) // self._page_size)
        if self._span > 1:
            self._schedule_runs(max(first, self._asked + 1), last)
            return
        for index in range(max(first, self._asked + 1), last + 1):
            key = PageKey(self.ino, self.version, index)
            fetch = partial(self._fetch, index, inline=False)
            wanted = partial(self._ahead, index)
            if not self._prefetcher.prefetch(key, fetch, self._length(index), wanted):
                return
            self._asked = index

    def _schedule_runs(self, first: int, last: int) -> None:
        """Read ahead pages ``first`` to ``last`` in runs of ``span`` pages, one backend
        request each (``read_many``). A shorter run is asked for only when it is the
        reader's next (it starts within a span of the last page read) or ends the file:
        otherwise it waits for the window to grow, so that requests stay full."""
        end = (self.size - 1) // self._page_size
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

    async def _fetch_run(self, keys: list[PageKey]) -> Sequence[Data | Exception]:
        """Pages ``keys`` of this file from the backend, as read-ahead."""
        return await self._backend.read_many(
            [(self.path, key.page * self._page_size, self._length(key.page), self.version)
             for key in keys])

    async def _page(self, index: int, *, served: int) -> Data:
        key = PageKey(self.ino, self.version, index)
        return await self._pages.get(
            key, partial(self._fetch, index), expected=self._length(index), served=served,
        )

    def _length(self, index: int) -> int:
        return max(0, min(self._page_size, self.size - index * self._page_size))

    async def _fetch(self, index: int, *, inline: bool = True) -> Data:
        """Page ``index`` from the backend.

        A reader waiting for a small page takes what the backend can answer at once: that
        saves a worker-thread hop, which costs more than copying a small page. Large pages
        and read-ahead go the blocking way, in the background, so the event loop never
        copies whole pages: large demand reads, and read-ahead even more, made sequential
        reads slower inline (bench/RESULTS.md).
        """
        offset, length = index * self._page_size, self._length(index)
        if self._stream is not None:
            return await self._stream.page(index, length)
        data: Data | None = None
        if inline and length <= _INLINE_READ_MAX:
            data = self._backend.read_nowait(self.path, offset, length, self.version)
        if data is None:
            data = await self._backend.read(self.path, offset, length, self.version)
        return data


@dataclass
class StagedHandle:
    """One open of a file being written (staged): reads and writes go to the spool."""

    staged: StagedFile
    writing: bool  # opened for writing: its close commits


@dataclass
class DirHandle:
    """One open of a directory: a snapshot of its entries (or of a listing still arriving,
    page by page), so offsets stay meaningful."""

    ino: int
    path: str
    entries: Sequence[FileStatus] | ListingStream


Handle = FileHandle | StagedHandle | DirHandle


class HandleTable:
    """The open handles, by number: the kernel's ``fh``. Numbers count up from 1 across
    every kind and are never reused, so a late request on a closed handle finds nothing."""

    def __init__(self) -> None:
        self._open: dict[int, Handle] = {}
        self._numbers = itertools.count(1)

    def __len__(self) -> int:
        return len(self._open)

    def add(self, handle: Handle) -> int:
        fh = next(self._numbers)
        self._open[fh] = handle
        return fh

    def get(self, fh: int) -> Handle | None:
        return self._open.get(fh)

    def values(self) -> Iterable[Handle]:
        return self._open.values()

    def remove(self, fh: int) -> None:
        del self._open[fh]
