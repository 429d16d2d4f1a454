"""The under-storage through fsspec (any URL), with a direct fast path for local directories.

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
import ctypes
import dataclasses
import errno
import logging
import os
import stat as statmod
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import fsspec
import fsspec.core
import trio

from alluxiofuse.backends.base import (
    ByteStream,
    is_temp_name,
    run_blocking,
    run_on_loop,
    temp_name,
)
from alluxiofuse.backends.fence import CommitFence
from alluxiofuse.backends.local_probes import CacheProbes
from alluxiofuse.backends.objects import (
    CHANGED_CODES,
    CONTENT_RANGE,
    META_GID,
    META_UID,
    BodyFailed,
    attrs_metadata,
    kept_headers,
    read_exactly,
    s3_code,
    status_from_info,
    with_metadata,
)
from alluxiofuse.errors import (
    AlluxioFuseError,
    AlreadyExists,
    ConfigError,
    DirectoryNotEmpty,
    InvalidArgument,
    NotFound,
    NotSupported,
    ProtocolError,
    StaleFile,
    from_oserror,
)
from alluxiofuse.listing import Columns, Listing, kind_code
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
# Small local reads per worker-thread job in read_many: a job asks the kernel for all of
# its files at once, so the disk overlaps them; one job per directory read-ahead batch
# (10,000 small files, 4 readers: 1,806-1,936 files/s against 1,481-1,648 in jobs of 4).
_READS_PER_JOB = 32
# fsspec stores that cannot be written: a mount of one is read-only from the start.
_READ_ONLY_PROTOCOLS = frozenset({"http", "https", "github", "git", "zip", "tar", "libarchive",
                                  "reference", "jlab", "dask", "dbfs+ro"})
# Object stores: no empty directories, so one is kept as a zero-byte marker object "dir/".
_MARKER_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss",
                               "oci", "cos", "r2"})
# The slowest upload rate a commit is given time for, in bytes per second.
_MIN_UPLOAD_RATE = 1024 * 1024
# The longest path one system call takes, its final NUL included (Linux's PATH_MAX).
_PATH_MAX = 4096
# The longest key of the object stores, in bytes (S3, GCS and Azure alike).
_KEY_MAX = 1024
# Directories opened to walk a long path: descriptors usable only as a place to start from.
_WALK_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The time a rename is given per key it copies and removes (besides the bytes at the rate
# above): a directory of 10,000 objects cannot move within one --io-timeout.
_SECONDS_PER_KEY = 1.0


# Read requests in flight at once: those of waiting readers, and those of read-ahead (each
# of up to _SPAN bytes). Apart, so that read-ahead never holds what a reader waits for.
DEMAND_REQUESTS = 64
READAHEAD_REQUESTS = 16
# The bytes read-ahead asks of a file in one request: at one S3 connection's rate the
# transfer then outweighs the request's latency several times over.
_SPAN = 8 * 1024 * 1024
# Transport failures part-way through a reply that a read tries again after (s3fs retries
# the request itself, not the reading of its body).
_BODY_RETRIES = 2


def with_pool(options: Mapping[str, Any], connections: int) -> dict[str, Any]:
    """s3fs ``options`` with a connection pool of ``connections`` (botocore keeps 10 by
    default, fewer than the requests a mount has in flight), unless the user chose one."""
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("max_pool_connections", connections)
    return {**options, "config_kwargs": config}


# The largest object copied in one request (CopyObject, which takes up to 5 GiB); larger
# ones in parts, as s3fs does: one request copying gigabytes can outlast a read timeout.
_COPY_MAX = 150 * 1024**2


class _Move(NamedTuple):
    """One key of a rename: copied to ``target`` (a directory of a store that has them:
    made there), then removed."""

    source: str
    target: str
    directory: bool
    size: int


@dataclasses.dataclass(frozen=True)
class _Rename:
    """What a rename through fsspec copies."""

    old: str
    new: str
    directory: bool
    moves: list[_Move]
    replaced: bool = False  # the target is an empty directory already

    @property
    def size(self) -> int:
        return sum(move.size for move in self.moves)


def open_ufs(
    source: str, options: Mapping[str, Any], limiter: trio.CapacityLimiter, timeout: float, *,
    mtime_unit_ns: int = 1, part_size: int = 16 * 1024 * 1024, object_metadata: bool = True,
) -> UfsBackend:
    """The backend for ``source``: a local path, ``file://`` URL or any fsspec URL; S3
    keeps modes, owners and times in object metadata unless ``object_metadata`` is False."""
    protocol, sep, rest = source.partition("://")
    if not sep or protocol == "file":
        if options:
            raise ConfigError("--ufs-option has no meaning for a local source")
        root = os.path.abspath(rest if sep else source)
        return LocalUfs(root, limiter, timeout, description=source, mtime_unit_ns=mtime_unit_ns)
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

    Changes: new content is written with the store's own ``open(path, "wb")`` in parts of
    ``part_size`` bytes (a multipart upload on object stores, which replaces the object
    only once complete); directories that a store cannot hold empty (object stores) are
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
        if self.mtime_unit_ns == 1:
            return status
        mtime, version_mtime = status.mtime_ns, status.version_mtime_ns
        if mtime is not None:
            mtime -= mtime % self.mtime_unit_ns
        if version_mtime is not None:
            version_mtime -= version_mtime % self.mtime_unit_ns
        return dataclasses.replace(status, etag=None, mtime_ns=mtime,
                                   version_mtime_ns=version_mtime)

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
                for n, start in zip(lengths, _starts(offset, lengths), strict=True)]
        if not sum(want):
            return [b""] * len(lengths)
        return await run_on_loop(
            lambda: self._s3_get(full, offset, want, version), self._loop,
            deadline=self._timeout, what=self.description,
        )

    async def _s3_get(
        self, full: str, offset: int, lengths: Sequence[int], version: Version,
    ) -> builtins.list[bytes]:
        """On fsspec's loop: one ranged GET of ``version`` that checks the version itself.
        With the version's ETag it asks for that content alone (If-Match: a changed object
        is refused with 412, never sent); either way the reply's own size, ETag and
        modification time must be the version's. The body is read page by page, each a
        buffer of its own (a page dropped frees its memory, not a neighbour's)."""
        bucket, key, _ = self.fs.split_path(full)
        total = sum(lengths)
        kwargs = {"Range": f"bytes={offset}-{offset + total - 1}"}
        if version.etag is not None:
            kwargs["IfMatch"] = version.etag
        for attempt in range(_BODY_RETRIES + 1):
            try:
                reply = await self.fs._call_s3("get_object", Bucket=bucket, Key=key, **kwargs)
            except OSError as e:
                # A StaleFile, not an OSError: passed on as it is, never retried.
                if isinstance(e, FileNotFoundError) or s3_code(e) in CHANGED_CODES:
                    raise StaleFile(f"{full} changed while open") from e
                raise
            body = reply["Body"]
            try:
                self._check_reply(full, offset, reply, version)
                return [await read_exactly(body, n) for n in lengths]
            except BodyFailed as e:
                if attempt == _BODY_RETRIES:
                    raise ConnectionError(f"{full}: the reply broke off: {e}") from e
                log.debug("%s: the reply broke off (%s); asking again", full, e)
            finally:
                body.close()
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _check_reply(
        self, full: str, offset: int, reply: Mapping[str, Any], version: Version,
    ) -> None:
        """The reply to a ranged GET is of ``version``, from ``offset``."""
        match = CONTENT_RANGE.fullmatch(str(reply.get("ContentRange") or ""))
        if match is None or int(match[1]) != offset:
            raise ProtocolError(f"{full}: a read at {offset} was answered with range "
                                f"{reply.get('ContentRange')!r}")
        info = {"size": int(match[3]), "ETag": reply.get("ETag"),
                "LastModified": reply.get("LastModified")}
        now = self._reported(status_from_info(full, info)).version
        # The modification time is compared only where there is no ETag: listings may
        # carry it to the millisecond, the reply's header to the second.
        if now.size != version.size or (
                now.etag != version.etag if version.etag is not None else now != version):
            raise StaleFile(f"{full} changed while open")

    async def open_stream(self, path: str, offset: int, version: Version) -> ByteStream:
        raise NotSupported(f"{self.description} is read by range, not as a stream")

    async def stat_and_read(
        self, path: str, length: int, *, ahead: bool = False,
    ) -> tuple[FileStatus, Data] | None:
        if not self._s3 or length <= 0 or self._loop is None:
            return None  # fsspec has no portable read that tells the version read
        full = self.full_path(path)
        async with self._ahead if ahead else self._demand:
            got = await run_on_loop(lambda: self._s3_get_with_status(full, length),
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

    async def _s3_get_with_status(
        self, full: str, length: int,
    ) -> tuple[Mapping[str, Any], bytes] | None:
        """On fsspec's loop: one ranged GET of the object's first ``length`` bytes, whose
        reply carries what a HEAD's does (size, ETag, LastModified, the metadata) of the
        very version read. None when the GET fails other than for a missing object (416:
        empty now): the HEAD that follows meets anything else too."""
        bucket, key, _ = self.fs.split_path(full)
        try:
            reply = await self.fs._call_s3("get_object", Bucket=bucket, Key=key,
                                           Range=f"bytes=0-{length - 1}")
        except FileNotFoundError:
            raise
        except OSError as e:
            log.debug("GET of %r for its status failed (%r): a HEAD instead", full, e)
            return None
        body = reply["Body"]
        try:
            return reply, await body.read()
        finally:
            body.close()

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
            return self._reported(self._s3_stat(path, full))
        return self._reported(status_from_info(path.rpartition("/")[2], self.fs.info(full)))

    def _s3_stat(self, path: str, full: str) -> FileStatus:
        """The status with what the object's metadata keeps (mode, owner, times): a HEAD
        of the object (one request, as ``info`` costs), else of the directory's marker
        ``dir/``, else a directory made of a prefix alone (a listing of one key)."""
        name = path.rpartition("/")[2]
        bucket, key, _ = self.fs.split_path(full)
        if not key:  # the bucket itself
            return status_from_info(name, self.fs.info(full))
        head = self._s3_head(bucket, key)
        if head is not None:
            info = {"type": "file", "size": head.get("ContentLength"), "ETag": head.get("ETag"),
                    "LastModified": head.get("LastModified")}
            return self._with_metadata(status_from_info(name, info), head.get("Metadata") or {})
        head = self._s3_head(bucket, key + "/")
        if head is not None:
            return self._with_metadata(FileStatus(name, Kind.DIRECTORY),
                                       head.get("Metadata") or {})
        out = self.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key + "/", Delimiter="/",
                              MaxKeys=1)
        if out.get("KeyCount") or out.get("Contents") or out.get("CommonPrefixes"):
            return FileStatus(name, Kind.DIRECTORY)
        raise NotFound(f"{path!r} does not exist")

    def _with_metadata(self, status: FileStatus, metadata: Mapping[str, str]) -> FileStatus:
        return with_metadata(status, metadata) if self._metadata else status

    def _s3_head(self, bucket: str, key: str) -> Mapping[str, Any] | None:
        try:
            return dict(self.fs.call_s3("head_object", Bucket=bucket, Key=key))
        except FileNotFoundError:
            return None

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
                for n, start in zip(lengths, _starts(offset, lengths), strict=True)]
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
                for n, start in zip(want, _starts(offset, want), strict=True)]

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
        await self._call(self._move_sync, plan, within=deadline)

    async def symlink(self, path: str, target: str, owner: tuple[int, int] | None) -> FileStatus:
        raise NotSupported(f"{self.description} has no symbolic links")

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

    def _exists(self, full: str) -> bool:
        self.fs.invalidate_cache(full)
        return bool(self.fs.exists(full))

    # Only single-path fsspec calls below (info, ls, find, mkdir, rmdir, pipe_file,
    # cp_file, rm_file): the many-path ones (mv, copy, rm) expand glob characters, and
    # a file may well be called "*".

    def _mkdir_sync(self, path: str, mode: int, owner: tuple[int, int] | None) -> FileStatus:
        full = self.full_path(path)
        if self._exists(full):
            raise AlreadyExists(path)
        if self._s3:  # the marker keeps the mode and owner
            metadata = attrs_metadata(Kind.DIRECTORY, mode, owner, None) if self._metadata else {}
            self.fs.pipe_file(full + "/", b"", Metadata=metadata)
            self.fs.invalidate_cache(full)
        else:
            self._make_dir(full)
        return self._stat_sync(path)

    def _make_dir(self, full: str) -> None:
        if self._markers:
            self.fs.pipe_file(full + "/", b"")
        else:
            self.fs.mkdir(full, create_parents=False)
        self.fs.invalidate_cache(full)

    def _rmdir_sync(self, path: str) -> None:
        full = self.full_path(path)
        if self._list_sync(path):
            raise DirectoryNotEmpty(path)
        self._remove_dir(full)

    def _remove_dir(self, full: str) -> None:
        if self._markers:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(full + "/")
        else:
            self.fs.rmdir(full)
        self.fs.invalidate_cache(full)

    def _unlink_sync(self, path: str) -> None:
        full = self.full_path(path)
        self.fs.rm_file(full)
        self.fs.invalidate_cache(full)

    def _rename_plan(self, old: str, new: str, flags: int) -> _Rename:
        old_full, new_full = self.full_path(old), self.full_path(new)
        if flags & RENAME_NOREPLACE and self._exists(new_full):  # not atomic: documented
            raise AlreadyExists(new)
        self.fs.invalidate_cache(old_full)
        info = self.fs.info(old_full)
        if info.get("type") != "directory":
            move = _Move(old_full, new_full, False, int(info.get("size") or 0))
            return _Rename(old_full, new_full, False, [move])
        moves = self._tree_moves(old_full, new_full)
        return _Rename(old_full, new_full, True, moves, self._exists(new_full))

    def _move_sync(self, plan: _Rename) -> None:
        """A copy, then the removal of the old: a failure half-way leaves the old as it
        was (see ``_rename_dir``). A file's copy replaces the target whole."""
        if not plan.directory:
            self._copy_key(plan.moves[0])
            self.fs.rm_file(plan.old)
        else:
            self._rename_dir(plan)
        self.fs.invalidate_cache(plan.old)
        self.fs.invalidate_cache(plan.new)

    def _rename_dir(self, plan: _Rename) -> None:
        """Copy every key of the tree to its new key, then remove the old keys.

        On object stores the keys are the objects themselves, directory markers ``dir/``
        included (copied as the markers they are, never as files named ``dir``); a
        directory made of a prefix alone stays one. If a copy fails, the copies made so
        far are removed again: the old tree is as it was and no part of the new one is
        left. Once every copy is in, the old keys are removed (children before their
        directories); should one of those removals fail, the new tree is whole and the
        rest of the old one is still removed before the error is raised.
        """
        made: builtins.list[tuple[str, bool]] = []
        try:
            for move in plan.moves:
                if move.directory:  # stores with real directories: made, not copied
                    if move.target == plan.new and plan.replaced:
                        continue
                    self._make_dir(move.target)
                else:
                    self._copy_key(move)
                made.append((move.target, move.directory))
        except BaseException:
            self._remove_keys(list(reversed(made)))
            if plan.replaced and self._markers and not self._exists(plan.new):
                self._make_dir(plan.new)  # its marker was copied over, then removed
            raise
        self._remove_keys([(move.source, move.directory) for move in reversed(plan.moves)],
                          strict=True)

    def _tree_moves(self, old_full: str, new_full: str) -> builtins.list[_Move]:
        """Every key of the tree at ``old_full`` and its new key, parents first."""
        tree = self.fs.find(old_full, withdirs=not self._markers, detail=True)
        moves = [
            _Move(str(name).rstrip("/") if not self._markers else str(name), "",
                  info.get("type") == "directory", int(info.get("size") or 0))
            for name, info in tree.items()
            # Object stores: every object under the prefix, markers "d/", "d/sub/" too.
            if (str(name).startswith(old_full + "/") if self._markers
                else str(name).rstrip("/") != old_full)
        ]
        if not self._markers:
            moves.append(_Move(old_full, "", True, 0))
        return sorted(move._replace(target=new_full + move.source[len(old_full):])
                      for move in moves)

    def _copy_key(self, move: _Move) -> None:
        """Copy one object (or file) to its new key exactly, a marker ``dir/`` included,
        with its metadata (S3)."""
        source, target = move.source, move.target
        if self._s3:
            # Not fsspec's cp_file alone: it drops a path's trailing slash (copying
            # "d/sub" for the marker "d/sub/"), and copies large objects in parts
            # without their metadata unless told it. One CopyObject keeps both.
            bucket, key, _ = self.fs.split_path(source)
            new_bucket, new_key, _ = self.fs.split_path(target)
            if move.size <= _COPY_MAX:
                self.fs.call_s3("copy_object", Bucket=new_bucket, Key=new_key,
                                CopySource={"Bucket": bucket, "Key": key})
            else:  # in parts, told the metadata and headers
                self.fs.cp_file(source, target, **kept_headers(self._s3_head(bucket, key) or {}))
        elif not source.endswith("/"):
            self.fs.cp_file(source, target)
        else:
            self.fs.pipe_file(target, b"")
        self.fs.invalidate_cache(target.rstrip("/"))

    def _remove_keys(
        self, keys: Sequence[tuple[str, bool]], *, strict: bool = False,
    ) -> None:
        """Remove each key, a directory's (a marker ``dir/``, or one a store has of its
        own: the plan says which) as an empty directory; go on past failures and raise
        the first at the end with ``strict``, else only log them."""
        first: BaseException | None = None
        for key, directory in keys:
            try:
                if key.endswith("/") or directory:
                    self._remove_dir(key.rstrip("/"))
                else:
                    self.fs.rm_file(key)
            except Exception as e:  # the others are still removed
                log.warning("rename: cannot remove %r: %r", key, e)
                first = first or e
            self.fs.invalidate_cache(key.rstrip("/"))
        if strict and first is not None:
            raise first

    def _s3_setattr(self, path: str, attrs: Attrs) -> FileStatus:
        """Rewrite the object's metadata in place (a copy onto itself that replaces the
        metadata, keeping the content and its headers); a directory's is its marker's,
        made if it had none (a directory made of a prefix alone)."""
        full = self.full_path(path)
        bucket, key, _ = self.fs.split_path(full)
        if not key:
            raise NotSupported(f"the bucket {bucket!r} itself keeps no modes, owners or times")
        kind, head = Kind.FILE, self._s3_head(bucket, key)
        if head is None:
            kind, key = Kind.DIRECTORY, key + "/"
            head = self._s3_head(bucket, key)
        if head is None and not self.fs.isdir(full):
            raise NotFound(f"{path!r} does not exist")
        metadata = dict((head or {}).get("Metadata") or {})
        metadata.update(attrs_metadata(kind, attrs.mode, None, attrs.mtime_ns, attrs.atime_ns))
        if attrs.uid is not None:
            metadata[META_UID] = str(attrs.uid)
        if attrs.gid is not None:
            metadata[META_GID] = str(attrs.gid)
        if head is None:  # a directory without a marker: it gets one
            self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"", Metadata=metadata)
        else:
            copy = {**kept_headers(head), "Metadata": metadata, "MetadataDirective": "REPLACE"}
            if kind is Kind.FILE:  # cp_file copies large objects in parts
                self.fs.cp_file(full, full, **copy)
            else:  # fsspec would drop the marker's trailing slash
                self.fs.call_s3("copy_object", Bucket=bucket, Key=key,
                                CopySource={"Bucket": bucket, "Key": key}, **copy)
        self.fs.invalidate_cache(full)
        return self._stat_sync(path)

    def _commit_sync(
        self, path: str, staged: str, metadata: Mapping[str, str], ticket: int,
    ) -> FileStatus:
        """Write with ``autocommit=False``: nothing is published until ``commit()`` (S3:
        the multipart upload is completed only then), and ``discard()`` on any failure
        (S3: aborted), so a failed upload never leaves part of a file behind; nor does one
        that a newer commit of ``path`` began after (``ticket``) while it ran late. On S3
        the object carries ``metadata`` (mode, owner, times)."""
        full = self.full_path(path)
        if metadata and os.path.getsize(staged) == 0:
            # s3fs publishes an empty file by a touch that drops the metadata: one PUT.
            bucket, key, _ = self.fs.split_path(full)
            with self._fence.publishing(path, ticket):
                self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"",
                                Metadata=metadata)
            return self._stat_sync(path)
        extra = {"Metadata": metadata} if metadata else {}
        with open(staged, "rb") as src:
            dst = self.fs.open(full, "wb", block_size=self.part_size, autocommit=False, **extra)
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


class LocalUfs(UfsBackend):
    """A local directory, read with ``os`` directly: the embedded default's fast path.

    Every path is resolved relative to a descriptor of the root opened at start-up, so the
    mount keeps serving that directory (like a bind mount) even if its path is later
    renamed or replaced. Reads check the file's size and mtime after ``pread`` on the same
    descriptor, so a page is never taken from a different version of the file than the
    one opened. What the kernel has cached is answered on the event loop, without a
    worker thread (:mod:`alluxiofuse.backends.local_probes`).
    """

    def __init__(
        self, root: str, limiter: trio.CapacityLimiter, timeout: float, *, description: str,
        mtime_unit_ns: int = 1,
    ) -> None:
        super().__init__(None, root, limiter, timeout, description=description,
                         mtime_unit_ns=mtime_unit_ns)
        self.warms = False  # True once the cache-only probes can answer the reads
        self._root_fd: int | None = None
        self._root_error: OSError | None = None
        self._probes: CacheProbes | None = None
        try:
            self._root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:  # reported by the first call: check_source's stat of the root
            self._root_error = e
            return
        self._probes = CacheProbes.for_root(root)
        self.warms = self._probes is not None

    def uri(self, path: str) -> str:
        return f"file://{self.full_path(path)}"

    async def aclose(self) -> None:
        if self._probes is not None:
            self._probes.close()
            self._probes = None
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

    def stat_nowait(self, path: str) -> FileStatus | None:
        if self._probes is None or not path:
            return None
        try:
            st = self._probes.lstat(path)
        except FileNotFoundError:
            raise NotFound(path) from None
        if st is None:
            return None
        status = status_from_stat(path.rpartition("/")[2], st)
        if status is None:
            raise NotFound(f"{path!r} is a special file, which is not served")
        return self._reported(status)

    async def warm(self, reads: Sequence[tuple[str, int, int, Version]]) -> None:
        """``POSIX_FADV_WILLNEED`` for each range, in one worker job: the kernel reads
        them in the background, and ``read_nowait`` then finds them cached. Cheaper than
        reading them here: no copy into Python, three system calls per file instead of
        five (10,000 small files: worker threads 0.4 s of CPU instead of 1.1 s)."""
        try:
            await self._call(self._warm_sync, reads)
        except AlluxioFuseError as e:  # only a hint: the reads report real failures
            log.debug("warming %d files failed: %s", len(reads), e)

    def _warm_sync(self, reads: Sequence[tuple[str, int, int, Version]]) -> None:
        for path, offset, length, _ in reads:
            try:
                fd = self._open(path)
            except OSError:
                continue
            try:
                with contextlib.suppress(OSError):  # only a hint
                    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def read_nowait(self, path: str, offset: int, length: int, version: Version) -> bytes | None:
        if self._probes is None:
            return None
        try:
            got = self._probes.pread(path, offset, max(0, min(length, version.size - offset)))
        except FileNotFoundError:
            raise StaleFile(f"{path} was removed while open") from None
        if got is None:
            return None
        data, st = got
        if st.st_size != version.size or not self._same_mtime(st.st_mtime_ns, version):
            raise StaleFile(f"{path} changed while open")
        return data

    def _root(self) -> int:
        if self._root_fd is None:
            raise self._root_error or FileNotFoundError(errno.ENOENT, "closed", self.root)
        return self._root_fd

    def _stat_sync(self, path: str) -> FileStatus:
        if path:
            with self._at(path) as (fd, name):
                st = os.lstat(name, dir_fd=fd)
        elif self._root_fd is not None:
            st = os.fstat(self._root_fd)
        else:  # say what is there instead (nothing, a file) rather than why it cannot open
            st = os.stat(self.root)
            if statmod.S_ISDIR(st.st_mode):
                self._root()
        status = status_from_stat(path.rpartition("/")[2], st)
        if status is None:  # hidden from listings too
            raise NotFound(f"{path!r} is a special file, which is not served")
        return self._reported(status)

    def _list_sync(self, path: str) -> Listing:
        """The listing, made straight from the stat results into columns (no status object
        per entry: a directory of 100,000 files spent a third of its listing making them,
        and a tenth of the memory it kept was what they had left behind). One call
        for the whole directory: in pages of a few thousand entries, each a worker-thread
        call, the entries listed first reached the kernel sooner, but ``ls -l`` of 100,000
        took 3% longer, and the pages were kept beside the whole listing."""
        columns = Columns()
        unit = self.mtime_unit_ns
        with self._at(path) as (at, name):
            fd = os.open(name or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=at)
        try:
            with os.scandir(fd) as it:  # reads a duplicate of fd
                for entry in it:
                    if is_temp_name(entry.name):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # removed while listing
                        continue
                    kind = _KIND_OF_TYPE.get(statmod.S_IFMT(st.st_mode))
                    if kind is None:  # sockets, FIFOs and devices are not served
                        continue
                    columns.add(entry.name, kind, st.st_size,
                                st.st_mtime_ns - st.st_mtime_ns % unit, st.st_ctime_ns,
                                st.st_atime_ns, statmod.S_IMODE(st.st_mode), st.st_uid,
                                st.st_gid, st.st_nlink, st.st_blocks, None)
        finally:
            os.close(fd)
        return Listing.from_columns(columns)

    def _read_sync(self, path: str, offset: int, length: int, version: Version) -> bytes:
        fd = self._open(path)
        try:
            return self._read_fd(fd, path, offset, length, version)
        finally:
            os.close(fd)

    def _open(self, path: str) -> int:
        with self._at(path) as (fd, name):
            return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)

    @contextlib.contextmanager
    def _at(self, path: str, *, room: int = 0) -> Iterator[tuple[int, str]]:
        """``path`` as a directory descriptor and a name relative to it that one system
        call takes, for the ``*at`` calls (``dir_fd=``).

        Almost every path fits in one call as it is, relative to the root descriptor: that
        is the hot path, with no extra call. PATH_MAX counts from the mount's root here,
        not from the caller's directory as on the mount, so a deep tree that a caller
        reaches with relative paths can be longer: its parent directory is then opened
        first (``_open_dir``), and the name is relative to that. ``room`` bytes more must
        fit too (a commit's temporary name beside ``path``).
        """
        root = self._root()
        # A character takes at most 4 bytes: the encoding is needed only near the limit.
        if (len(path) * 4 + room < _PATH_MAX
                or len(os.fsencode(path)) + room < _PATH_MAX):
            yield root, path
            return
        parent, _, name = path.rpartition("/")
        fd = self._open_dir(parent)
        try:
            yield fd, name
        finally:
            if fd != root:
                os.close(fd)

    def _open_dir(self, path: str) -> int:
        """A descriptor of directory ``path`` (the root's own for ""), opened a piece of
        up to PATH_MAX bytes at a time, each piece from the last one's descriptor. Each
        piece resolves as a whole path would in one call, so a long path means what a
        short one does; only the last component of a piece must not be a symbolic link."""
        root = fd = self._root()
        try:
            for piece in _pieces(os.fsencode(path)):
                opened = os.open(piece, _WALK_FLAGS, dir_fd=fd)
                if fd != root:
                    os.close(fd)
                fd = opened
        except BaseException:
            if fd != root:
                os.close(fd)
            raise
        return fd

    def _read_fd(self, fd: int, path: str, offset: int, length: int, version: Version) -> bytes:
        data = pread_all(fd, length, offset)
        st = os.fstat(fd)
        if st.st_size != version.size or not self._same_mtime(st.st_mtime_ns, version):
            raise StaleFile(f"{path} changed while open")
        return data

    async def read_many(
        self, reads: Sequence[tuple[str, int, int, Version]],
    ) -> builtins.list[Data | AlluxioFuseError]:
        """Reads in worker-thread jobs of a few each: locally the hand-off to a thread
        costs more than reading a small file, so a job pays it once for several, and the
        jobs run side by side so that the disk's latencies overlap."""
        chunks = [reads[i:i + _READS_PER_JOB] for i in range(0, len(reads), _READS_PER_JOB)]
        results: builtins.list[Sequence[bytes | AlluxioFuseError]] = [()] * len(chunks)

        async def job(i: int) -> None:
            results[i] = await self._call(self._read_many_sync, chunks[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(chunks)):
                nursery.start_soon(job, i)
        return [result for chunk in results for result in chunk]

    def _read_many_sync(
        self, reads: Sequence[tuple[str, int, int, Version]],
    ) -> builtins.list[bytes | AlluxioFuseError]:
        """Open every file and tell the kernel which ranges follow, then read them: the
        disk works on all of them at once instead of one after another."""
        opened: builtins.list[int | AlluxioFuseError] = []
        try:
            for path, offset, length, _ in reads:
                try:
                    fd = self._open(path)
                except OSError as e:
                    opened.append(self._read_error(path, e))
                    continue
                opened.append(fd)
                with contextlib.suppress(OSError):  # only a hint
                    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
            return [self._read_opened(item, *read)
                    for item, read in zip(opened, reads, strict=True)]
        finally:
            for item in opened:
                if isinstance(item, int):
                    os.close(item)

    def _read_opened(
        self, opened: int | AlluxioFuseError, path: str, offset: int, length: int,
        version: Version,
    ) -> bytes | AlluxioFuseError:
        if not isinstance(opened, int):
            return opened
        try:
            return self._read_fd(opened, path, offset, length, version)
        except OSError as e:
            return self._read_error(path, e)
        except AlluxioFuseError as e:
            return e

    @staticmethod
    def _read_error(path: str, e: OSError) -> AlluxioFuseError:
        if isinstance(e, FileNotFoundError):
            return StaleFile(f"{path} was removed while open")
        return from_oserror(e)

    async def readlink(self, path: str) -> str:
        def readlink() -> str:
            with self._at(path) as (fd, name):
                return os.readlink(name, dir_fd=fd)
        return await self._call(readlink)

    # -- changes: the local system calls, relative to the root descriptor

    writes = WriteSupport(modes=True, owners=True, times=True, symlinks=True,
                          rename_noreplace=True, rename_exchange=True, needs_parent=True)

    async def mkdir(self, path: str, mode: int, owner: tuple[int, int] | None) -> FileStatus:
        def mkdir() -> FileStatus:
            with self._at(path) as (fd, name):
                os.mkdir(name, mode, dir_fd=fd)
            self._give(path, owner)
            status = self._stat_sync(path)
            made = status.mode if status.mode is not None else mode
            if made & 0o777 != mode & 0o777:
                # mkdir(2) took the daemon's umask away as well, but the kernel had applied
                # the caller's already: the mode asked for is final. (A set-group-ID bit
                # inherited from the parent stays.)
                return self._setattr_sync(path, Attrs(mode=made & ~0o777 | mode & 0o777))
            return status
        return await self._call(mkdir)

    async def rmdir(self, path: str) -> None:
        def rmdir() -> None:
            with self._at(path) as (fd, name):
                os.rmdir(name, dir_fd=fd)
        await self._call(rmdir)

    async def unlink(self, path: str) -> None:
        def unlink() -> None:
            with self._at(path) as (fd, name):
                os.unlink(name, dir_fd=fd)
        await self._call(unlink)

    async def rename(self, old: str, new: str, flags: int) -> None:
        await self._call(self._rename_sync, old, new, flags)

    async def symlink(self, path: str, target: str, owner: tuple[int, int] | None) -> FileStatus:
        def symlink() -> FileStatus:
            with self._at(path) as (fd, name):
                os.symlink(target, name, dir_fd=fd)
            self._give(path, owner)
            return self._stat_sync(path)
        return await self._call(symlink)

    async def setattr(self, path: str, attrs: Attrs) -> FileStatus:
        return await self._call(self._setattr_sync, path, attrs)

    async def commit(
        self, path: str, staged: str, *, mode: int | None = None,
        owner: tuple[int, int] | None = None, mtime_ns: int | None = None,
        durable: bool = True, size: int = 0,
    ) -> Commit:
        """Put ``staged`` beside ``path`` under a temporary name (a hard link when the
        spool is on the same file system: no copy; else a copy in the kernel), give it
        ``mode``, ``owner`` and ``mtime_ns``, and rename it over ``path``: ``path`` is the
        old content or the new, never a mix. With ``durable``, the file is fsynced first
        and the directory after, so that this holds across a crash too."""
        ticket = self._fence.begin(path)
        return await self._call(self._fenced, path, ticket, self._commit_local, path, staged,
                                mode, owner, mtime_ns, durable, ticket,
                                within=self._commit_deadline(size))

    async def sync(self, path: str) -> None:
        def sync() -> None:
            fd = self._open(path)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            with self._at(path) as (at, name):
                _fsync_dir(name.rpartition("/")[0] or ".", at)
        await self._call(sync)

    def _commit_local(
        self, path: str, staged: str, mode: int | None, owner: tuple[int, int] | None,
        mtime_ns: int | None, durable: bool, ticket: int,
    ) -> Commit:
        with self._at(path, room=NAME_MAX) as (at, name):
            return self._commit_at(at, name, path, staged, mode, owner, mtime_ns, durable,
                                   ticket)

    def _commit_at(
        self, root: int, name: str, path: str, staged: str, mode: int | None,
        owner: tuple[int, int] | None, mtime_ns: int | None, durable: bool, ticket: int,
    ) -> Commit:
        """``_commit_local`` with ``path`` named ``name`` relative to ``root`` (``_at``)."""
        parent, _, _ = name.rpartition("/")
        leaf = temp_name()
        temp = f"{parent}/{leaf}" if parent else leaf
        src = os.open(staged, os.O_RDWR | os.O_CLOEXEC)
        # The note names the temporary file from the source's root (``temp`` is relative
        # to ``root``, which is a directory below it when ``path`` is long).
        path_parent = path.rpartition("/")[0]
        note = self._note_commit(f"{path_parent}/{leaf}" if path_parent else leaf)
        try:
            linked = self._link_or_copy(staged, src, temp, root)
            dst = src if linked else os.open(temp, os.O_WRONLY | os.O_CLOEXEC, dir_fd=root)
            try:
                if mode is not None:
                    os.fchmod(dst, mode)
                if owner is not None and os.geteuid() == 0:
                    os.fchown(dst, *owner)
                if mtime_ns is not None:
                    os.utime(dst, ns=(mtime_ns, mtime_ns))
                if durable:
                    os.fsync(dst)
            finally:
                if dst != src:
                    os.close(dst)
            with self._fence.publishing(path, ticket):  # never over a newer commit
                os.rename(temp, name, src_dir_fd=root, dst_dir_fd=root)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=root)
            raise
        finally:
            os.close(src)
            if note is not None:
                with contextlib.suppress(OSError):
                    os.unlink(note)
        if durable:
            _fsync_dir(parent or ".", root)
        return Commit(self._stat_sync(path), linked)

    def note_commits(self, directory: str) -> builtins.list[str]:
        removed = []
        for name in os.listdir(directory):
            note = os.path.join(directory, name)
            try:
                if is_temp_name(name):
                    with open(note, "rb") as f:
                        temp = os.fsdecode(f.read())
                    # Only the file the note names, carrying this project's temporary name.
                    if temp.rpartition("/")[2] == name:
                        with (contextlib.suppress(FileNotFoundError),  # renamed into place
                              self._at(temp) as (at, leaf)):
                            os.unlink(leaf, dir_fd=at)
                            removed.append(temp)
                            log.info("removed %s, the temporary file of a commit that a "
                                     "crash interrupted", self.full_path(temp))
                os.unlink(note)
            except OSError as e:  # the note stays: tried again at the next mount
                log.warning("cannot remove the temporary file that %s names, left by a "
                            "crash: %s", note, e.strerror)
        self._commit_notes = directory
        return removed

    def _note_commit(self, temp: str) -> str | None:
        """Name ``temp`` in the spool while it may exist, so that after a crash the next
        daemon removes it (``note_commits``); the note's path. Best effort: a note that
        cannot be written costs only that tidying."""
        if self._commit_notes is None:
            return None
        note = os.path.join(self._commit_notes, temp.rpartition("/")[2])
        try:
            # A note cut short names no file of that name: the next daemon just drops it.
            with open(note, "xb") as f:
                f.write(os.fsencode(temp))
        except OSError as e:
            log.debug("cannot note the commit of %s in the spool: %s", temp, e)
            return None
        return note

    def _link_or_copy(self, staged: str, src: int, temp: str, root: int) -> bool:
        """Make ``temp`` (relative to ``root``) hold ``staged``'s bytes: a hard link (True)
        or a copy (False)."""
        try:
            os.link(staged, temp, dst_dir_fd=root)
            return True
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
        dst = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                      dir_fd=root)
        try:
            _copy_all(src, dst, os.fstat(src).st_size)
        finally:
            os.close(dst)
        return False

    def _give(self, path: str, owner: tuple[int, int] | None) -> None:
        """A new entry belongs to whoever made it (the daemon can say so only as root)."""
        if owner is not None and os.geteuid() == 0:
            with self._at(path) as (fd, name):
                os.chown(name, *owner, dir_fd=fd, follow_symlinks=False)

    def _rename_sync(self, old: str, new: str, flags: int) -> None:
        with self._at(old) as (old_at, old_name), self._at(new) as (new_at, new_name):
            if not flags:
                os.rename(old_name, new_name, src_dir_fd=old_at, dst_dir_fd=new_at)
                return
            if _renameat2(old_at, os.fsencode(old_name), new_at, os.fsencode(new_name),
                          flags) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code), old)

    def _setattr_sync(self, path: str, attrs: Attrs) -> FileStatus:
        with self._at(path) as (fd, name):
            if attrs.mode is not None:
                os.chmod(name, attrs.mode, dir_fd=fd)
            if attrs.uid is not None or attrs.gid is not None:
                os.chown(name, -1 if attrs.uid is None else attrs.uid,
                         -1 if attrs.gid is None else attrs.gid, dir_fd=fd,
                         follow_symlinks=False)
            if attrs.atime_ns is not None or attrs.mtime_ns is not None:
                st = os.lstat(name, dir_fd=fd)
                times = (st.st_atime_ns if attrs.atime_ns is None else attrs.atime_ns,
                         st.st_mtime_ns if attrs.mtime_ns is None else attrs.mtime_ns)
                os.utime(name, ns=times, dir_fd=fd, follow_symlinks=False)
        return self._stat_sync(path)

    async def statfs(self) -> FsStats:
        st = await self._call(lambda: os.statvfs(self._root()))
        return FsStats(
            block_size=st.f_frsize, blocks=st.f_blocks, blocks_free=st.f_bfree,
            blocks_avail=st.f_bavail, files=st.f_files, files_free=st.f_ffree,
            name_max=st.f_namemax,
        )


def _starts(offset: int, lengths: Sequence[int]) -> Iterator[int]:
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


def pread_all(fd: int, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""
    chunks = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _copy_all(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes from the start of ``src`` to ``dst``, inside the kernel."""
    offset = 0
    while offset < size:
        copied = os.copy_file_range(src, dst, size - offset, offset, offset)
        if copied == 0:
            raise OSError(errno.EIO, f"staged file ended at {offset} of {size} bytes")
        offset += copied


def _path_room(root: str) -> int:
    """The longest path an object store keeps below ``root`` (``bucket/prefix``): a key is
    the prefix, a slash and the path, and a directory's marker ends in one more slash."""
    prefix = root.partition("/")[2]
    return _KEY_MAX - (len(prefix.encode("utf-8")) + 1 if prefix else 0) - 1


def _pieces(path: bytes) -> builtins.list[bytes]:
    """``path`` cut at slashes into pieces that each fit in one system call."""
    pieces: builtins.list[bytes] = []
    for component in path.split(b"/"):
        if pieces and len(pieces[-1]) + 1 + len(component) < _PATH_MAX:
            pieces[-1] += b"/" + component
        else:
            pieces.append(component)
    return [piece for piece in pieces if piece]


def _fsync_dir(path: str, dir_fd: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_renameat2() -> Callable[[int, bytes, int, bytes, int], int]:
    """renameat2(2) from libc (glibc 2.28+), for RENAME_NOREPLACE and RENAME_EXCHANGE."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        def missing(*_: object) -> int:
            ctypes.set_errno(errno.ENOSYS)
            return -1
        return missing
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


# The kind code (listing.kind_code) of each file type served; others are not.
_KIND_OF_TYPE = {statmod.S_IFDIR: kind_code(Kind.DIRECTORY), statmod.S_IFREG: kind_code(Kind.FILE),
                 statmod.S_IFLNK: kind_code(Kind.SYMLINK)}


def status_from_stat(name: str, st: os.stat_result) -> FileStatus | None:
    """A local ``stat`` result as a status; ``None`` for sockets, FIFOs and devices."""
    if statmod.S_ISDIR(st.st_mode):
        kind = Kind.DIRECTORY
    elif statmod.S_ISREG(st.st_mode):
        kind = Kind.FILE
    elif statmod.S_ISLNK(st.st_mode):
        kind = Kind.SYMLINK
    else:
        return None
    return FileStatus(
        name=name, kind=kind, size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns,
        atime_ns=st.st_atime_ns, mode=statmod.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        nlink=st.st_nlink, blocks=st.st_blocks,
    )

