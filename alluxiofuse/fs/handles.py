"""Open handles: one table of them by number, each a file read at one version, a file being
written, or a directory; a file's reads go through the page cache, with adaptive
sequential read-ahead (``readahead.FileReadahead``).

A handle pins the file version it was opened with: every page it reads is keyed by that
version and fetched as that version. Once a change is seen (a refreshed status, or the
backend's own check on the range it reads), reads through the handle fail with ESTALE
instead of mixing in bytes of the new version.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from alluxiofuse.backends.base import Backend
from alluxiofuse.errors import StaleFile
from alluxiofuse.fs.diskreads import DiskReads
from alluxiofuse.fs.inodes import Inode
from alluxiofuse.fs.pages import PageCache, PageKey
from alluxiofuse.fs.readahead import FileReadahead, Prefetcher, StreamCursor
from alluxiofuse.listing import ListingStream
from alluxiofuse.model import Data, FileStatus, Version
from alluxiofuse.writes.staging import StagedFile

# Largest page a waiting reader takes from the backend's non-blocking path (see _fetch).
_INLINE_READ_MAX = 128 * 1024


class FileHandle:
    """One open of a file at one version."""

    def __init__(
        self, inode: Inode, version: Version, *, backend: Backend, pages: PageCache,
        page_size: int, max_readahead: int, prefetcher: Prefetcher, disk: DiskReads | None = None,
    ) -> None:
        self.inode = inode
        self.ino = inode.ino
        self.path = inode.path
        self.version = version
        self._backend = backend
        self._pages = pages
        self._page_size = page_size
        self._disk = disk
        self._readahead = FileReadahead(
            self.ino, version, page_size=page_size, max_readahead=max_readahead,
            span=backend.span, pages=pages, prefetcher=prefetcher,
            fetch=partial(self._fetch, inline=False), fetch_run=self._fetch_run,
        )
        self._stream = StreamCursor(
            backend, self.path, version, page_size=page_size, spawn=prefetcher.spawn,
            wanted=self._wanted,
        ) if backend.streams else None
        self._reading: Counter[int] = Counter()  # pages of the reads in progress

    @property
    def size(self) -> int:
        return self.version.size

    @property
    def window(self) -> int:
        """How many pages ahead of the reader are fetched (read-ahead), now."""
        return self._readahead.window

    def start(self) -> None:
        """Begin fetching the first page now (see ``FileReadahead.start``)."""
        self._readahead.start()

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
        self._readahead.advance(first, last)
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
        self._readahead.done(offset, end)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _wanted(self, index: int) -> bool:
        """Whether a task will come for page ``index``: a read in progress, or a fetch."""
        return self._reading[index] > 0 or self._readahead.coming(index)

    async def aclose(self) -> None:
        """The file is closed (its stream, if it has one, too)."""
        if self._stream is not None:
            await self._stream.aclose()

    async def _fetch_run(self, keys: list[PageKey]) -> Sequence[Data | Exception]:
        """Pages ``keys`` of this file from disk or the backend, as read-ahead."""
        reads = [(self.path, key.page * self._page_size, self._length(key.page), self.version)
                 for key in keys]
        if self._disk is not None:
            return await self._disk.read_many(self._backend, reads)
        return await self._backend.read_many(reads)

    async def _page(self, index: int, *, served: int) -> Data:
        key = PageKey(self.ino, self.version, index)
        return await self._pages.get(
            key, partial(self._fetch, index), expected=self._length(index), served=served,
        )

    def _length(self, index: int) -> int:
        return max(0, min(self._page_size, self.size - index * self._page_size))

    async def _fetch(self, index: int, *, inline: bool = True) -> Data:
        """Page ``index`` from the disk page store, if there is one and it has the page,
        else from the backend (and then written to the store behind).

        A reader waiting for a small page takes what the backend can answer at once: that
        saves a worker-thread hop, which costs more than copying a small page. Large pages
        and read-ahead go the blocking way, in the background, so the event loop never
        copies whole pages: large demand reads, and read-ahead even more, made sequential
        reads slower inline (bench/RESULTS.md).
        """
        offset, length = index * self._page_size, self._length(index)
        data: Data | None = None
        if inline and length <= _INLINE_READ_MAX and self._stream is None:
            data = self._backend.read_nowait(self.path, offset, length, self.version)
            if data is not None:
                return data
        if self._disk is not None:
            data = await self._disk.get(self.path, self.version, index)
            if data is not None:
                return data
        if self._stream is not None:
            data = await self._stream.page(index, length)
        else:
            data = await self._backend.read(self.path, offset, length, self.version)
        if self._disk is not None and len(data) == length:
            self._disk.put_behind(self.path, self.version, index, data)
        return data


@dataclass
class StagedHandle:
    """One open of a file being written (staged): reads and writes go to the spool."""

    ino: int
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

    def remove(self, fh: int) -> None:
        del self._open[fh]

    def staged(self, ino: int) -> StagedFile | None:
        """The staged file an open handle of inode ``ino`` writes or reads, if any: what
        an inode with no name any more still shows until its last handle closes. A scan,
        for that rare case only."""
        for handle in self._open.values():
            if isinstance(handle, StagedHandle) and handle.ino == ino:
                return handle.staged
        return None
