"""Reads through an Alluxio 3.x cluster, with the under-storage as the fallback.

Every file belongs to one worker: the owner of its full UFS URI on the consistent-hash
ring (PROTOCOL.md 2.4), or, against Alluxio Enterprise, the worker that owner names in
``/v1/node``. Pages and metadata are asked of that worker. Whenever it cannot answer (the
page is not cached, the call fails, the reply is unusable, the worker is down, or the
path is one its HTTP API cannot express), the same call goes to the under-storage
instead, and the fallback is counted by reason. Bytes a reader gets are always the file's
bytes: worker replies are length-checked, and where the worker reports a content hash, a
whole file read is checked against it before anyone sees it.

A worker whose connection fails or times out is set aside for a cool-off period (and one
that gives three unusable replies in a row): its files are read from the under-storage
meanwhile, so a dead worker costs one timeout, not one per page. The membership is read
again periodically and the ring rebuilt and swapped whole: a lookup sees the old ring or
the new one, never a mix.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TypeVar

import trio
from cachetools import LRUCache, TTLCache

from alluxiofuse.backends.base import ByteStream, read_concurrently
from alluxiofuse.backends.cluster.client import (
    DEFAULT_PAGE_SIZE,
    WorkerClient,
    WorkerFileInfo,
    oss_expressible,
    raw_expressible,
)
from alluxiofuse.backends.cluster.discovery import DnsWorkers, StaticWorkers, WorkerSource
from alluxiofuse.backends.cluster.etcd import EtcdMembership
from alluxiofuse.backends.cluster.membership import (
    WorkerAddress,
    parse_etcd_endpoints,
    parse_static_workers,
)
from alluxiofuse.backends.cluster.ring import DEFAULT_VNODES, HashRing, WorkerIdentity, path_id
from alluxiofuse.backends.ufs import UfsBackend
from alluxiofuse.config import MountConfig
from alluxiofuse.errors import (
    AlluxioFuseError,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ContentMismatch,
    NotFound,
    NotSupported,
    ProtocolError,
    ServerError,
)
from alluxiofuse.metrics import Metrics
from alluxiofuse.model import (
    Attrs,
    Commit,
    Data,
    FileStatus,
    FsStats,
    Version,
    WriteSupport,
    valid_name,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

MTIME_UNIT_NS = 1_000_000  # workers report modification times in milliseconds
_UNUSABLE_REPLIES_BEFORE_DOWN = 3
_CACHE_ENTRIES = 100_000
_MD5_HEX = re.compile(r'^"?([0-9a-fA-F]{32})"?$')  # an MD5 content hash, maybe ETag-quoted


def worker_source(config: MountConfig) -> WorkerSource:
    """Where ``config`` says the workers are listed; ConfigError for a bad list."""
    if config.workers:
        return StaticWorkers(parse_static_workers(config.workers, config.worker_http_port))
    if config.load_balance_domain:
        return DnsWorkers(config.load_balance_domain, config.worker_http_port,
                          timeout=config.worker_timeout)
    if config.etcd:
        return EtcdMembership(
            parse_etcd_endpoints(config.etcd), cluster=config.cluster_name,
            username=config.etcd_username, password=config.etcd_password,
            timeout=config.worker_timeout)
    raise ValueError("no workers configured")


def open_cluster(config: MountConfig, ufs: UfsBackend, metrics: Metrics) -> ClusterBackend:
    """The cluster backend ``config`` describes, over ``ufs`` (built with
    ``mtime_unit_ns=MTIME_UNIT_NS``). Its membership is empty until refreshed."""
    membership = Membership(worker_source(config), vnodes=config.virtual_nodes)
    metrics.watch_workers(lambda: len(membership))
    client = WorkerClient(timeout=config.worker_timeout, retries=config.worker_retries,
                          metrics=metrics)
    return ClusterBackend(
        ufs, membership, client, WorkerHealth(config.worker_cooloff, metrics), metrics=metrics,
        enterprise=config.worker_api == "enterprise", page_size=config.worker_page_size)


class Membership:
    """The workers and their ring, read from a source and swapped whole when they change."""

    def __init__(self, source: WorkerSource, *, vnodes: int = DEFAULT_VNODES) -> None:
        self.source = source
        self.vnodes = vnodes
        self.ring: HashRing[WorkerAddress] = HashRing({}, vnodes)
        self._workers: dict[WorkerIdentity, WorkerAddress] = {}
        self._failing = False

    def __len__(self) -> int:
        return len(self._workers)

    def workers(self) -> list[WorkerAddress]:
        """The workers listed now."""
        return list(self._workers.values())

    async def refresh(self) -> bool:
        """Read the source; rebuild the ring if the workers changed. Whether they did."""
        workers = await self.source.workers()
        if workers == self._workers:
            return False
        # 2,000 points per worker: built off the event loop for large clusters.
        ring = await trio.to_thread.run_sync(HashRing, workers, self.vnodes)
        gone = set(self._workers.values()) - set(workers.values())
        new = set(workers.values()) - set(self._workers.values())
        self.ring, self._workers = ring, workers
        log.info("%d workers from %s (joined: %s; left: %s)", len(workers),
                 self.source.description, _names(new), _names(gone))
        if not workers:
            log.warning("%s lists no workers: reading from the under-storage",
                        self.source.description)
        return True

    async def run(self, interval: float) -> None:
        """Refresh every ``interval`` seconds until cancelled; while the source cannot be
        read, keep the last ring (and say so once)."""
        while True:
            await trio.sleep(interval)
            try:
                await self.refresh()
            except BackendError as e:
                if not self._failing:
                    log.warning("cannot refresh the workers from %s, keeping the last %d: %s",
                                self.source.description, len(self._workers), e)
                self._failing = True
            else:
                if self._failing:
                    log.info("workers from %s readable again", self.source.description)
                self._failing = False


class WorkerHealth:
    """Which workers are set aside, and until when."""

    def __init__(self, cooloff: float, metrics: Metrics | None = None) -> None:
        self.cooloff = cooloff
        self._metrics = metrics
        self._down_until: dict[WorkerAddress, float] = {}
        self._unusable: dict[WorkerAddress, int] = {}

    def is_down(self, worker: WorkerAddress) -> bool:
        until = self._down_until.get(worker)
        return until is not None and trio.current_time() < until

    def failed(self, worker: WorkerAddress, error: AlluxioFuseError) -> None:
        """Record a failed call. A connection that fails or times out sets the worker
        aside at once; error statuses and unusable replies do after a few in a row. A
        dropped connection (an OSS worker's "not cached") and not-found are answers."""
        if isinstance(error, ServerError | ProtocolError):
            count = self._unusable[worker] = self._unusable.get(worker, 0) + 1
            if count >= _UNUSABLE_REPLIES_BEFORE_DOWN:
                self._set_aside(worker, f"{count} unusable replies in a row, the last: {error}")
        elif isinstance(error, BackendTimeout | BackendUnavailable):
            self._set_aside(worker, str(error))

    def succeeded(self, worker: WorkerAddress) -> None:
        if self._unusable:
            self._unusable.pop(worker, None)
        if self._down_until:
            self._down_until.pop(worker, None)

    def _set_aside(self, worker: WorkerAddress, why: str) -> None:
        if self.is_down(worker):  # concurrent calls failing together: one event
            return
        self._down_until[worker] = trio.current_time() + self.cooloff
        self._unusable.pop(worker, None)
        if self._metrics:
            self._metrics.workers_marked_down.inc()
        log.warning("worker %s set aside for %gs, reading its files from the under-storage: %s",
                    worker.url(), self.cooloff, why)


class ClusterBackend:
    """Files of an under-storage, read through the Alluxio workers that cache them."""

    warms = False
    streams = False
    span = 0

    def __init__(
        self, ufs: UfsBackend, membership: Membership, client: WorkerClient,
        health: WorkerHealth, *, metrics: Metrics, enterprise: bool = False,
        page_size: int = DEFAULT_PAGE_SIZE, node_ttl: float = 60.0,
    ) -> None:
        self.ufs = ufs
        self.membership = membership
        self.description = f"{ufs.description} through Alluxio {membership.source.description}"
        self._client = client
        self._health = health
        self._metrics = metrics
        self._enterprise = enterprise
        self._page_size = page_size
        # Content hashes the workers reported, by file and version: checked on whole reads.
        self._hashes: LRUCache[tuple[str, Version], str] = LRUCache(_CACHE_ENTRIES)
        # Enterprise: the worker ``/v1/node`` named for a file, asked once per ``node_ttl``.
        self._nodes: TTLCache[str, WorkerAddress] = TTLCache(_CACHE_ENTRIES, node_ttl)
        # Paths this mount changed (files; directories whose entries changed): workers may
        # hold their old metadata and pages, so they are read from the under-storage.
        self._changed: LRUCache[str, bool] = LRUCache(_CACHE_ENTRIES)
        self._changed_dirs: LRUCache[str, bool] = LRUCache(_CACHE_ENTRIES)
        # No hard links: the workers cache each name apart, so a change through one name
        # would leave the others' pages stale there.
        self.writes: WriteSupport = dataclasses.replace(ufs.writes, links=False)

    # --- metadata ---------------------------------------------------------------------

    async def stat(self, path: str) -> FileStatus:
        if self._was_changed(path):
            return await self.ufs.stat(path)
        info = await self._ask_owner("stat", path, self._client.info)
        if info is None:
            return await self.ufs.stat(path)
        return self._remember(path, path.rpartition("/")[2], info)

    async def list(self, path: str) -> builtins.list[FileStatus]:
        if path in self._changed_dirs or self._was_changed(path):
            return await self.ufs.list(path)
        infos = await self._ask_owner("list", path, self._client.files)
        if infos is None:
            return await self.ufs.list(path)
        prefix = f"{path}/" if path else ""
        return [self._remember(prefix + i.status.name, i.status.name, i)
                for i in infos if valid_name(i.status.name)]

    async def list_pages(self, path: str) -> AsyncGenerator[Sequence[FileStatus], None]:
        yield await self.list(path)  # a worker answers with the whole listing

    async def _ask_owner(
        self, op: str, path: str, call: Callable[[WorkerAddress, str], Awaitable[T]],
    ) -> T | None:
        """``call(owner, uri)`` for a metadata ``op`` on ``path``; None (counted) when the
        owner cannot be asked or fails, and the under-storage must answer instead."""
        uri = self.ufs.uri(path)
        if not oss_expressible(uri):  # ``path=`` cannot carry it
            self._metrics.fallback_reads.labels(op, "unexpressible").inc()
            return None
        worker = self._owner(uri, op)
        if worker is None:
            return None
        try:
            answer = await call(worker, uri)
        except (BackendError, NotFound) as e:
            self._failed(worker, e, op)
            return None
        self._health.succeeded(worker)
        return answer

    def _remember(self, path: str, name: str, info: WorkerFileInfo) -> FileStatus:
        status = info.status
        if status.name != name:
            status = FileStatus(name=name, kind=status.kind, size=status.size,
                                mtime_ns=status.mtime_ns)
        if info.content_hash:
            self._hashes[path, status.version] = info.content_hash
        return status

    # --- data -------------------------------------------------------------------------

    async def read(self, path: str, offset: int, length: int, version: Version) -> bytes:
        end = min(offset + length, version.size)
        if end <= offset:
            return b""
        if self._was_changed(path):
            return await self.ufs.read(path, offset, length, version)
        uri = self.ufs.uri(path)
        worker = await self._data_worker(uri)
        spans = _spans(offset, end, self._page_size)
        if len(spans) == 1:
            data = await self._read_span(path, uri, worker, version, *spans[0])
        else:
            parts: builtins.list[bytes] = [b""] * len(spans)

            async def one(i: int) -> None:
                parts[i] = await self._read_span(path, uri, worker, version, *spans[i])

            async with trio.open_nursery() as nursery:
                for i in range(len(spans)):
                    nursery.start_soon(one, i)
            data = b"".join(parts)
        return await self._verified(path, version, offset, data)

    async def read_many(
        self, reads: Sequence[tuple[str, int, int, Version]],
    ) -> Sequence[Data | AlluxioFuseError]:
        return await read_concurrently(self.read, reads)

    async def _data_worker(self, uri: str) -> WorkerAddress | None:
        if self._enterprise and not raw_expressible(uri):  # ``ufsFullPath=`` cannot carry it
            self._metrics.fallback_reads.labels("read", "unexpressible").inc()
            return None
        owner = self._owner(uri, "read")
        if owner is None or not self._enterprise:
            return owner
        return await self._node(owner, uri)

    async def _node(self, owner: WorkerAddress, uri: str) -> WorkerAddress | None:
        """The worker Enterprise's ``/v1/node`` names for ``uri``, asked of the ring owner;
        the owner itself if it cannot say."""
        worker = self._nodes.get(uri)
        if worker is None:
            try:
                worker = await self._client.node(owner, uri)
            except (BackendError, NotFound) as e:
                self._health.failed(owner, e)
                if self._health.is_down(owner):
                    self._metrics.fallback_reads.labels("read", e.reason if isinstance(
                        e, BackendError) else "not_found").inc()
                    return None
                worker = owner
            else:
                self._health.succeeded(owner)
            self._nodes[uri] = worker
        return worker

    async def _read_span(
        self, path: str, uri: str, worker: WorkerAddress | None, version: Version,
        index: int, start: int, length: int,
    ) -> bytes:
        """``length`` bytes at ``start`` of worker page ``index``: from the worker, or
        from the under-storage if it cannot serve them."""
        if worker is not None and self._health.is_down(worker):  # since, or per /v1/node
            self._metrics.fallback_reads.labels("read", "worker_down").inc()
            worker = None
        if worker is not None:
            whole = start == 0 and (length == self._page_size
                                    or index * self._page_size + length == version.size)
            try:
                data = await self._client.read_page(
                    worker, path_id(uri), index, expected=length, offset=start,
                    length=None if whole else length,
                    ufs_full_path=uri if self._enterprise else None)
            except (BackendError, NotFound) as e:
                self._failed(worker, e, "read")
            else:
                self._health.succeeded(worker)
                self._metrics.worker_read_bytes.inc(length)
                return data
        data = await self.ufs.read(path, index * self._page_size + start, length, version)
        self._metrics.fallback_bytes.inc(len(data))
        return data

    async def _verified(self, path: str, version: Version, offset: int, data: bytes) -> bytes:
        """``data``, once it matches the file's content hash where one is known and the
        read is the whole file. A mismatch is read again from the under-storage; if that
        does not match either, the read fails (EIO): never bytes that are not the file."""
        expected = self._md5_for(path, version)
        if expected is None or offset != 0 or len(data) != version.size:
            return data
        if hashlib.md5(data, usedforsecurity=False).hexdigest() == expected:
            return data
        self._metrics.content_mismatches.labels("worker").inc()
        log.warning("%s: the bytes read do not match content hash %s; reading the "
                    "under-storage", path, expected)
        data = await self.ufs.read(path, 0, version.size, version)
        self._metrics.fallback_bytes.inc(len(data))
        if hashlib.md5(data, usedforsecurity=False).hexdigest() == expected:
            return data
        self._metrics.content_mismatches.labels("ufs").inc()
        raise ContentMismatch(f"{path}: neither the cluster nor the under-storage has bytes "
                              f"matching content hash {expected}")

    def _md5_for(self, path: str, version: Version) -> str | None:
        content_hash = self._hashes.get((path, version))
        match = _MD5_HEX.match(content_hash) if content_hash else None
        return match.group(1).lower() if match else None

    # --- shared -----------------------------------------------------------------------

    def _owner(self, uri: str, op: str) -> WorkerAddress | None:
        """The ring owner of ``uri``, or None (counted) when there is none to ask."""
        ring = self.membership.ring
        if not len(ring):
            self._metrics.fallback_reads.labels(op, "no_workers").inc()
            return None
        owner = ring.owner(uri)
        if self._health.is_down(owner):
            self._metrics.fallback_reads.labels(op, "worker_down").inc()
            return None
        return owner

    def _failed(self, worker: WorkerAddress, error: AlluxioFuseError, op: str) -> None:
        reason = error.reason if isinstance(error, BackendError) else "not_found"
        self._metrics.fallback_reads.labels(op, reason).inc()
        self._health.failed(worker, error)
        log.debug("%s from %s failed, using the under-storage: %s", op, worker.url(), error)

    async def open_stream(self, path: str, offset: int, version: Version) -> ByteStream:
        raise NotSupported(f"{self.description} is read by range, not as a stream")

    async def stat_and_read(
        self, path: str, length: int, *, ahead: bool = False,
    ) -> tuple[FileStatus, Data] | None:
        return None  # a worker reports no metadata a page read could complete

    def stat_nowait(self, path: str) -> FileStatus | None:
        return None

    def read_nowait(self, path: str, offset: int, length: int, version: Version) -> bytes | None:
        return None

    async def warm(self, reads: Sequence[tuple[str, int, int, Version]]) -> None:
        return None

    async def readlink(self, path: str) -> str:
        return await self.ufs.readlink(path)

    async def statfs(self) -> FsStats:
        return await self.ufs.statfs()

    # --- changes: made in the under-storage; what they touch is read from it afterwards

    def _was_changed(self, path: str) -> bool:
        """Whether this mount changed ``path`` or renamed a directory above it."""
        if path in self._changed:
            return True
        while path:
            path = path.rpartition("/")[0]
            if self._changed.get(path):  # True: a renamed directory, all of it
                return True
        return False

    def _changing(self, path: str, *, tree: bool = False) -> None:
        self._changed[path] = tree
        self._changed_dirs[path.rpartition("/")[0]] = True

    async def mkdir(self, path: str, mode: int, owner: tuple[int, int] | None) -> FileStatus:
        self._changing(path)
        return await self.ufs.mkdir(path, mode, owner)

    async def rmdir(self, path: str) -> None:
        self._changing(path, tree=True)
        await self.ufs.rmdir(path)

    async def unlink(self, path: str) -> None:
        self._changing(path)
        await self.ufs.unlink(path)

    async def rename(self, old: str, new: str, flags: int) -> None:
        self._changing(old, tree=True)
        self._changing(new, tree=True)
        await self.ufs.rename(old, new, flags)

    async def symlink(self, path: str, target: str, owner: tuple[int, int] | None) -> FileStatus:
        self._changing(path)
        return await self.ufs.symlink(path, target, owner)

    async def mknod(
        self, path: str, mode: int, rdev: int, owner: tuple[int, int] | None,
    ) -> FileStatus:
        self._changing(path)
        return await self.ufs.mknod(path, mode, rdev, owner)

    async def link(self, path: str, new: str) -> FileStatus:
        raise NotSupported(f"{self.description}: the workers cache each name of a file "
                           "apart, so it has no hard links")

    async def setattr(self, path: str, attrs: Attrs) -> FileStatus:
        self._changing(path)
        return await self.ufs.setattr(path, attrs)

    async def commit(
        self, path: str, staged: str, *, mode: int | None = None,
        owner: tuple[int, int] | None = None, mtime_ns: int | None = None,
        durable: bool = True, size: int = 0,
    ) -> Commit:
        self._changing(path)
        return await self.ufs.commit(path, staged, mode=mode, owner=owner, mtime_ns=mtime_ns,
                                     durable=durable, size=size)

    async def sync(self, path: str) -> None:
        await self.ufs.sync(path)

    async def cache(self, path: str) -> None:
        """CACHE_THROUGH: have the owner load the new content, for the cluster's other
        clients (OSS workers take page writes of at most 10 KiB, so the worker's own load
        is the way in). This mount keeps reading the file from the under-storage: it
        cannot tell when the load is done."""
        uri = self.ufs.uri(path)
        worker = self._owner(uri, "cache")
        if worker is None or not oss_expressible(uri):
            return
        try:
            await self._client.load_submit(worker, uri, verbose=False)
        except (BackendError, NotFound) as e:
            self._failed(worker, e, "cache")
            log.info("CACHE_THROUGH: %s was written but not cached: %s", path, e)

    async def aclose(self) -> None:
        try:
            await self._client.aclose()
            await self.membership.source.aclose()
        finally:
            await self.ufs.aclose()


def _spans(offset: int, end: int, page_size: int) -> builtins.list[tuple[int, int, int]]:
    """``[offset, end)`` as (page index, start within the page, length) per page."""
    spans = []
    while offset < end:
        index, start = divmod(offset, page_size)
        length = min(page_size - start, end - offset)
        spans.append((index, start, length))
        offset += length
    return spans


def _names(workers: set[WorkerAddress]) -> str:
    return ", ".join(sorted(f"{w.host}:{w.http_port}" for w in workers)) or "none"
