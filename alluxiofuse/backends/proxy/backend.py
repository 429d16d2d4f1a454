"""An Alluxio 2.x namespace through the proxy REST server: ``alluxio-proxy://host:port/path``.

Reads are streams (PROTOCOL.md 4.2): ``open-file`` makes one at the file's start and a
stream read answers with everything from there on, so a read at an offset costs the
bytes before it. :meth:`ProxyBackend.open_stream` opens one and reads past ``offset``;
the handle layer keeps it from one read to the next. Each stream is checked against the
version it is opened for (a ``get-status`` sent alongside the ``open-file``), unless a status
naming that version came from the proxy within the last second (the lookup or listing that
led to the open): Alluxio files are written once, and a file made again at the same path
has a new id, the version's etag.

Writes: a file's whole new content is written to a hidden temporary name beside it
(``create-file`` with the mount's write type, one stream write, ``close``) and then renamed
into place; an existing file is removed just before, as Alluxio's rename never replaces.
So a reader never sees part of a file, but may find no file for the moment between the
removal and the rename. Directories, deletes, renames and chmod map to one call each.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import os
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio
from cachetools import TTLCache

from alluxiofuse.backends.base import is_temp_name, read_concurrently, temp_name
from alluxiofuse.backends.proxy.client import DEFAULT_PORT, ProxyClient, ReadStream
from alluxiofuse.errors import (
    AlluxioFuseError,
    AlreadyExists,
    BackendError,
    ConfigError,
    DirectoryNotEmpty,
    InvalidArgument,
    NotFound,
    NotSupported,
    Refused,
    StaleFile,
)
from alluxiofuse.metrics import Metrics
from alluxiofuse.model import (
    NAME_MAX,
    RENAME_NOREPLACE,
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

SCHEME = "alluxio-proxy"
_WRITE_PART = 1024 * 1024  # bytes of a staged file read from disk at a time
# A stream opened this soon after a status named its version is not checked again: the
# lookup (or listing) before an open is that check, and a second one per small file was a
# third more requests. Alluxio files are written once; a file made again within this window
# and read before it passes could be read as the old version (its length is still checked).
_FRESH = 1.0  # seconds
_FRESH_ENTRIES = 10_000


@dataclass(frozen=True)
class ProxySource:
    """Where an ``alluxio-proxy://host[:port][/path]`` source points."""

    host: str
    port: int
    root: str  # the Alluxio path mounted: "/" or "/a/b"

    def path(self, relative: str) -> str:
        """The Alluxio path of mount-relative ``relative``."""
        if not relative:
            return self.root
        return f"{self.root}/{relative}" if self.root != "/" else f"/{relative}"


def parse_source(source: str) -> ProxySource:
    """``alluxio-proxy://host[:port][/path]`` → where it points; ConfigError if it is not one."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme != SCHEME or not parts.hostname:
        raise ConfigError(f"not {SCHEME}://HOST[:PORT][/PATH]: {source!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{source!r}: a proxy source has no query, fragment or user")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as e:
        raise ConfigError(f"{source!r}: {e}") from None
    root = "/" + "/".join(p for p in urllib.parse.unquote(parts.path).split("/") if p)
    if any(p in (".", "..") for p in root.split("/")):
        raise ConfigError(f"{source!r}: the path may not hold . or ..")
    return ProxySource(parts.hostname, port, root)


def open_proxy(
    source: str, *, timeout: float, retries: int, read_type: str, write_type: str,
    limiter: trio.CapacityLimiter, metrics: Metrics | None = None,
) -> ProxyBackend:
    where = parse_source(source)
    client = ProxyClient(where.host, where.port, timeout=timeout, retries=retries,
                         metrics=metrics)
    return ProxyBackend(client, where, description=source, read_type=read_type,
                        write_type=write_type, limiter=limiter)


class ProxyStream:
    """A read stream of one file on the proxy: the stream's bytes, and its id to close."""

    def __init__(self, client: ProxyClient, stream_id: int, body: ReadStream) -> None:
        self._client = client
        self.stream_id = stream_id
        self._body = body

    async def read(self, n: int) -> Data:
        return await self._body.read(n)

    async def aclose(self) -> None:
        """Close the reply and the proxy's stream (which would otherwise live on for its
        expiry, an hour by default)."""
        await self._body.aclose()
        await close_quietly(self._client, self.stream_id)


async def close_quietly(client: ProxyClient, stream_id: int) -> None:
    """Close a stream, even in a cancelled scope; a failure is only logged (the proxy
    closes an unused stream itself once it expires)."""
    try:
        with trio.CancelScope(shield=True):
            await client.close(stream_id)
    except AlluxioFuseError as e:
        log.debug("closing stream %d failed: %s", stream_id, e)


class ProxyBackend:
    """The Alluxio namespace under ``source.root``, through one proxy."""

    warms = False
    streams = True
    span = 0
    writes = WriteSupport(files=True, modes=True, rename_noreplace=True)

    def __init__(
        self, client: ProxyClient, source: ProxySource, *, description: str, read_type: str,
        write_type: str, limiter: trio.CapacityLimiter, fresh_for: float = _FRESH,
    ) -> None:
        self.client = client
        self.source = source
        self.description = description
        self.read_type = read_type
        self.write_type = write_type
        self._limiter = limiter  # local disk reads of staged files
        self._fresh: TTLCache[str, Version] = TTLCache(_FRESH_ENTRIES, fresh_for)  # path -> version

    # --- metadata ---------------------------------------------------------------------

    async def stat(self, path: str) -> FileStatus:
        status = (await self.client.get_status(self.source.path(path))).status
        self._fresh[path] = status.version
        return _named(status, path)

    async def list(self, path: str) -> builtins.list[FileStatus]:
        entries = []
        prefix = f"{path}/" if path else ""
        for child in await self.client.list_status(self.source.path(path)):
            name = child.status.name
            if not valid_name(name) or is_temp_name(name):
                log.debug("skipping entry %r of %r: not a usable file name", name, path)
                continue
            entries.append(child.status)
            self._fresh[prefix + name] = child.status.version
        return entries

    async def list_pages(self, path: str) -> AsyncGenerator[Sequence[FileStatus], None]:
        yield await self.list(path)  # the proxy answers with the whole listing

    async def stat_and_read(
        self, path: str, length: int, *, ahead: bool = False,
    ) -> tuple[FileStatus, Data] | None:
        return None  # the proxy's status and stream are separate calls

    def stat_nowait(self, path: str) -> FileStatus | None:
        return None

    async def readlink(self, path: str) -> str:
        raise InvalidArgument(f"{path!r} is not a symbolic link (Alluxio has none)")

    async def statfs(self) -> FsStats:
        return FsStats(name_max=NAME_MAX)

    async def aclose(self) -> None:
        await self.client.aclose()

    # --- data -------------------------------------------------------------------------

    async def open_stream(self, path: str, offset: int, version: Version) -> ProxyStream:
        """A stream of ``path`` at ``offset``: opened at the start and read past ``offset``
        (the proxy cannot seek). Its status is asked for at the same time: a file that is
        no longer ``version`` raises ``StaleFile``, and its stream is closed."""
        apath = self.source.path(path)
        opened: list[int] = []
        found: list[Version] = []

        async def open_file() -> None:
            opened.append(await self.client.open_file(apath, read_type=self.read_type))

        async def get_status() -> None:
            found.append((await self.client.get_status(apath)).status.version)

        try:
            if self._fresh.get(path) == version:
                await open_file()
            else:
                await _both(open_file, get_status)
                if found[0] != version:
                    raise StaleFile(f"{path} changed while open")
            body = await self.client.read(opened[0])
        except BaseException as e:
            if opened:
                await close_quietly(self.client, opened[0])
            if isinstance(e, NotFound):  # for an open file, gone is one more way of changing
                raise StaleFile(f"{path} was removed while open") from e
            raise
        stream = ProxyStream(self.client, opened[0], body)
        try:
            if offset and await body.skip(offset) < offset:
                raise StaleFile(f"{path} is shorter than when it was opened")
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def read(self, path: str, offset: int, length: int, version: Version) -> Data:
        """A range on a stream of its own (the file layer keeps streams for open files)."""
        stream = await self.open_stream(path, offset, version)
        try:
            data = await stream.read(max(0, min(length, version.size - offset)))
            # At the end of the file, read the reply to its end too: the file must end
            # there, and a reply read whole gives its connection back to the pool
            # (directory read-ahead made a new connection per file otherwise).
            if offset + len(data) >= version.size and await stream.read(1):
                raise StaleFile(f"{path} is longer than when it was opened")
        finally:
            await stream.aclose()
        if len(data) < min(length, version.size - offset):
            raise StaleFile(f"{path} is shorter than when it was opened")
        return data

    async def read_many(
        self, reads: Sequence[tuple[str, int, int, Version]],
    ) -> builtins.list[Data | AlluxioFuseError]:
        return await read_concurrently(self.read, reads)

    def read_nowait(self, path: str, offset: int, length: int, version: Version) -> bytes | None:
        return None

    async def warm(self, reads: Sequence[tuple[str, int, int, Version]]) -> None:
        return None

    # --- changes ----------------------------------------------------------------------

    async def mkdir(self, path: str, mode: int, owner: tuple[int, int] | None) -> FileStatus:
        apath = self.source.path(path)
        await self.client.create_directory(apath, mode=mode, write_type=self.write_type)
        return await self.stat(path)

    async def rmdir(self, path: str) -> None:
        try:
            await self.client.delete(self.source.path(path))
        except Refused as e:  # the one state a non-recursive delete of a directory refuses
            raise DirectoryNotEmpty(path) from e

    async def unlink(self, path: str) -> None:
        await self.client.delete(self.source.path(path))

    async def rename(self, old: str, new: str, flags: int) -> None:
        """Move ``old`` to ``new``. Alluxio never replaces: without RENAME_NOREPLACE an
        existing ``new`` (a file, or a directory the caller found empty) is removed first."""
        source, target = self.source.path(old), self.source.path(new)
        try:
            await self.client.rename(source, target)
        except AlreadyExists:
            if flags & RENAME_NOREPLACE:
                raise
            await self.client.delete(target)
            await self.client.rename(source, target)

    async def symlink(self, path: str, target: str, owner: tuple[int, int] | None) -> FileStatus:
        raise NotSupported(f"{self.description} has no symbolic links")

    async def mknod(
        self, path: str, mode: int, rdev: int, owner: tuple[int, int] | None,
    ) -> FileStatus:
        raise NotSupported(f"{self.description} keeps no FIFOs, sockets or devices")

    async def link(self, path: str, new: str) -> FileStatus:
        raise NotSupported(f"{self.description} has no hard links")

    async def setattr(self, path: str, attrs: Attrs) -> FileStatus:
        if attrs.mode is not None:
            await self.client.set_attribute(self.source.path(path), mode=attrs.mode)
        return await self.stat(path)

    async def commit(
        self, path: str, staged: str, *, mode: int | None = None,
        owner: tuple[int, int] | None = None, mtime_ns: int | None = None,
        durable: bool = True, size: int = 0,
    ) -> Commit:
        """Write the local file ``staged`` under a temporary name beside ``path`` with the
        mount's write type, then rename it into place (removing an old ``path`` just
        before). Owners and times are Alluxio's own: the proxy's user, and now."""
        parent = path.rpartition("/")[0]
        temp = f"{parent}/{temp_name()}" if parent else temp_name()
        atemp = self.source.path(temp)
        stream_id = await self.client.create_file(atemp, mode=mode, write_type=self.write_type)
        try:
            try:
                await self.client.write(stream_id, self._parts(staged, size), size)
            except BaseException:
                await close_quietly(self.client, stream_id)
                raise
            await self.client.close(stream_id)  # the file is complete
            await self.rename(temp, path, 0)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._remove_quietly(atemp)
            raise
        return Commit(await self.stat(path))

    async def sync(self, path: str) -> None:
        """A commit is as durable as the write type makes it once its stream is closed."""

    async def cache(self, path: str) -> None:
        """CACHE_THROUGH caches as it writes: nothing more to ask."""

    async def _parts(self, staged: str, size: int) -> AsyncIterator[bytes]:
        """The staged file's ``size`` bytes, read from disk a part at a time in a thread."""
        fd = await trio.to_thread.run_sync(os.open, staged, os.O_RDONLY | os.O_CLOEXEC,
                                           limiter=self._limiter)
        try:
            sent = 0
            while sent < size:
                part = await trio.to_thread.run_sync(os.pread, fd, min(_WRITE_PART, size - sent),
                                                     sent, limiter=self._limiter)
                if not part:
                    raise BackendError(f"{staged} ended after {sent} of {size} bytes")
                sent += len(part)
                yield part
        finally:
            os.close(fd)

    async def _remove_quietly(self, apath: str) -> None:
        try:
            await self.client.delete(apath)
        except AlluxioFuseError as e:
            log.debug("removing %s failed: %s", apath, e)


async def _both(*calls: Callable[[], Awaitable[None]]) -> None:
    """Run the calls at once; the first error (in call order) is raised once all ended."""
    errors: list[AlluxioFuseError | None] = [None] * len(calls)

    async def one(i: int) -> None:
        try:
            await calls[i]()
        except AlluxioFuseError as e:
            errors[i] = e

    async with trio.open_nursery() as nursery:
        for i in range(len(calls)):
            nursery.start_soon(one, i)
    for error in errors:
        if error is not None:
            raise error


def _named(status: FileStatus, path: str) -> FileStatus:
    """The mount's root is named "" whatever Alluxio calls the directory."""
    return status if path else dataclasses.replace(status, name="")
