"""The background uploads: journal records owed to the under-storage, retried until done.

The :class:`Uploader` runs the uploads a program has been told are done (ASYNC_THROUGH,
or a file released with an upload that failed), oldest first, a few at a time, retrying
with backoff until each succeeds; every one is in the spool's journal first, so a restart
resumes them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from alluxiofuse.errors import AlluxioFuseError, BackendTimeout
from alluxiofuse.model import Commit
from alluxiofuse.writes.spool import Record, Spool
from alluxiofuse.writes.staging import DiskIO

log = logging.getLogger(__name__)

# Uploads that fail are tried again after 1, 2, 4, ... seconds, at most this many.
_MAX_BACKOFF = 60.0


class Uploader:
    """Background uploads of journal records, oldest first, ``threads`` at a time.

    ``upload(record)`` commits one record's data file to the under-storage;
    ``uploaded(record, commit)`` is told of each success and says whether the data file
    is still in use (else it is removed with the record). Records of one path are
    uploaded one at a time, in order; an older record of a path that has a newer one is
    dropped unsent (the newer holds the whole file).
    """

    def __init__(
        self, spool: Spool, io: DiskIO, threads: int,
        upload: Callable[[Record], Awaitable[Commit]],
        uploaded: Callable[[Record, Commit], bool],
    ) -> None:
        self._spool = spool
        self._io = io
        self._threads = threads
        self._upload = upload
        self._uploaded = uploaded
        self.pending: dict[int, Record] = {}  # by seq
        self.failures = 0  # failed attempts, for the metrics
        self._running: dict[str, int] = {}  # paths being uploaded now: the record's seq
        self._errors: dict[int, str] = {}
        self._superseded: list[Record] = []
        self._urgent: dict[str, int] = {}  # paths waited for (``wait``): how many wait
        self._changed = trio.Event()  # something to do, or something done

    def __len__(self) -> int:
        return len(self.pending)

    def submit(self, record: Record) -> None:
        self.pending[record.seq] = record
        self._wake()

    def busy(self, path: str) -> bool:
        """Whether an upload of ``path`` or of anything under it is owed."""
        prefix = path + "/"
        return any(r.path == path or r.path.startswith(prefix) or not path
                   for r in self.pending.values())

    def uploading(self, record: Record | None) -> bool:
        return record is not None and record.seq in self.pending

    async def supersede(self, path: str) -> None:
        """A newer content of ``path`` is about to be committed directly, or ``path`` is
        removed: drop the owed uploads of it, and their journal records now (one being
        sent is left to end, then dropped: the commit fence keeps it from landing over
        a newer commit, and ``wait`` does not wait for it). Not left to an
        upload thread: every one may be busy retrying for ever, and a record left in the
        journal is counted as owed, and sent again after a restart."""
        dropped = []
        for seq, record in list(self.pending.items()):
            if record.path == path:
                del self.pending[seq]
                if self._running.get(path) != seq:
                    dropped.append(record)
        self._wake()
        for record in dropped:
            await self._settle(record, keep_data=False)

    async def wait(self, path: str, within: float) -> None:
        """Wait until nothing under ``path`` is owed ("" waits for everything);
        BackendTimeout if that takes longer than ``within`` seconds."""
        if path:  # a wait for everything (the drain) puts nothing first
            self._urgent[path] = self._urgent.get(path, 0) + 1
        try:
            with trio.fail_after(within):
                while self.busy(path):
                    await self._changed_event().wait()
        except trio.TooSlowError:
            raise BackendTimeout(f"uploads of {path or 'the mount'} still pending after "
                                 f"{within}s (kept in {self._spool.root})") from None
        finally:
            if path:
                self._urgent[path] -= 1
                if not self._urgent[path]:
                    del self._urgent[path]

    async def run(self) -> None:
        """Upload until cancelled."""
        async with trio.open_nursery() as nursery:
            for _ in range(self._threads):
                nursery.start_soon(self._worker)

    async def _worker(self) -> None:
        while True:
            record = self._next()
            while self._superseded:
                await self._settle(self._superseded.pop(), keep_data=False)
            if record is None:
                await self._changed_event().wait()
                continue
            self._running[record.path] = record.seq
            try:
                await self._attempt(record)
            finally:
                del self._running[record.path]
                self._wake()

    def _next(self) -> Record | None:
        """The oldest record whose path is not being uploaded, those under a path someone
        waits for (``wait``: a rename, an unlink) first; older records of a path with a
        newer one are dropped on the way (settled by ``_worker``). A rename behind a queue
        of hundreds of uploads waited its whole drain timeout for its own."""
        newest: dict[str, int] = {}
        for seq, record in self.pending.items():
            newest[record.path] = max(seq, newest.get(record.path, seq))
        order = sorted(self.pending)
        if self._urgent:
            order.sort(key=lambda seq: not self._is_urgent(self.pending[seq].path))
        for seq in order:
            record = self.pending[seq]
            if record.path in self._running:
                continue
            if newest[record.path] != seq:
                self._superseded.append(self.pending.pop(seq))
                continue
            return record
        return None

    def _is_urgent(self, path: str) -> bool:
        return any(path == waited or path.startswith(waited + "/") for waited in self._urgent)

    async def _attempt(self, record: Record) -> None:
        delay = 1.0
        while True:
            try:
                done = await self._upload(record)
            except Exception as e:  # a library's own error too: never the daemon's end
                if record.seq not in self.pending:
                    # Superseded while it ran: a newer commit owns the path (the commit
                    # fence refused this one its landing), so this is no failure.
                    await self._settle(record, keep_data=False)
                    return
                message = f"{type(e).__name__}: {e}"
                log.warning("upload of %s failed (%s); retrying in %.0fs; its bytes are kept "
                            "in %s", record.path, message, delay,
                            self._spool.data_path(record.data))
                self._errors[record.seq] = message
                self.failures += 1
                with contextlib.suppress(AlluxioFuseError):  # only for ``status``
                    await self._io(self._spool.note_error, record, message)
                await trio.sleep(delay)
                delay = min(_MAX_BACKOFF, delay * 2)
                if record.seq not in self.pending:  # superseded meanwhile
                    await self._settle(record, keep_data=False)
                    return
                continue
            self.pending.pop(record.seq, None)
            self._errors.pop(record.seq, None)
            await self._settle(record, keep_data=self._uploaded(record, done))
            return

    async def _settle(self, record: Record, *, keep_data: bool) -> None:
        """Drop a record that is done with; if the spool cannot, the record stays and is
        uploaded once more at the next start (harmless: the same content again)."""
        try:
            await self._io(partial(self._spool.settle, keep_data=keep_data), record)
        except AlluxioFuseError as e:
            log.error("cannot remove the journal record of %s from %s: %s", record.path,
                      self._spool.root, e)

    def _changed_event(self) -> trio.Event:
        return self._changed

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

