"""Statuses and listings of paths: the metadata cache first, then the backend, a directory
listed instead of stat-ed name by name when that answers more for less."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from cachetools import LRUCache

from alluxiofuse.backends.base import Backend
from alluxiofuse.config import MountConfig
from alluxiofuse.errors import BackendUnavailable, NotFound
from alluxiofuse.flight import SingleFlight
from alluxiofuse.fs.diskreads import DiskReads
from alluxiofuse.fs.inodes import Inode, InodeTable
from alluxiofuse.fs.metacache import MetadataCache, parent_and_name
from alluxiofuse.fs.pages import PageCache, PageKey
from alluxiofuse.listing import Listing, ListingStream
from alluxiofuse.model import Data, FileStatus, Kind
from alluxiofuse.writes.writes import Writes

log = logging.getLogger(__name__)

# Status misses in one directory after which it is listed rather than stat-ed per name.
_MISSES_BEFORE_LISTING = 2
# A file a listing says is this small (and within one page) has its full attributes
# fetched, where the backend can, with a read of its whole content that also tells its
# status (on S3 a GET, whose reply carries what a HEAD's does): the open and read that
# follow (a data loader's sample) then cost no request. Larger files are asked for their
# status alone: a stat should not fetch much more than the status.
_READ_WITH_STATUS_MAX = 256 * 1024


class Statuses:
    """Where the mount's statuses and listings come from, each fetched once for concurrent
    callers; files being written answer with their own status."""

    def __init__(
        self, config: MountConfig, backend: Backend, meta: MetadataCache, pages: PageCache,
        inodes: InodeTable, writes: Writes | None, spawn: Callable[..., object],
        disk: DiskReads | None = None,
    ) -> None:
        self._config = config
        self._disk = disk
        self._backend = backend
        self._meta = meta
        self._pages = pages
        self._inodes = inodes
        self._writes = writes
        self._spawn = spawn  # nursery.start_soon
        self.flights: SingleFlight[str, FileStatus] = SingleFlight()
        self._listings: SingleFlight[str, Listing] = SingleFlight()
        # Listings being fetched page by page for an opendir, read out as they come.
        self._streams: dict[str, ListingStream] = {}
        # Listing instead of stat-ing: misses per directory, and directories not to list.
        self._misses: LRUCache[str, int] = LRUCache(maxsize=1024)
        self._unlisted: LRUCache[str, bool] = LRUCache(maxsize=1024)

    async def stat(self, path: str, *, attrs: bool = False, lookup: bool = False) -> FileStatus:
        """Fresh-enough status of ``path``: from the metadata cache, else the backend (what
        it can answer without waiting first, on the event loop). With ``attrs`` (what
        the kernel is given as attributes), a status from a listing that lacks
        attributes the store keeps (``complete`` False) is asked of the backend again.

        After ``_MISSES_BEFORE_LISTING`` misses in one directory, the directory is listed
        instead: one call then answers every later lookup in it (one LIST instead of a
        HEAD per file on object stores; one worker-thread hop instead of one per file
        locally). Directories too large for the metadata cache are not listed this way.
        With ``attrs``, a small file a listing named is read with its status (see
        ``_READ_WITH_STATUS_MAX``). For a ``lookup``, a regular file's status from a
        listing will do (see ``Filesystem.lookup``).
        """
        if self._writes is not None and (staged := self._writes.get(path)) is not None:
            return staged.status(parent_and_name(path)[1])
        status = self.cached(path, attrs=attrs, lookup=lookup)
        if status is not None:
            return status
        if self._meta.is_missing(path):
            raise NotFound(path)
        try:
            status = self._backend.stat_nowait(path)
        except NotFound:
            self._meta.put_missing(path)
            raise
        if status is not None:
            self._meta.put_status(path, status)
            return status
        parent = parent_and_name(path)[0]
        if path and self._worth_listing(parent):
            try:
                await self.list(parent)
            except Exception as e:  # only an optimisation: stat the name as usual
                log.debug("listing %r instead of a stat failed: %r", parent, e)
                self._unlisted[parent] = True
            # Answer through the caches the listing filled, so that attributes are never
            # older than --attr-timeout, whatever --dir-timeout is.
            status = self.cached(path, attrs=attrs, lookup=lookup)
            if status is not None:
                return status
            if self._meta.is_missing(path):
                raise NotFound(path)
        fetch = partial(self._fetch_status, path)
        listed = self._meta.status(path) if attrs else None
        if (listed is not None and self.read_with_status(path, listed)
                # not fetched ahead already (directory read-ahead): then the status alone
                and PageKey(self._inodes.number_for(path), listed.version, 0) not in self._pages):
            fetch = partial(self.fetch_status_and_content, path, listed.size)
        status, _ = await self.flights.run(path, fetch)
        return status

    async def status_or_none(self, path: str) -> FileStatus | None:
        try:
            return await self.stat(path)
        except NotFound:
            return None

    def read_with_status(self, path: str, listed: FileStatus) -> bool:
        """Whether file ``path``, as a listing names it, is small enough to be read whole
        when its full status is asked for (see ``_READ_WITH_STATUS_MAX``), and has none
        cached yet."""
        return (listed.kind is Kind.FILE and not listed.complete
                and 0 < listed.size <= min(_READ_WITH_STATUS_MAX, self._config.page_size)
                and self.cached(path, attrs=True) is None)

    async def fetch_status_and_content(
        self, path: str, size: int, *, ahead: bool = False,
    ) -> FileStatus:
        """``path``'s status, and its content (``size`` bytes, as listed) into the page
        cache as the first page of the version read, if the backend tells both at once
        (``ahead``: for read-ahead)."""
        try:
            got = await self._backend.stat_and_read(path, size, ahead=ahead)
        except NotFound:  # removed, or a directory now: the ordinary way tells which
            got = None
        if got is None:
            return await self._fetch_status(path)
        status, data = got
        self._meta.put_status(path, status)
        if len(data) == status.size:  # the whole file, as one page: it has not grown
            if self._disk is not None:
                self._disk.put_behind(path, status.version, 0, data)
            key = PageKey(self._inodes.number_for(path), status.version, 0)
            await self._pages.get(key, partial(_given, data), expected=len(data), prefetch=True)
        return status

    async def _fetch_status(self, path: str) -> FileStatus:
        """Ask the backend for ``path``'s status, once for concurrent callers: a directory
        every reader walks through (the root) would otherwise be asked for by each of them
        the moment its attributes expire."""
        try:
            status = await self._backend.stat(path)
        except NotFound:
            self._meta.put_missing(path)
            raise
        self._meta.put_status(path, status)
        return status

    def cached(self, path: str, *, attrs: bool, lookup: bool = False) -> FileStatus | None:
        status = self._meta.status(path)
        if status is None or status.complete or not attrs:
            return status
        return status if lookup and status.kind is Kind.FILE else None

    @staticmethod
    def attrs_of(known: Inode, status: FileStatus) -> FileStatus | None:
        """``known``'s complete status when ``status`` (from a listing) lacks attributes
        and names the same version: on S3 the metadata cannot change without a new
        version (a copy of the object onto itself)."""
        if status.complete or not known.status.complete:
            return None
        same = known.status.version == status.version and known.status.kind is status.kind
        if not same:
            return None
        # Under the listing's name: a renamed inode keeps the status of its old name.
        return replace(known.status, name=status.name)

    def changed(self, path: str, *, tree: bool = False) -> None:
        """``path`` changed through the mount: drop what is cached about it. Its directory
        is being written: look names up there one by one from now on, rather than list
        it again after every change (tar x into a directory listed it again and again
        for each file)."""
        self._meta.forget(path, tree=tree)
        self._unlisted[parent_and_name(path)[0]] = True

    def clear_misses(self) -> None:
        """Start counting status misses afresh (the caches were dropped)."""
        self._misses.clear()

    def _worth_listing(self, parent: str) -> bool:
        if parent in self._unlisted:
            return False
        misses = self._misses.get(parent, 0) + 1
        self._misses[parent] = misses
        return misses >= _MISSES_BEFORE_LISTING

    async def list(self, path: str) -> Listing:
        """The listing of directory ``path``: cached, or fetched once for concurrent callers."""
        listing = self._meta.listing(path)
        if listing is None:  # one larger than the whole cache is served all the same
            listing, _ = await self._listings.run(path, partial(self._fetch_listing, path))
        return listing

    def stream(self, path: str) -> ListingStream:
        """The listing of ``path`` as it comes, page by page: the fetch in progress for
        another opendir, else one started now, in a task of its own."""
        stream = self._streams.get(path)
        if stream is None:
            stream = self._streams[path] = ListingStream()
            self._spawn(self._stream_listing, path, stream)
        return stream

    async def _stream_listing(self, path: str, stream: ListingStream) -> None:
        """Fetch the listing of ``path`` for ``stream`` (or wait for the fetch in progress),
        page by page; ``stream`` ends with the listing or the error."""
        try:
            listing, _ = await self._listings.run(
                path, partial(self._fetch_listing, path, stream))
        except Exception as e:  # the stream's readers get it
            stream.finish(error=e)
        except BaseException:
            stream.finish(error=BackendUnavailable(f"listing {path!r} was stopped"))
            raise
        else:
            stream.finish(listing)
        finally:
            if self._streams.get(path) is stream:
                del self._streams[path]

    async def _fetch_listing(self, path: str, stream: ListingStream | None = None) -> Listing:
        """Fetch the listing of ``path`` and cache it; each page is also handed to
        ``stream`` as it comes."""
        pages: list[Listing] = []
        async with contextlib.aclosing(self._backend.list_pages(path)) as fetched:
            async for page in fetched:
                pages.append(page if isinstance(page, Listing) else Listing(page))
                if stream is not None:
                    stream.add(pages[-1])
        whole = pages[0] if len(pages) == 1 else Listing.joined(pages)
        listing = self._meta.put_listing(path, whole)
        self._misses.pop(path, None)
        if listing.nbytes > self._meta.max_bytes:
            self._unlisted[path] = True
        return listing


async def _given(data: Data) -> Data:
    """``data``, as a page fetch that has already happened."""
    return data
