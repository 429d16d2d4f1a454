"""The under-storage through fsspec (any URL); the local source (local.py) builds on it.

Every call runs in a worker thread under the daemon's limiter and a deadline, so a slow or
hung under-storage costs a timeout (EIO), never a blocked event loop. Reads of S3 are the
exception: s3fs's coroutines run on fsspec's own event loop and wake the trio task that
awaits them (``run_on_loop``), so that many requests are in flight without a thread each.
fsspec's own listing caches are invalidated before each call: the metadata cache above is
the single authority on freshness, with the TTLs the user chose.

Reads come in two kinds: ``read`` is a reader waiting, ``read_many`` is read-ahead. Each
kind has its own bound on requests in flight, and the connection pool has room for both
(and for the metadata calls' worker threads), so a waiting reader never queues behind
read-ahead.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import fsspec
import fsspec.core
import trio

from alluxiofuse.backends import s3
from alluxiofuse.backends.base import (
    ByteStream,
    is_temp_name,
    run_blocking,
    run_on_loop,
)
from alluxiofuse.backends.fence import CommitFence
from alluxiofuse.backends.keys import Rename, StoreKeys
from alluxiofuse.backends.objects import attrs_metadata, reported, status_from_info, with_metadata
from alluxiofuse.errors import (
    AlluxioFuseError,
    AlreadyExists,
    ConfigError,
    DirectoryNotEmpty,
    InvalidArgument,
    NotFound,
    NotSupported,
    StaleFile,
)
from alluxiofuse.model import (
    NAME_MAX,
    RENAME_NOREPLACE,
    Attrs,
    Commit,
    Data,
    FileStatus,
    FsStats,
    Kind,
    Version,
    WriteSupport,
    valid_name,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
# fsspec stores that cannot be written: a mount of one is read-only from the start.
_READ_ONLY_PROTOCOLS = frozenset({"http", "https", "github", "git", "zip", "tar", "libarchive",
                                  "reference", "jlab", "dask", "dbfs+ro"})
# Object stores: no empty directories, so one is kept as a zero-byte marker object "dir/".
_MARKER_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss",
                               "oci", "cos", "r2", "ais"})
# The slowest upload rate a commit is given time for, in bytes per second.
_MIN_UPLOAD_RATE = 1024 * 1024
# The longest key of the object stores, in bytes (S3, GCS and Azure alike).
_KEY_MAX = 1024
# The time a rename is given per key it copies and removes (besides the bytes at the rate
# above): a large directory's objects cannot all move within one --io-timeout.
_SECONDS_PER_KEY = 1.0


# Read requests in flight at once: those of waiting readers, and those of read-ahead (each
# of up to _SPAN bytes). Apart, so that read-ahead never holds what a reader waits for.
DEMAND_REQUESTS = 64
READAHEAD_REQUESTS = 16
# The bytes read-ahead asks of a file in one request: at one S3 connection's rate the
# transfer then outweighs the request's latency several times over.
_SPAN = 8 * 1024 * 1024


def with_pool(options: Mapping[str, Any], connections: int) -> dict[str, Any]:
    """s3fs ``options`` with a connection pool of ``connections`` (botocore keeps 10 by
    default, fewer than the requests a mount has in flight), unless the user chose one."""
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("max_pool_connections", connections)
    return {**options, "config_kwargs": config}


def open_store(
    source: str, options: Mapping[str, Any], limiter: trio.CapacityLimiter, timeout: float, *,
    mtime_unit_ns: int = 1, part_size: int = 16 * 1024 * 1024, object_metadata: bool = True,
) -> UfsBackend:
    """The backend for the fsspec URL ``source``; S3 keeps modes, owners and times in
    object metadata unless ``object_metadata`` is False."""
    protocol = source.partition("://")[0]
    if protocol in ("s3", "s3a"):
        # Room for every request the mount has in flight: reads of each kind, and a
        # metadata call in each worker thread.
        options = with_pool(options, DEMAND_REQUESTS + READAHEAD_REQUESTS
                            + int(limiter.total_tokens))
    try:
        fs, root = fsspec.core.url_to_fs(source, skip_instance_cache=True, **options)
    except ImportError as e:
        raise ConfigError(f"{protocol}:// needs a package that is not installed: {e}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot use source {source!r}: {e}") from None
    return UfsBackend(fs, root.rstrip("/"), limiter, timeout, description=source,
                      mtime_unit_ns=mtime_unit_ns, part_size=part_size,
                      object_metadata=object_metadata)


class UfsBackend:
    """A directory of any fsspec filesystem.

    Changes: new content is written in parts of ``part_size`` bytes, replacing the file
    only once complete: on S3 by one PUT or a multipart upload, each body with its MD5
    and the ETag checked (``s3.upload``); elsewhere with the store's own
    ``open(path, "wb")``; directories that a store cannot hold empty (object stores) are
    kept as zero-byte marker objects named ``dir/``; a rename is a copy of every key and
    then the removal of the old ones (not atomic, undone if a copy fails); modes, owners
    and times are kept in object metadata on S3 alone (unless ``object_metadata`` is
    False: then S3 keeps none, as other object stores, and a listing is an entry's whole
    status); symbolic links are not kept.
    """

    warms = False
    streams = False
    span = 0
    list_page_keys = 1000  # S3 ListObjectsV2's largest page

    def __init__(
        self, fs: Any, root: str, limiter: trio.CapacityLimiter, timeout: float, *,
        description: str, mtime_unit_ns: int = 1, part_size: int = 16 * 1024 * 1024,
        object_metadata: bool = True,
    ) -> None:
        self.part_size = part_size
        self._markers = False
        self._s3 = False  # s3fs: the S3 calls fsspec has no portable form for
        self._metadata = False  # S3 object metadata keeps modes, owners and times
        # fsspec's event loop, where s3fs's coroutines run: S3 reads are awaited there.
        self._loop: Any = None
        # Reads of a waiting reader (S3) and of read-ahead (every fsspec store); see the
        # module's docstring.
        self._demand = trio.CapacityLimiter(DEMAND_REQUESTS)
        self._ahead = trio.CapacityLimiter(READAHEAD_REQUESTS)
        if fs is not None:  # else a LocalUfs, which says what it supports itself
            self.span = _SPAN
            protocol = getattr(fs, "protocol", ())
            protocols = set(protocol if isinstance(protocol, tuple | list) else (protocol,))
            self._markers = bool(_MARKER_PROTOCOLS & protocols)
            self._s3 = bool({"s3", "s3a"} & protocols) and hasattr(fs, "call_s3")
            self._metadata = self._s3 and object_metadata
            if self._s3 and getattr(fs, "async_impl", False):
                self._loop = fs.loop
            # S3 keeps modes, owners and times in object metadata (as s3fs-fuse does).
            self.writes = WriteSupport(files=not _READ_ONLY_PROTOCOLS & protocols,
                                       directories=not self._markers, modes=self._metadata,
                                       owners=self._metadata, times=self._metadata)
            if self._markers:  # a file whose key the store refuses could never be committed
                self.writes = dataclasses.replace(self.writes, path_max=_path_room(root))
        self.fs = fs
        self._keys = StoreKeys(fs, markers=self._markers, s3=self._s3)
        self.root = root
        self.description = description
        # Above 1, statuses are reported as Alluxio workers report them: mtime in whole
        # units (1,000,000 for their milliseconds) and no etag, so that a file's version
        # is the same whichever of the two sources answered (backends/cluster/backend.py).
        self.mtime_unit_ns = mtime_unit_ns
        self._limiter = limiter
        self._timeout = timeout
        # A commit that timed out may still finish in its thread: never over a newer one.
        self._fence = CommitFence()
        self._commit_notes: str | None = None  # see note_commits

    def uri(self, path: str) -> str:
        """The full URI of ``path`` in the under-storage, as Alluxio names files."""
        return str(self.fs.unstrip_protocol(self.full_path(path)))

    def _reported(self, status: FileStatus) -> FileStatus:
        """``status`` at the precision this backend reports (see ``mtime_unit_ns``)."""
        return reported(status, self.mtime_unit_ns)

    def _same_mtime(self, mtime_ns: int, version: Version) -> bool:
        return mtime_ns - mtime_ns % self.mtime_unit_ns == version.mtime_ns

    def full_path(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    async def stat(self, path: str) -> FileStatus:
        return await self._call(self._stat_sync, path)

    async def list(self, path: str) -> builtins.list[FileStatus]:
        entries: builtins.list[FileStatus] = []
        async with contextlib.aclosing(self.list_pages(path)) as pages:
            async for page in pages:
                entries += page
        return entries

    async def list_pages(self, path: str) -> AsyncGenerator[Sequence[FileStatus], None]:
        if self._s3:
            async with contextlib.aclosing(self._s3_list_pages(path)) as pages:
                async for page in pages:
                    yield page
        else:
            yield await self._call(self._list_sync, path)

    async def _s3_list_pages(self, path: str) -> AsyncGenerator[Sequence[FileStatus], None]:
        """The listing, one ListObjectsV2 page (1,000 keys) per call, each under its own
        deadline: a prefix of a million objects takes a thousand round trips, far longer
        than any one call may (``--io-timeout``)."""
        full = self.full_path(path)
        bucket, key, _ = self.fs.split_path(full)
        prefix = key.rstrip("/") + "/" if key else ""
        token: str | None = None
        first = True
        while first or token:
            page = await self._call(self._s3_list_page, bucket, prefix, token)
            if first and not page.get("Contents") and not page.get("CommonPrefixes") and key:
                raise NotFound(f"{path!r} does not exist")  # not even its marker
            first, token = False, page.get("NextContinuationToken")
            entries: builtins.list[FileStatus] = []
            for info in page.get("Contents") or []:
                self._listed(entries, path, str(info.get("Key", ""))[len(prefix):], {
                    "type": "file", "size": info.get("Size"), "ETag": info.get("ETag"),
                    "LastModified": info.get("LastModified")})
            for info in page.get("CommonPrefixes") or []:
                name = str(info.get("Prefix", ""))[len(prefix):].rstrip("/")
                self._listed(entries, path, name, {"type": "directory"})
            yield entries

    def _s3_list_page(self, bucket: str, prefix: str, token: str | None) -> dict[str, Any]:
        more = {"ContinuationToken": token} if token else {}
        return dict(self.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix,
                                    Delimiter="/", MaxKeys=self.list_page_keys, **more))

    def _listed(self, entries: builtins.list[FileStatus], path: str, name: str,
                info: Mapping[str, Any]) -> None:
        """Add the entry ``name`` of ``path`` that ``info`` describes (an fsspec listing's
        dict) to ``entries``, unless no file could have that name (the directory's own
        marker, ``""``, is one)."""
        if not valid_name(name) or is_temp_name(name):
            if name:
                log.debug("skipping entry %r of %r: not a usable file name", name, path)
            return
        status = status_from_info(name, info)
        if self._s3:
            # A listing carries no object metadata (complete False, where it keeps
            # attributes), and many stores list LastModified to the millisecond where
            # HEAD and GET give it as an HTTP date, in whole seconds: the same version
            # must compare equal whichever call named it.
            mtime = status.mtime_ns
            status = dataclasses.replace(
                status, complete=not self._metadata,
                mtime_ns=None if mtime is None else mtime - mtime % 1_000_000_000)
        entries.append(self._reported(status))

    async def read(self, path: str, offset: int, length: int, version: Version) -> bytes:
        if self._loop is None:
            try:
                return await self._call(self._read_sync, path, offset, length, version)
            except NotFound as e:  # for an open file, gone is one more way of having changed
                raise StaleFile(f"{path} was removed while open") from e
        async with self._demand:
            pages = await self._read_run(path, offset, [length], version)
        return pages[0]

    async def read_many(
        self, reads: Sequence[tuple[str, int, int, Version]],
    ) -> builtins.list[Data | AlluxioFuseError]:
        """Read-ahead: the reads of contiguous ranges of one file version, up to ``span``
        bytes, in one request each, the requests side by side (at most
        READAHEAD_REQUESTS of them, apart from the waiting readers' bound)."""
        results: builtins.list[Data | AlluxioFuseError] = [b""] * len(reads)

        async def run(first: int, last: int) -> None:
            path, offset, _, version = reads[first]
            lengths = [reads[i][2] for i in range(first, last + 1)]
            pages: Sequence[Data]
            try:
                if self._loop is not None:
                    async with self._ahead:
                        pages = await self._read_run(path, offset, lengths, version)
                else:  # a worker thread each, under the read-ahead bound
                    pages = await self._call(self._read_run_sync, path, offset, lengths,
                                             version, limiter=self._ahead)
            except NotFound:  # for an open file, gone is one more way of having changed
                error: AlluxioFuseError = StaleFile(f"{path} was removed while open")
                results[first:last + 1] = [error] * len(lengths)
            except AlluxioFuseError as e:
                results[first:last + 1] = [e] * len(lengths)
            else:
                results[first:last + 1] = pages

        async with trio.open_nursery() as nursery:
            for first, last in _runs(reads, self.span):
                nursery.start_soon(run, first, last)
        return results

    async def _read_run(
        self, path: str, offset: int, lengths: Sequence[int], version: Version,
    ) -> builtins.list[bytes]:
        """S3: the ranges of ``lengths`` bytes one after another from ``offset`` of
        ``version`` (each cut short only at the end of the file), in one request."""
        full = self.full_path(path)
        want = [max(0, min(n, version.size - start))
                for n, start in zip(lengths, range_starts(offset, lengths), strict=True)]
        if not sum(want):
            return [b""] * len(lengths)
        return await run_on_loop(
            lambda: s3.get_ranges(self.fs, full, offset, want, version, self.mtime_unit_ns),
            self._loop,
            deadline=self._timeout, what=self.description,
        )

    async def open_stream(self, path: str, offset: int, version: Version) -> ByteStream:
        raise NotSupported(f"{self.description} is read by range, not as a stream")

    async def stat_and_read(
        self, path: str, length: int, *, ahead: bool = False,
    ) -> tuple[FileStatus, Data] | None:
        if not self._s3 or length <= 0 or self._loop is None:
            return None  # fsspec has no portable read that tells the version read
        full = self.full_path(path)
        async with self._ahead if ahead else self._demand:
            got = await run_on_loop(lambda: s3.get_start(self.fs, full, length),
                                    self._loop, deadline=self._timeout, what=self.description)
        if got is None:  # an object too short for the range now (the listing was older)
            return await self.stat(path), b""
        reply, data = got
        size = reply.get("ContentLength")
        content_range = str(reply.get("ContentRange") or "")
        if "/" in content_range and content_range.rpartition("/")[2].isdigit():
            size = int(content_range.rpartition("/")[2])  # "bytes 0-99/12345": the whole
        info = {"type": "file", "size": size, "ETag": reply.get("ETag"),
                "LastModified": reply.get("LastModified")}
        status = self._with_metadata(status_from_info(path.rpartition("/")[2], info),
                                     reply.get("Metadata") or {})
        return self._reported(status), data[:length]

    def stat_nowait(self, path: str) -> FileStatus | None:
        return None  # every fsspec call may block

    async def warm(self, reads: Sequence[tuple[str, int, int, Version]]) -> None:
        return None

    def read_nowait(self, path: str, offset: int, length: int, version: Version) -> bytes | None:
        return None

    async def readlink(self, path: str) -> str:
        raise InvalidArgument(f"{path!r} is not a symbolic link")

    async def statfs(self) -> FsStats:
        return FsStats(name_max=NAME_MAX)

    async def aclose(self) -> None:
        """Nothing to release: fsspec filesystems hold no per-mount state we opened."""

    async def _call(
        self, fn: Callable[..., T], *args: Any, within: float | None = None,
        limiter: trio.CapacityLimiter | None = None,
    ) -> T:
        """Run ``fn(*args)`` in a worker thread, under the limiter (``limiter``, else the
        daemon's) and the deadline (``within`` seconds, else ``--io-timeout``)."""
        return await run_blocking(
            fn, *args, limiter=self._limiter if limiter is None else limiter,
            what=self.description, deadline=self._timeout if within is None else within,
        )

    def note_commits(self, directory: str) -> builtins.list[str]:
        """Name each commit's temporary file in ``directory`` (the spool's, held by this
        daemon) while it exists, first removing those a crash left: the source-relative
        paths removed. fsspec commits leave none (the store's writer discards its own)."""
        return []

    def _fenced(self, path: str, ticket: int, commit: Callable[..., T], *args: Any) -> T:
        """``commit(*args)``, commit ``ticket`` of ``path`` (in its thread): its ticket
        ends when the thread is done, even one the caller stopped waiting for."""
        try:
            return commit(*args)
        finally:
            self._fence.end(path, ticket)

    def _commit_deadline(self, size: int) -> float:
        """An upload may take ``--io-timeout`` plus a second per MiB: a stalled store
        still fails, a large file on a slow link does not."""
        return self._timeout + size / _MIN_UPLOAD_RATE

    def _stat_sync(self, path: str) -> FileStatus:
        full = self.full_path(path)
        self.fs.invalidate_cache(full)
        if self._s3:
            return self._reported(s3.stat(self.fs, path, full, metadata=self._metadata))
        return self._reported(status_from_info(path.rpartition("/")[2], self.fs.info(full)))

    def _with_metadata(self, status: FileStatus, metadata: Mapping[str, str]) -> FileStatus:
        return with_metadata(status, metadata) if self._metadata else status

    def _list_sync(self, path: str) -> Sequence[FileStatus]:
        full = self.full_path(path)
        self.fs.invalidate_cache(full)
        entries: builtins.list[FileStatus] = []
        for info in self.fs.ls(full, detail=True):
            entry_path = str(info.get("name", "")).rstrip("/")
            if entry_path != full.rstrip("/"):  # not the directory itself
                self._listed(entries, path, entry_path.rpartition("/")[2], info)
        return entries

    def _read_sync(self, path: str, offset: int, length: int, version: Version) -> bytes:
        """The range, checked against ``version`` after reading it (see _read_run_sync)."""
        return bytes(self._read_run_sync(path, offset, [length], version)[0])  # no copy

    def _read_run_sync(
        self, path: str, offset: int, lengths: Sequence[int], version: Version,
    ) -> builtins.list[Data]:
        """The ranges of ``lengths`` bytes one after another from ``offset``, checked
        against ``version`` after reading them, in one read.

        fsspec has no portable conditional read, so the status is fetched again once the
        bytes are in: if the file changed before or during the read, the check sees it.
        That costs one metadata call per read (S3, which has one, does without).
        """
        full = self.full_path(path)
        want = [max(0, min(n, version.size - start))
                for n, start in zip(lengths, range_starts(offset, lengths), strict=True)]
        expected = sum(want)
        data = bytes(self.fs.cat_file(full, start=offset, end=offset + expected))
        self.fs.invalidate_cache(full)
        now = self._reported(status_from_info(path.rpartition("/")[2], self.fs.info(full))).version
        if len(data) != expected or now != version:
            raise StaleFile(f"{path} changed while open")
        if len(want) == 1:
            return [data]
        # A page of its own each (a copy): a view would keep the whole run's buffer alive
        # for as long as any one of its pages stayed cached.
        return [data[start - offset:start - offset + n]
                for n, start in zip(want, range_starts(offset, want), strict=True)]

    # -- changes

    async def mkdir(self, path: str, mode: int, owner: tuple[int, int] | None) -> FileStatus:
        return await self._call(self._mkdir_sync, path, mode, owner)

    async def rmdir(self, path: str) -> None:
        await self._call(self._rmdir_sync, path)

    async def unlink(self, path: str) -> None:
        await self._call(self._unlink_sync, path)

    async def rename(self, old: str, new: str, flags: int) -> None:
        """Move ``old`` to ``new``, replacing what is there. The caller has checked the
        POSIX rules (kinds, an empty directory) and that ``flags`` are supported.

        The keys to copy are listed first, and the copy is given time for their number
        and bytes (``_SECONDS_PER_KEY``, ``_MIN_UPLOAD_RATE``) beyond ``--io-timeout``."""
        plan = await self._call(self._rename_plan, old, new, flags)
        deadline = (self._timeout + len(plan.moves) * _SECONDS_PER_KEY
                    + plan.size / _MIN_UPLOAD_RATE)
        await self._call(self._keys.move, plan, within=deadline)

    async def symlink(self, path: str, target: str, owner: tuple[int, int] | None) -> FileStatus:
        raise NotSupported(f"{self.description} has no symbolic links")

    async def mknod(
        self, path: str, mode: int, rdev: int, owner: tuple[int, int] | None,
    ) -> FileStatus:
        raise NotSupported(f"{self.description} keeps no FIFOs, sockets or devices")

    async def link(self, path: str, new: str) -> FileStatus:
        raise NotSupported(f"{self.description} has no hard links")

    async def setattr(self, path: str, attrs: Attrs) -> FileStatus:
        if not self._metadata:
            raise NotSupported(f"{self.description} keeps no modes, owners or times")
        return await self._call(self._s3_setattr, path, attrs)

    async def commit(
        self, path: str, staged: str, *, mode: int | None = None,
        owner: tuple[int, int] | None = None, mtime_ns: int | None = None,
        durable: bool = True, size: int = 0,
    ) -> Commit:
        """Make the local file ``staged`` (``size`` bytes) the content of ``path``:
        replaced whole once complete, and untouched if this fails (every upload is
        durable)."""
        metadata = attrs_metadata(Kind.FILE, mode, owner, mtime_ns) if self._metadata else {}
        ticket = self._fence.begin(path)
        return Commit(await self._call(self._fenced, path, ticket, self._commit_sync, path,
                                       staged, metadata, ticket,
                                       within=self._commit_deadline(size)))

    async def sync(self, path: str) -> None:
        """Every commit is durable already."""

    async def cache(self, path: str) -> None:
        """No cache in front of a bare under-storage."""

    # Only single-path fsspec calls below (info, ls, mkdir, rmdir, pipe_file, cp_file,
    # rm_file), as in keys.py: the many-path ones (mv, copy, rm) expand glob characters,
    # and a file may well be called "*".

    def _mkdir_sync(self, path: str, mode: int, owner: tuple[int, int] | None) -> FileStatus:
        full = self.full_path(path)
        if self._keys.exists(full):
            raise AlreadyExists(path)
        if self._s3:  # the marker keeps the mode and owner
            metadata = attrs_metadata(Kind.DIRECTORY, mode, owner, None) if self._metadata else {}
            self.fs.pipe_file(full + "/", b"", Metadata=metadata)
            self.fs.invalidate_cache(full)
        else:
            self._keys.make_dir(full)
        return self._stat_sync(path)

    def _rename_plan(self, old: str, new: str, flags: int) -> Rename:
        old_full, new_full = self.full_path(old), self.full_path(new)
        if flags & RENAME_NOREPLACE and self._keys.exists(new_full):  # not atomic: documented
            raise AlreadyExists(new)
        return self._keys.plan(old_full, new_full)

    def _rmdir_sync(self, path: str) -> None:
        full = self.full_path(path)
        if self._list_sync(path):
            raise DirectoryNotEmpty(path)
        self._keys.remove_dir(full)

    def _unlink_sync(self, path: str) -> None:
        full = self.full_path(path)
        self.fs.rm_file(full)
        self.fs.invalidate_cache(full)

    def _s3_setattr(self, path: str, attrs: Attrs) -> FileStatus:
        s3.set_attrs(self.fs, path, self.full_path(path), attrs)
        return self._stat_sync(path)

    def _commit_sync(
        self, path: str, staged: str, metadata: Mapping[str, str], ticket: int,
    ) -> FileStatus:
        """Upload ``staged`` as ``path``; nothing is published unless the whole upload
        succeeded, nor by a commit that a newer commit of ``path`` began after
        (``ticket``) while it ran late.

        S3: one PUT or a multipart upload (aborted on any failure), each body with its
        MD5 and each ETag checked (``s3.upload``); the object carries ``metadata``
        (mode, owner, times). Other stores: their own writer with ``autocommit=False``,
        published by ``commit()`` only and ``discard()``ed on any failure."""
        full = self.full_path(path)
        if self._s3:
            s3.upload(self.fs, full, staged, self.part_size, metadata,
                      functools.partial(self._fence.publishing, path, ticket))
            return self._stat_sync(path)
        with open(staged, "rb") as src:
            dst = self.fs.open(full, "wb", block_size=self.part_size, autocommit=False)
            try:
                while chunk := src.read(self.part_size):
                    dst.write(chunk)
                dst.close()
                with self._fence.publishing(path, ticket):
                    dst.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    dst.discard()
                    dst.closed = True
                raise
        return self._stat_sync(path)


def range_starts(offset: int, lengths: Sequence[int]) -> Iterator[int]:
    """Where each of ranges of ``lengths`` bytes laid end to end from ``offset`` starts."""
    for n in lengths:
        yield offset
        offset += n


def _runs(reads: Sequence[tuple[str, int, int, Version]], span: int) -> Iterator[tuple[int, int]]:
    """``reads`` cut into runs (first and last index) that one request can serve: the same
    version of one file, each range starting where the last ended, at most ``span`` bytes
    (one read alone however long)."""
    first = 0
    for i in range(1, len(reads) + 1):
        if i < len(reads):
            path, offset, length, version = reads[i]
            last_path, last_offset, last_length, last_version = reads[i - 1]
            if (path == last_path and version == last_version
                    and offset == last_offset + last_length
                    and offset + length - reads[first][1] <= span):
                continue
        yield first, i - 1
        first = i


def _path_room(root: str) -> int:
    """The longest path an object store keeps below ``root`` (``bucket/prefix``): a key is
    the prefix, a slash and the path, and a directory's marker ends in one more slash."""
    prefix = root.partition("/")[2]
    return _KEY_MAX - (len(prefix.encode("utf-8")) + 1 if prefix else 0) - 1

