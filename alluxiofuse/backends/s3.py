"""S3 requests that fsspec has no portable form for, on an s3fs filesystem: ranged GETs
that check the version they read, uploads that carry their MD5 and check the ETag, a
status from a HEAD with what the object's metadata keeps, and that metadata rewritten in
place."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from alluxiofuse.backends.objects import (
    META_GID,
    META_UID,
    attrs_metadata,
    kept_headers,
    reported,
    status_from_info,
    with_metadata,
)
from alluxiofuse.errors import (
    ContentMismatch,
    FileTooLarge,
    NotFound,
    NotSupported,
    ProtocolError,
    StaleFile,
)
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
# What S3 answers a request whose body is not what its headers say was sent: Content-MD5
# (BadDigest, InvalidDigest), a flexible checksum (BadDigest) or the signed payload hash.
_DIGEST_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"})
# Server-side encryption under which an object's ETag is not the MD5 of its content.
_OPAQUE_ETAG_ENCRYPTION = frozenset({"aws:kms", "aws:kms:dsse"})
# An ETag that is an MD5: of the content (one PUT, one part), or of the parts' MD5s
# followed by the number of parts (a multipart upload).
_MD5_ETAG = re.compile(r"[0-9a-f]{32}")
_MULTIPART_ETAG = re.compile(r"[0-9a-f]{32}-[0-9]+")
# The most parts one multipart upload may have.
MAX_PARTS = 10_000


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
        return reply, await _read_exactly(body, int(reply.get("ContentLength") or 0))
    except _BodyFailed as e:  # cut short: the HEAD asks again
        log.debug("GET of %r for its status was cut short (%s): a HEAD instead", full, e)
        return None
    finally:
        body.close()


def upload(
    fs: Any, full: str, staged: str, part_size: int, metadata: Mapping[str, str],
    publishing: Callable[[], contextlib.AbstractContextManager[object]],
) -> None:
    """Make the local file ``staged`` the object ``full``, with ``metadata``: one PUT
    if it has at most ``part_size`` bytes, else a multipart upload in parts of
    ``part_size`` bytes, read and sent one at a time. ``publishing()`` is around the
    request that makes the object visible (the PUT, the completion).

    Every body goes with its MD5 (Content-MD5), so the store refuses one that arrived
    other than sent; then the ETag the store answers must be that MD5 (of a part, of one
    PUT), or for the whole multipart upload the MD5 of the parts' MD5s and ``-`` and
    their number, as AWS computes it. Where the ETag is not an MD5 (SSE-KMS, SSE-C,
    another scheme), the object's size is checked instead. A mismatch is a
    ContentMismatch (EIO): a multipart upload is aborted before anything is published
    unless only the completion's ETag is wrong; a PUT's or completion's wrong ETag is
    seen once the object is there, and the commit fails all the same (to be retried)."""
    bucket, key, _ = fs.split_path(full)
    extra: dict[str, Any] = {"Metadata": dict(metadata)} if metadata else {}
    with open(staged, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        if size <= part_size:
            body = src.read()
            digest = _md5(body)
            with publishing():
                reply = _send(fs, full, "put_object", Bucket=bucket, Key=key, Body=body,
                              ContentMD5=_base64(digest), **extra)
            _check_etag(fs, full, reply, digest.hex(), len(body), multipart=False)
        else:
            _multipart(fs, full, src, size, part_size, extra, publishing)


def _multipart(
    fs: Any, full: str, src: IO[bytes], size: int, part_size: int, extra: Mapping[str, Any],
    publishing: Callable[[], contextlib.AbstractContextManager[object]],
) -> None:
    """``upload`` of more than one part; aborted if anything fails before it completes."""
    bucket, key, _ = fs.split_path(full)
    if -(-size // part_size) > MAX_PARTS:
        raise FileTooLarge(f"{full}: {size} bytes need more than {MAX_PARTS} parts of "
                           f"{part_size} bytes (--upload-part-size)")
    started = _send(fs, full, "create_multipart_upload", Bucket=bucket, Key=key, **extra)
    upload_id = started["UploadId"]
    # A checksum algorithm the user's options ask for: each part's is then listed too.
    algorithm = started.get("ChecksumAlgorithm")
    parts: list[dict[str, Any]] = []
    digests: list[bytes] = []
    try:
        while chunk := src.read(part_size):
            number = len(parts) + 1
            digest = _md5(chunk)
            reply = _send(fs, full, "upload_part", Bucket=bucket, Key=key,
                          UploadId=upload_id, PartNumber=number, Body=chunk,
                          ContentMD5=_base64(digest))
            del chunk  # one part in memory at a time
            _check_etag(fs, full, reply, digest.hex(), None, multipart=False,
                        what=f"part {number}")
            part = {"PartNumber": number, "ETag": reply["ETag"]}
            if algorithm and f"Checksum{algorithm}" in reply:
                part[f"Checksum{algorithm}"] = reply[f"Checksum{algorithm}"]
            parts.append(part)
            digests.append(digest)
        expected = f"{_md5(b''.join(digests)).hex()}-{len(digests)}"
        with publishing():
            try:
                reply = _send(fs, full, "complete_multipart_upload", Bucket=bucket, Key=key,
                              UploadId=upload_id, MultipartUpload={"Parts": parts})
            except OSError:
                # The store may have completed the upload and its reply been lost: its
                # retry is then answered NoSuchUpload (or an error). The object itself
                # tells: if it is this upload, the commit is done.
                found = head(fs, bucket, key)
                if found is None or str(found.get("ETag") or "").strip('"') != expected:
                    raise
                log.debug("%s: the completion's reply was lost; the object is this upload",
                          full)
                reply = dict(found)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    _check_etag(fs, full, reply, expected, size, multipart=True)


def _send(fs: Any, full: str, method: str, **kwargs: Any) -> dict[str, Any]:
    """The reply to an upload's request; a body the store received other than sent is a
    ContentMismatch (EIO, retried), not the EINVAL s3fs makes of it."""
    try:
        return dict(fs.call_s3(method, **kwargs))
    except OSError as e:
        if _s3_code(e) in _DIGEST_CODES:
            raise ContentMismatch(f"{full}: the store received other bytes than were sent "
                                  f"({method}: {e})") from e
        raise


def _check_etag(
    fs: Any, full: str, reply: Mapping[str, Any], expected: str, size: int | None, *,
    multipart: bool, what: str = "the object",
) -> None:
    """The ETag of ``reply`` is ``expected``, where the store's ETags are MD5s; else the
    object's size is ``size`` (a part's: not checked, its object is not there yet)."""
    etag = str(reply.get("ETag") or "").strip('"').lower()
    shape = _MULTIPART_ETAG if multipart else _MD5_ETAG
    opaque = (reply.get("ServerSideEncryption") in _OPAQUE_ETAG_ENCRYPTION
              or reply.get("SSECustomerAlgorithm"))
    if not opaque and shape.fullmatch(etag):
        if etag != expected:
            raise ContentMismatch(f"{full}: the store's ETag of {what} is {etag}, not "
                                  f"{expected} as the bytes sent")
        return
    if size is None:
        return
    log.debug("%s: ETag %r is not an MD5; checking the size alone", full, etag)
    bucket, key, _ = fs.split_path(full)
    found = head(fs, bucket, key)
    if found is None or (etag and str(found.get("ETag") or "").strip('"').lower() != etag):
        return  # replaced or removed since by someone else: nothing of ours to check
    if found.get("ContentLength") != size:
        raise ContentMismatch(f"{full}: the store holds {found.get('ContentLength')} bytes, "
                              f"not the {size} sent")


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _base64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


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
