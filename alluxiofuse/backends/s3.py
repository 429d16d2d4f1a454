"""S3 requests that fsspec has no portable form for, on an s3fs filesystem: ranged GETs
that check the version they read, a status from a HEAD with what the object's metadata
keeps, and that metadata rewritten in place."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from alluxiofuse.backends.objects import (
    META_GID,
    META_UID,
    attrs_metadata,
    kept_headers,
    reported,
    status_from_info,
    with_metadata,
)
from alluxiofuse.errors import NotFound, NotSupported, ProtocolError, StaleFile
from alluxiofuse.model import Attrs, FileStatus, Kind, Version

log = logging.getLogger(__name__)

# Transport failures part-way through a reply that a read tries again after (s3fs retries
# the request itself, not the reading of its body).
_BODY_RETRIES = 2
# A ranged reply's range: its first and last byte, and the whole object's size.
_CONTENT_RANGE = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+)")
# What S3 answers a read of a version that is no longer there: If-Match refused (412), or
# a range past the end of a shorter object (416).
_CHANGED_CODES = frozenset({"PreconditionFailed", "InvalidRange"})


async def get_ranges(
    fs: Any, full: str, offset: int, lengths: Sequence[int], version: Version,
    mtime_unit_ns: int,
) -> list[bytes]:
    """On fsspec's loop: one ranged GET of ``version`` that checks the version itself.
    With the version's ETag it asks for that content alone (If-Match: a changed object
    is refused with 412, never sent); either way the reply's own size, ETag and
    modification time (in whole ``mtime_unit_ns``) must be the version's. The body is read
    page by page, each a buffer of its own (a page dropped frees its memory, not a
    neighbour's)."""
    bucket, key, _ = fs.split_path(full)
    total = sum(lengths)
    kwargs = {"Range": f"bytes={offset}-{offset + total - 1}"}
    if version.etag is not None:
        kwargs["IfMatch"] = version.etag
    for attempt in range(_BODY_RETRIES + 1):
        try:
            reply = await fs._call_s3("get_object", Bucket=bucket, Key=key, **kwargs)
        except OSError as e:
            # A StaleFile, not an OSError: passed on as it is, never retried.
            if isinstance(e, FileNotFoundError) or _s3_code(e) in _CHANGED_CODES:
                raise StaleFile(f"{full} changed while open") from e
            raise
        body = reply["Body"]
        try:
            _check_reply(full, offset, reply, version, mtime_unit_ns)
            return [await _read_exactly(body, n) for n in lengths]
        except _BodyFailed as e:
            if attempt == _BODY_RETRIES:
                raise ConnectionError(f"{full}: the reply broke off: {e}") from e
            log.debug("%s: the reply broke off (%s); asking again", full, e)
        finally:
            body.close()
    raise AssertionError("unreachable: the last attempt returns or raises")


def _check_reply(
    full: str, offset: int, reply: Mapping[str, Any], version: Version, mtime_unit_ns: int,
) -> None:
    """The reply to a ranged GET is of ``version``, from ``offset``."""
    match = _CONTENT_RANGE.fullmatch(str(reply.get("ContentRange") or ""))
    if match is None or int(match[1]) != offset:
        raise ProtocolError(f"{full}: a read at {offset} was answered with range "
                            f"{reply.get('ContentRange')!r}")
    info = {"size": int(match[3]), "ETag": reply.get("ETag"),
            "LastModified": reply.get("LastModified")}
    now = reported(status_from_info(full, info), mtime_unit_ns).version
    # The modification time is compared only where there is no ETag: listings may
    # carry it to the millisecond, the reply's header to the second.
    if now.size != version.size or (
            now.etag != version.etag if version.etag is not None else now != version):
        raise StaleFile(f"{full} changed while open")


async def get_start(fs: Any, full: str, length: int) -> tuple[Mapping[str, Any], bytes] | None:
    """On fsspec's loop: one ranged GET of the object's first ``length`` bytes, whose
    reply carries what a HEAD's does (size, ETag, LastModified, the metadata) of the
    very version read. None when the GET fails other than for a missing object (416:
    empty now): the HEAD that follows meets anything else too."""
    bucket, key, _ = fs.split_path(full)
    try:
        reply = await fs._call_s3("get_object", Bucket=bucket, Key=key,
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


def head(fs: Any, bucket: str, key: str) -> Mapping[str, Any] | None:
    """The HEAD of an object, None if there is none."""
    try:
        return dict(fs.call_s3("head_object", Bucket=bucket, Key=key))
    except FileNotFoundError:
        return None


def stat(fs: Any, path: str, full: str, *, metadata: bool) -> FileStatus:
    """The status of ``path`` (``full`` in the store), with what the object's metadata
    keeps (mode, owner, times) if ``metadata``: a HEAD of the object (one request, as
    ``info`` costs), else of the directory's marker ``dir/``, else a directory made of a
    prefix alone (a listing of one key)."""
    name = path.rpartition("/")[2]
    bucket, key, _ = fs.split_path(full)
    if not key:  # the bucket itself
        return status_from_info(name, fs.info(full))
    found = head(fs, bucket, key)
    if found is not None:
        info = {"type": "file", "size": found.get("ContentLength"), "ETag": found.get("ETag"),
                "LastModified": found.get("LastModified")}
        status = status_from_info(name, info)
        return with_metadata(status, found.get("Metadata") or {}) if metadata else status
    found = head(fs, bucket, key + "/")
    if found is not None:
        status = FileStatus(name, Kind.DIRECTORY)
        return with_metadata(status, found.get("Metadata") or {}) if metadata else status
    out = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key + "/", Delimiter="/",
                     MaxKeys=1)
    if out.get("KeyCount") or out.get("Contents") or out.get("CommonPrefixes"):
        return FileStatus(name, Kind.DIRECTORY)
    raise NotFound(f"{path!r} does not exist")


def set_attrs(fs: Any, path: str, full: str, attrs: Attrs) -> None:
    """Rewrite the metadata of ``path`` (``full`` in the store) in place (a copy onto
    itself that replaces the metadata, keeping the content and its headers); a
    directory's is its marker's, made if it had none (a directory made of a prefix
    alone)."""
    bucket, key, _ = fs.split_path(full)
    if not key:
        raise NotSupported(f"the bucket {bucket!r} itself keeps no modes, owners or times")
    kind, found = Kind.FILE, head(fs, bucket, key)
    if found is None:
        kind, key = Kind.DIRECTORY, key + "/"
        found = head(fs, bucket, key)
    if found is None and not fs.isdir(full):
        raise NotFound(f"{path!r} does not exist")
    metadata = dict((found or {}).get("Metadata") or {})
    metadata.update(attrs_metadata(kind, attrs.mode, None, attrs.mtime_ns, attrs.atime_ns))
    if attrs.uid is not None:
        metadata[META_UID] = str(attrs.uid)
    if attrs.gid is not None:
        metadata[META_GID] = str(attrs.gid)
    if found is None:  # a directory without a marker: it gets one
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"", Metadata=metadata)
    else:
        copy = {**kept_headers(found), "Metadata": metadata, "MetadataDirective": "REPLACE"}
        if kind is Kind.FILE:  # cp_file copies large objects in parts
            fs.cp_file(full, full, **copy)
        else:  # fsspec would drop the marker's trailing slash
            fs.call_s3("copy_object", Bucket=bucket, Key=key,
                       CopySource={"Bucket": bucket, "Key": key}, **copy)
    fs.invalidate_cache(full)


class _BodyFailed(Exception):
    """A reply's body broke off, or could not be read (worth asking again)."""


async def _read_exactly(body: Any, n: int) -> bytes:
    """The next ``n`` bytes of an aiobotocore reply body."""
    chunks = []
    try:
        while n > 0:
            chunk = await body.read(n)
            if not chunk:
                raise _BodyFailed(f"the body ended {n} bytes short")
            chunks.append(chunk)
            n -= len(chunk)
    except _BodyFailed:
        raise
    except Exception as e:  # the transport's, whichever library's it is
        raise _BodyFailed(repr(e)) from e
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _s3_code(e: BaseException) -> str | None:
    """The S3 error code behind an error s3fs translated (its cause: botocore's)."""
    response = getattr(e.__cause__, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None
