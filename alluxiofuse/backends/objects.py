"""What object stores report and keep: statuses from fsspec's ``info`` (at the precision
a source reports), and POSIX attributes kept in S3 object metadata (as s3fs-fuse keeps
them)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import stat as statmod
from collections.abc import Mapping
from typing import Any

from alluxiofuse.errors import ProtocolError
from alluxiofuse.model import FileStatus, Kind

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MTIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created")
_ETAG_KEYS = ("ETag", "etag", "md5Hash", "content_md5", "generation")


def status_from_info(name: str, info: Mapping[str, Any]) -> FileStatus:
    """An fsspec ``info()``/``ls(detail=True)`` dict as a status; missing facts stay None."""
    kind = Kind.DIRECTORY if info.get("type") == "directory" else Kind.FILE
    mtime = next((info[k] for k in _MTIME_KEYS if info.get(k) is not None), None)
    etag = next((str(info[k]) for k in _ETAG_KEYS if info.get(k) not in (None, "")), None)
    mode = info.get("mode")
    try:
        size = int(info.get("size") or 0)
    except (TypeError, ValueError):
        size = -1
    if size < 0:
        bad = info.get("size")
        raise ProtocolError(f"{name!r}: the under-storage reported size {bad!r}")
    return FileStatus(
        name=name, kind=kind, size=0 if kind is Kind.DIRECTORY else size,
        mtime_ns=_time_ns(mtime), etag=etag,
        mode=statmod.S_IMODE(mode) if isinstance(mode, int) else None,
    )


def reported(status: FileStatus, mtime_unit_ns: int) -> FileStatus:
    """``status`` as a source reports it that gives modification times in whole units of
    ``mtime_unit_ns`` (1,000,000 for Alluxio workers' milliseconds) and no etag."""
    if mtime_unit_ns == 1:
        return status
    mtime, version_mtime = status.mtime_ns, status.version_mtime_ns
    if mtime is not None:
        mtime -= mtime % mtime_unit_ns
    if version_mtime is not None:
        version_mtime -= version_mtime % mtime_unit_ns
    return dataclasses.replace(status, etag=None, mtime_ns=mtime,
                               version_mtime_ns=version_mtime)


# POSIX attributes in S3 object metadata, as s3fs-fuse keeps them: x-amz-meta-mode is st_mode
# in decimal (file-type bits included), -uid and -gid decimal, -mtime and -atime seconds
# since the epoch, "1700000000" or with nine decimals, "1700000000.123456789" (rclone
# writes its x-amz-meta-mtime with the trailing zeros dropped, "1700000000.5", and reads
# both; s3fs-fuse reads the decimals as nanoseconds, so they are always written as nine).
_META_MODE, _META_MTIME, _META_ATIME = "mode", "mtime", "atime"
META_UID, META_GID = "uid", "gid"
# What a copy that replaces an object's metadata must repeat, or lose.
_KEPT_HEADERS = ("ContentType", "CacheControl", "ContentDisposition", "ContentEncoding",
                 "ContentLanguage", "StorageClass")
_TYPE_BITS = {Kind.FILE: statmod.S_IFREG, Kind.DIRECTORY: statmod.S_IFDIR}


def kept_headers(head: Mapping[str, Any]) -> dict[str, Any]:
    """What a copy in parts (or one replacing the metadata) must be told of an object
    (from its HEAD) to keep it: its metadata and headers."""
    return {"Metadata": dict(head.get("Metadata") or {}),
            **{k: head[k] for k in _KEPT_HEADERS if head.get(k)}}


def attrs_metadata(
    kind: Kind, mode: int | None, owner: tuple[int, int] | None, mtime_ns: int | None,
    atime_ns: int | None = None,
) -> dict[str, str]:
    """The object metadata that keeps these attributes (those given)."""
    metadata = {}
    if mode is not None:
        metadata[_META_MODE] = str(_TYPE_BITS[kind] | statmod.S_IMODE(mode))
    if owner is not None:
        metadata[META_UID], metadata[META_GID] = str(owner[0]), str(owner[1])
    if mtime_ns is not None:
        metadata[_META_MTIME] = _seconds(mtime_ns)
    if atime_ns is not None:
        metadata[_META_ATIME] = _seconds(atime_ns)
    return metadata


def with_metadata(status: FileStatus, metadata: Mapping[str, str]) -> FileStatus:
    """``status`` with the attributes ``metadata`` keeps; values that do not parse are
    ignored (the defaults stand). The version stays the content's own."""
    mode = _meta_int(metadata, _META_MODE)
    uid, gid = _meta_int(metadata, META_UID), _meta_int(metadata, META_GID)
    mtime, atime = _meta_ns(metadata, _META_MTIME), _meta_ns(metadata, _META_ATIME)
    return dataclasses.replace(
        status, mode=statmod.S_IMODE(mode) if mode is not None else status.mode,
        uid=uid if uid is not None and uid >= 0 else status.uid,
        gid=gid if gid is not None and gid >= 0 else status.gid,
        mtime_ns=mtime if mtime is not None else status.mtime_ns,
        atime_ns=atime if atime is not None else status.atime_ns,
        version_mtime_ns=status.version.mtime_ns if mtime is not None else None,
    )


def _seconds(ns: int) -> str:
    sign = "-" if ns < 0 else ""  # before 1970: the decimals count away from zero too
    seconds, fraction = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{seconds}.{fraction:09d}" if fraction else f"{sign}{seconds}"


def _meta_int(metadata: Mapping[str, str], key: str) -> int | None:
    try:
        return int(metadata[key])
    except (KeyError, ValueError):
        return None


_SECONDS = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def _meta_ns(metadata: Mapping[str, str], key: str) -> int | None:
    """Seconds with up to nine decimals (more are cut, as rclone does) as nanoseconds."""
    text = metadata.get(key, "").strip()
    if not _SECONDS.fullmatch(text):  # ASCII digits only: str.isdigit takes "²" too
        return None
    whole, _, fraction = text.partition(".")
    ns = int(whole) * 1_000_000_000
    nanos = int(fraction[:9].ljust(9, "0")) if fraction else 0
    return ns - nanos if whole.startswith("-") else ns + nanos


def _time_ns(value: Any) -> int | None:
    """Epoch nanoseconds from the time formats fsspec implementations use."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value * 1_000_000_000
    if isinstance(value, float):
        # Round to whole microseconds: a float has no more, and the same instant must give
        # the same version whether a store reported it as a float or as a datetime.
        return round(value * 1_000_000) * 1000
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int((value - _EPOCH) // dt.timedelta(microseconds=1)) * 1000
    return None

