"""An ``ais://BUCKET[/PREFIX]`` source: an AIStore bucket through its native API.

It is an object store like S3 to the mount (``ufs.py``: directories as prefixes and
``dir/`` markers, renames made of copies, no modes or owners kept), with AIStore's own
requests where they do better than fsspec's portable calls:

- listings: a page of up to 10,000 entries per request with every property a status
  needs (size, version, checksum, access time), directories included, each page under
  its own deadline;
- reads: one ranged GET per read-ahead run, to the target that holds the object; the
  target's reply names the version it sent, so no HEAD checks a read. A read of a whole
  object is checked against the checksum the target sends with it (xxhash, md5, sha256,
  sha512): a mismatch is read once more, then EIO, never wrong bytes;
- commits: one PUT of the whole file with its XXH64 checksum, which the target verifies
  before it publishes the object (a PUT is published whole or not at all, so large
  files need no multipart upload; the price is that a failed upload starts over);
- prefetch and evict of a prefix (``alluxiofuse load`` / ``free``), and the target that
  holds an object (``alluxiofuse locate``).

A file's version is its AIStore version (its checksum in a bucket that keeps none). Its
atime is AIStore's access time; its mtime is the mount's start (``status_of`` says why).
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any

import cachetools
import trio
import xxhash

from alluxiofuse.backends.ais.client import AisClient, Bucket, JobStatus, ObjectProps
from alluxiofuse.backends.ais.placement import Target
from alluxiofuse.backends.ais.store import AisStore, children, entry_info, etag, file_info
from alluxiofuse.backends.ufs import UfsBackend, range_starts
from alluxiofuse.errors import ConfigError, ContentMismatch, InvalidArgument, StaleFile
from alluxiofuse.model import Data, FileStatus, Kind, Version

log = logging.getLogger(__name__)

# How long an object that failed its checksum twice is answered EIO without reading it.
_CORRUPT_TTL = 60.0
# --ufs-option keys of an ais:// source.
_OPTIONS = ("endpoint", "provider", "token", "direct")
# Checksum types whose values a read can check (AIStore's cmn/cos/cksum.go): "xxhash" and
# "xxhash2" are both XXH64 with seed 0, in hex.
_CHECKS: dict[str, Callable[[bytes], str]] = {
    "xxhash": xxhash.xxh64_hexdigest,
    "xxhash2": xxhash.xxh64_hexdigest,
    "md5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    "sha256": lambda data: hashlib.sha256(data).hexdigest(),
    "sha512": lambda data: hashlib.sha512(data).hexdigest(),
}


def open_ais(
    source: str, options: Mapping[str, Any], limiter: trio.CapacityLimiter, timeout: float, *,
    part_size: int = 16 * 1024 * 1024,
) -> AisBackend:
    """The backend of ``ais://BUCKET[/PREFIX]``. The cluster's endpoint is the ``endpoint``
    option, else ``$AIS_ENDPOINT`` (as the AIStore SDK and CLI read it)."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown --ufs-option for an ais:// source: {', '.join(unknown)} "
                          f"(known: {', '.join(_OPTIONS)})")
    rest = source.partition("://")[2].strip("/")
    bucket, _, prefix = rest.partition("/")
    if not bucket or bucket.startswith("@"):
        raise ConfigError(f"{source!r}: give a bucket, as ais://BUCKET[/PREFIX] (a remote "
                          "provider's bucket: --ufs-option provider=aws|gcp|azure|oci)")
    endpoint = str(options.get("endpoint") or os.environ.get("AIS_ENDPOINT") or "")
    if not endpoint:
        raise ConfigError(f"{source}: no AIStore endpoint: --ufs-option endpoint=http://PROXY:PORT "
                          "or AIS_ENDPOINT")
    direct = options.get("direct", True)
    if isinstance(direct, str):
        if direct.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"--ufs-option direct={direct!r}: true or false")
        direct = direct.lower() in ("true", "1", "yes")
    token = options.get("token") or os.environ.get("AIS_AUTHN_TOKEN") or None
    try:
        client = AisClient(endpoint, timeout=timeout, token=token, direct=bool(direct))
    except InvalidArgument as e:
        raise ConfigError(str(e)) from None
    store = AisStore(client, str(options.get("provider") or "ais"))
    root = f"{bucket}/{prefix}".rstrip("/")
    return AisBackend(store, root, limiter, timeout, description=source, part_size=part_size)


class AisBackend(UfsBackend):
    """A bucket (or a prefix of one) of an AIStore cluster."""

    list_page_keys = 10000  # AIStore's largest page (a remote bucket's backend may give fewer)

    def __init__(self, store: AisStore, root: str, limiter: trio.CapacityLimiter,
                 timeout: float, *, description: str, part_size: int) -> None:
        super().__init__(store, root, limiter, timeout, description=description,
                         part_size=part_size, object_metadata=False)
        self.store = store
        self.client = store.client
        # Objects read twice with a checksum mismatch, by version: answered EIO at once.
        # Read in worker threads, so under a lock.
        self._corrupt: cachetools.TTLCache[tuple[str, Version], bool] = cachetools.TTLCache(
            maxsize=1024, ttl=_CORRUPT_TTL)
        self._corrupt_lock = threading.Lock()

    def _where(self, path: str) -> tuple[Bucket, str]:
        return self.store.bucket(self.full_path(path))

    # -- statuses

    def _stat_sync(self, path: str) -> FileStatus:
        info = self.store.info(self.full_path(path))
        return status_of(path.rpartition("/")[2], info)

    def _listed(self, entries: builtins.list[FileStatus], path: str, name: str,
                info: Mapping[str, Any]) -> None:
        before = len(entries)
        super()._listed(entries, path, name, info)  # drops names no file could have
        if len(entries) > before:
            entries[-1] = status_of(entries[-1].name, info)

    async def list_pages(self, path: str) -> AsyncGenerator[Sequence[FileStatus], None]:
        """The listing, one AIStore page per call, each under its own deadline."""
        bucket, key = self._where(path)
        prefix = key.rstrip("/") + "/" if key else ""
        token = uuid = ""
        first = True
        while first or token:
            page = await self._call(functools.partial(
                self.client.list_page, bucket, prefix, token=token, uuid=uuid,
                page_size=self.list_page_keys))
            if first and not page.entries and key:
                await self.stat(path)  # NotFound unless it is an empty directory
            first, token, uuid = False, page.token, page.uuid
            entries: builtins.list[FileStatus] = []
            for name, entry in children(page.entries, prefix).items():
                self._listed(entries, path, name, entry_info(name, entry))
            yield entries

    # -- reads

    def _read_run_sync(
        self, path: str, offset: int, lengths: Sequence[int], version: Version,
    ) -> builtins.list[Data]:
        """The ranges of ``lengths`` bytes from ``offset`` in one GET; the target's
        headers name the version sent, which must be ``version``. A whole object is
        checked against its checksum."""
        bucket, key = self._where(path)
        want = [max(0, min(n, version.size - start))
                for n, start in zip(lengths, range_starts(offset, lengths), strict=True)]
        expected = sum(want)
        if not expected:
            return [b""] * len(lengths)
        data = self._get_checked(path, bucket, key, offset, expected, version)
        if len(want) == 1:
            return [data]
        return [data[start - offset:start - offset + n]
                for n, start in zip(want, range_starts(offset, want), strict=True)]

    def _get_checked(self, path: str, bucket: Bucket, key: str, offset: int, length: int,
                     version: Version) -> bytes:
        known_bad = (path, version)
        with self._corrupt_lock:
            corrupt = known_bad in self._corrupt
        if corrupt:  # a reader retrying costs no more GETs or log lines
            raise ContentMismatch(f"{path}: its bytes do not match their checksum")
        for attempt in (1, 2):
            data, props = self.client.get(bucket, key, offset, length)
            if (props.size != version.size or etag(props.version, props.checksum)
                    != version.etag or len(data) != length):
                raise StaleFile(f"{path} changed while open")
            if offset or length != props.size or _verified(data, props) is not False:
                return data
            if attempt == 1:
                log.warning("%s: the bytes read do not match their %s checksum %s; reading "
                            "them again", path, props.checksum_type, props.checksum)
        log.warning("%s: the bytes read twice do not match their %s checksum %s: EIO for "
                    "%gs, or until the object changes", path, props.checksum_type,
                    props.checksum, _CORRUPT_TTL)
        with self._corrupt_lock:
            self._corrupt[known_bad] = True
        raise ContentMismatch(f"{path}: the bytes read twice do not match their "
                              f"{props.checksum_type} checksum")

    async def stat_and_read(
        self, path: str, length: int, *, ahead: bool = False,
    ) -> tuple[FileStatus, Data] | None:
        """The status and first ``length`` bytes of ``path`` from one GET (a small file's
        open and read in one request)."""
        if length <= 0:
            return None
        return await self._call(self._stat_and_read_sync, path, length,
                                limiter=self._ahead if ahead else None)

    def _stat_and_read_sync(self, path: str, length: int) -> tuple[FileStatus, Data]:
        bucket, key = self._where(path)
        data, props = self.client.get(bucket, key, 0, length)
        name = path.rpartition("/")[2]
        status = status_of(name, file_info(f"{bucket.name}/{key}", props))
        with self._corrupt_lock:
            corrupt = (path, status.version) in self._corrupt
        if corrupt or (len(data) == props.size and _verified(data, props) is False):
            data = self._get_checked(path, bucket, key, 0, props.size, status.version)
        return status, data[:length]

    # -- changes

    def _commit_sync(
        self, path: str, staged: str, metadata: Mapping[str, str], ticket: int,
    ) -> FileStatus:
        """One PUT of ``staged`` with its XXH64, published by the target only whole and
        matching; only while no newer commit of ``path`` began (``ticket``)."""
        bucket, key = self._where(path)
        with open(staged, "rb") as body:
            digest = xxhash.xxh64()
            while chunk := body.read(1 << 20):
                digest.update(chunk)
            size = body.tell()
            body.seek(0)
            with self._fence.publishing(path, ticket):
                self.client.put(bucket, key, body, size,
                                checksum=("xxhash2", digest.hexdigest()))
        return self._stat_sync(path)

    # -- operator commands

    def locate(self, path: str) -> Target | None:
        """The target that holds ``path``'s object, by the cluster map."""
        bucket, key = self._where(path)
        return self.client.owner(bucket, key)

    def start_job(self, action: str, path: str) -> str:
        """Start prefetch ("prefetch-listrange") or evict ("evict-listrange") of the
        object ``path``, or of every object below the directory ``path``."""
        bucket, key = self._where(path)
        if self._stat_sync(path).is_dir:
            return self.client.start_job(action, bucket, prefix=key.rstrip("/") + "/" if key
                                         else "")
        return self.client.start_job(action, bucket, names=[key])

    def total_size(self, path: str) -> int:
        """The bytes of the object ``path``, or of every object below the directory."""
        status = self._stat_sync(path)
        if not status.is_dir:
            return status.size
        bucket, key = self._where(path)
        prefix = key.rstrip("/") + "/" if key else ""
        return sum(entry.size for page in self.store.pages(bucket, prefix, recursive=True)
                   for entry in page.entries)

    def job_status(self, job_id: str) -> JobStatus:
        return self.client.job_status(job_id)

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self.client.close)


def status_of(name: str, info: Mapping[str, Any]) -> FileStatus:
    """A status from an ``AisStore`` info dict. AIStore's access time is the atime; the
    mtime is left to the mount (its start): AIStore lists no modification time, and its
    access time, which every read moves, would make the kernel drop a file's cached pages
    each time it saw it move (every epoch of a training job). The version is AIStore's."""
    if info.get("type") == "directory":
        return FileStatus(name=name, kind=Kind.DIRECTORY)
    return FileStatus(name=name, kind=Kind.FILE, size=int(info.get("size") or 0),
                      atime_ns=info.get("atime_ns"), etag=info.get("ais_etag"))


def _verified(data: bytes, props: ObjectProps) -> bool | None:
    """Whether ``data``, the whole object, matches the checksum its target sent; None
    when there is none this can compute (none sent, or crc32c)."""
    check = _CHECKS.get(props.checksum_type)
    if check is None or not props.checksum:
        return None
    return bool(check(data) == props.checksum.lower())
