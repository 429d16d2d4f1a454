"""The disk page store on the read path: a page missing from memory is looked for on disk
before the source is asked, and a page fetched from the source is written to disk behind
the read that fetched it.

A page on disk is keyed by the source, the page size, the file's path and version and the
page's index: what the pages of any daemon of the node that mounts the same source agree
on, across restarts (an inode number would not be). A new version of a file (a commit,
or a change behind the mount) has new keys, so its old pages are never served; the old
ones age out. Writes to disk never hold a read up: a reader gets its page as soon as the
source has answered, and the write happens in a worker thread afterwards, dropped (and
counted) when more than ``behind_bytes`` are waiting already.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial

import trio

from alluxiofuse.backends.base import Backend
from alluxiofuse.errors import AlluxioFuseError
from alluxiofuse.fs.diskpages import DiskKey, DiskPages
from alluxiofuse.limits import MiB
from alluxiofuse.model import Data, Version

log = logging.getLogger(__name__)

Spawn = Callable[..., object]  # nursery.start_soon

# Disk reads and writes at once: enough to keep a local SSD busy, few enough that they do
# not crowd out the source's own threads.
_THREADS = 4
# Pages written to disk in one worker-thread job, and such jobs at once: several, as a
# write can wait for the disk while another computes its checksum.
_BATCH = 4
_WRITERS = 3
# Pages fetched but not yet written to disk, in bytes: their memory is the price of not
# making readers wait for the disk. Past it, a page is not written (a later read fetches
# it from the source again).
_BEHIND_BYTES = 64 * MiB


class DiskReads:
    """One mount's view of a disk page store."""

    def __init__(
        self, store: DiskPages, source: str, *, spawn: Spawn, deadline: float,
        behind_bytes: int = _BEHIND_BYTES,
    ) -> None:
        self.store = store
        # Daemons with another page size cut the same file into other pages. A digest, not
        # the source itself: a URL may carry credentials, and every page file holds its key.
        named = f"{source.rstrip('/') or '/'}#{store.page_size}"
        self._source = hashlib.sha256(named.encode("utf-8", "surrogateescape")).hexdigest()
        self._page_size = store.page_size
        self._spawn = spawn
        self._deadline = deadline
        self._limiter = trio.CapacityLimiter(_THREADS)
        self._behind = 0  # bytes waiting to be written
        self._max_behind = behind_bytes
        self._waiting: deque[tuple[DiskKey, Data]] = deque()
        self._writers = 0  # tasks writing what waits
        self.skipped_bytes = 0  # pages not written: too many were waiting
        self._slow_logged = False

    def key(self, path: str, version: Version, index: int) -> DiskKey:
        return (self._source, path, version, index)

    async def get(self, path: str, version: Version, index: int) -> Data | None:
        """Page ``index`` of ``version`` of ``path`` from disk, or None."""
        return (await self._get_all([self.key(path, version, index)]))[0]

    def put_behind(self, path: str, version: Version, index: int, data: Data) -> None:
        """Write the page to disk in the background (or not at all, when too many wait)."""
        size = len(data)
        if self._behind + size > self._max_behind:
            self.skipped_bytes += size
            return
        self._behind += size
        self._waiting.append((self.key(path, version, index), data))
        if self._writers < _WRITERS:
            self._writers += 1
            self._spawn(self._write_waiting)

    async def read_many(
        self, backend: Backend, reads: Sequence[tuple[str, int, int, Version]],
    ) -> Sequence[Data | AlluxioFuseError]:
        """``backend.read_many(reads)`` (each read one whole page), the pages on disk
        taken from there, the others fetched and written behind."""
        ps = self._page_size
        found = await self._get_all([self.key(p, v, off // ps) for p, off, _, v in reads])
        missing = [i for i, data in enumerate(found) if data is None]
        if not missing:
            return [data for data in found if data is not None]
        fetched = await backend.read_many([reads[i] for i in missing])
        results: list[Data | AlluxioFuseError] = [b""] * len(reads)
        for i, data in enumerate(found):
            if data is not None:
                results[i] = data
        for i, outcome in zip(missing, fetched, strict=True):
            results[i] = outcome
            path, offset, length, version = reads[i]
            if not isinstance(outcome, Exception) and len(outcome) == length:
                self.put_behind(path, version, offset // ps, outcome)
        return results

    async def _get_all(self, keys: list[DiskKey]) -> list[Data | None]:
        """The pages on disk (None for each one not there), read by a few worker threads
        at once (a read-ahead run's pages in parallel: each read and check lets go of the
        interpreter lock). A disk that does not answer within the deadline is a miss: the
        source is asked."""
        found: list[Data | None] = [None] * len(keys)

        def get(indices: range) -> None:
            for i in indices:
                found[i] = self.store.get(keys[i])

        # Reads in parallel only where there are cores for them beside the event loop and
        # the kernel's own work for the reader: on a small machine threads only contend.
        jobs = min(len(keys), _THREADS, max(1, (os.cpu_count() or 1) // 2))
        with trio.move_on_after(self._deadline):
            async with trio.open_nursery() as nursery:
                for first in range(jobs):
                    nursery.start_soon(partial(
                        trio.to_thread.run_sync, get, range(first, len(keys), jobs),
                        limiter=self._limiter, abandon_on_cancel=True))
            return found
        if not self._slow_logged:
            self._slow_logged = True
            log.warning("disk page store %s: no answer within %gs; reading from the source "
                        "(logged once)", self.store.directory, self._deadline)
        return [None] * len(keys)

    async def _write_waiting(self) -> None:
        """Write the pages waiting, a batch per worker-thread job (one reservation of room
        for each batch), until none is left; one of up to ``_WRITERS`` such tasks."""
        try:
            while self._waiting:
                batch: list[tuple[DiskKey, Data]] = []
                while self._waiting and len(batch) < _BATCH:
                    batch.append(self._waiting.popleft())
                try:
                    await trio.to_thread.run_sync(self.store.put_many, batch,
                                                  limiter=self._limiter)
                finally:
                    self._behind -= sum(len(data) for _, data in batch)
        finally:
            self._writers -= 1
