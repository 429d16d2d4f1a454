"""A file in memory behind the backend protocol, and the surroundings a ``FileHandle``
reads it through (page cache, prefetcher): what the handle and read-ahead tests share."""

from __future__ import annotations

import builtins

import trio
from prometheus_client import CollectorRegistry

from alluxiofuse.errors import (
    BackendError,
    ConnectionDropped,
    InvalidArgument,
    NotFound,
    StaleFile,
)
from alluxiofuse.fs.diskreads import DiskReads
from alluxiofuse.fs.handles import FileHandle
from alluxiofuse.fs.inodes import Inode
from alluxiofuse.fs.pages import PageCache
from alluxiofuse.fs.readahead import Prefetcher
from alluxiofuse.metrics import Metrics
from alluxiofuse.model import FileStatus, FsStats, Kind, Version

PS = 16  # page size


class FakeBackend:
    """One file ``f`` in memory. Reads are counted; reads of held pages wait on ``gate``."""

    description = "fake"
    streams = False
    span = 0

    def __init__(self, data: bytes, mtime_ns: int = 1) -> None:
        self.data = data
        self.status = FileStatus("f", Kind.FILE, size=len(data), mtime_ns=mtime_ns)
        self.reads: builtins.list[tuple[int, int]] = []
        self.gate = trio.Event()
        self.hold: set[int] = set()  # offsets whose reads wait for gate
        self.fail_at: set[int] = set()  # offsets whose reads raise BackendError
        self.active = 0
        self.max_active = 0

    async def stat(self, path: str) -> FileStatus:
        await trio.lowlevel.checkpoint()
        if path != "f":
            raise NotFound(path)
        return self.status

    async def list(self, path: str) -> builtins.list[FileStatus]:
        await trio.lowlevel.checkpoint()
        return [self.status]

    def stat_nowait(self, path: str) -> FileStatus | None:
        return None

    def read_nowait(self, path: str, offset: int, length: int, version: Version) -> bytes | None:
        return None

    async def read(self, path: str, offset: int, length: int, version: Version) -> bytes:
        assert path == "f"
        if version != self.status.version:
            raise StaleFile(path)
        self.reads.append((offset, length))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if offset in self.hold:
                with trio.fail_after(5):  # a broken handle fails the test, never hangs it
                    await self.gate.wait()
            else:
                await trio.lowlevel.checkpoint()
        finally:
            self.active -= 1
        if offset in self.fail_at:
            raise BackendError(f"injected failure at {offset}")
        return self.data[offset:offset + length]

    async def readlink(self, path: str) -> str:
        raise InvalidArgument(path)

    async def statfs(self) -> FsStats:
        return FsStats()

    async def aclose(self) -> None:
        """Nothing to release."""

    def read_offsets(self) -> builtins.list[int]:
        return [offset for offset, _ in self.reads]


DATA = bytes(i % 251 for i in range(64 * PS + 5))  # 64 full pages and a partial one


class FakeStream:
    """The bytes of a :class:`StreamBackend` file from an offset on, as a proxy's stream."""

    def __init__(self, backend: StreamBackend, offset: int) -> None:
        self.backend = backend
        self.position = offset
        self.closed = False

    async def read(self, n: int) -> bytes:
        await trio.lowlevel.checkpoint()
        assert not self.closed, "read after close"
        if self.position in self.backend.drop_at:
            self.backend.drop_at.discard(self.position)
            raise ConnectionDropped(f"injected: stream cut at {self.position}")
        data = self.backend.data[self.position:self.position + n]
        self.backend.sent += len(data)
        self.position += len(data)
        return data

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self.closed = True


class StreamBackend(FakeBackend):
    """``FakeBackend`` read through streams: opening one at an offset sends (and costs) the
    bytes before it, as the Alluxio 2.x proxy does."""

    streams = True
    span = 0

    def __init__(self, data: bytes, mtime_ns: int = 1) -> None:
        super().__init__(data, mtime_ns)
        self.opened: builtins.list[FakeStream] = []
        self.sent = 0  # bytes the "proxy" sent, skipped ones included
        self.drop_at: set[int] = set()  # positions at which a stream is cut, once each

    async def open_stream(self, path: str, offset: int, version: Version) -> FakeStream:
        assert path == "f"
        if version != self.status.version:
            raise StaleFile(path)
        stream = FakeStream(self, 0)
        self.opened.append(stream)
        try:
            await stream.read(offset)
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def read(self, path: str, offset: int, length: int, version: Version) -> bytes:
        raise AssertionError("an open file of a streaming backend is read through its stream")

    def open_streams(self) -> int:
        return sum(not s.closed for s in self.opened)


class Env:
    """File ``f`` (``data``) as inode 5, and what its handles read it through: a page
    cache and a prefetcher whose tasks run in ``nursery``, and ``disk`` if given."""

    def __init__(
        self, nursery: trio.Nursery, data: bytes = DATA, *, max_readahead: int = 8 * PS,
        budget: int = 1000 * PS, capacity: int = 1000 * PS, streams: bool = False,
        disk: DiskReads | None = None,
    ) -> None:
        self.backend = StreamBackend(data) if streams else FakeBackend(data)
        self.registry = CollectorRegistry()
        self.pages = PageCache(capacity, Metrics(self.registry))
        self.prefetcher = Prefetcher(nursery.start_soon, self.pages, budget)
        self.inode = Inode(5, "f", self.backend.status, lookups=1)
        self.max_readahead = max_readahead
        self.disk = disk

    def open(self) -> FileHandle:
        return FileHandle(
            self.inode, self.inode.status.version, backend=self.backend, pages=self.pages,
            page_size=PS, max_readahead=self.max_readahead, prefetcher=self.prefetcher,
            disk=self.disk,
        )
