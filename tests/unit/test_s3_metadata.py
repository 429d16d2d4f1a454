"""POSIX attributes in S3 object metadata: the spellings s3fs-fuse and rclone use."""

from __future__ import annotations

import stat

import pytest

from alluxiofuse.backends.objects import attrs_metadata, with_metadata
from alluxiofuse.model import FileStatus, Kind

LAST_MODIFIED = 1_800_000_000 * 10**9


def listed(kind: Kind = Kind.FILE) -> FileStatus:
    """An object as a listing gives it: LastModified, an etag, no metadata."""
    return FileStatus("f", kind, size=3 if kind is Kind.FILE else 0,
                      mtime_ns=LAST_MODIFIED if kind is Kind.FILE else None,
                      etag='"e"' if kind is Kind.FILE else None)


def test_written_as_s3fs_fuse_writes_them() -> None:
    """st_mode in decimal with the type bits; seconds, with nine decimals when not whole."""
    assert attrs_metadata(Kind.FILE, 0o640, (1000, 100), 981_173_106_789_000_000) == {
        "mode": "33184", "uid": "1000", "gid": "100", "mtime": "981173106.789000000"}
    assert attrs_metadata(Kind.DIRECTORY, 0o700, None, 1_009_843_200 * 10**9, 5) == {
        "mode": "16832", "mtime": "1009843200", "atime": "0.000000005"}
    assert attrs_metadata(Kind.FILE, None, None, None) == {}
    assert attrs_metadata(Kind.FILE, None, None, -1_500_000_000) == {"mtime": "-1.500000000"}


@pytest.mark.parametrize("ns", [0, 1, 10**9, 981_173_106_789_000_000, -1, -1_500_000_000])
def test_times_round_trip(ns: int) -> None:
    metadata = attrs_metadata(Kind.FILE, None, None, ns)
    assert with_metadata(listed(), metadata).mtime_ns == ns


@pytest.mark.parametrize(("text", "ns"), [
    ("981173106", 981_173_106 * 10**9),  # s3fs-fuse, whole seconds
    ("981173106.789000000", 981_173_106_789_000_000),  # s3fs-fuse, nine decimals
    ("981173106.5", 981_173_106_500_000_000),  # rclone: trailing zeros dropped
    ("981173106.1234567891", 981_173_106_123_456_789),  # rclone cuts past nine
    ("-1.5", -1_500_000_000),
])
def test_mtime_read_in_both_spellings(text: str, ns: int) -> None:
    status = with_metadata(listed(), {"mtime": text})
    assert status.mtime_ns == ns


def test_read_back_and_the_version_stays_the_contents() -> None:
    base = listed()
    status = with_metadata(base, {"mode": str(stat.S_IFREG | 0o600), "uid": "7", "gid": "8",
                                  "mtime": "1.5", "atime": "2"})
    assert (status.mode, status.uid, status.gid) == (0o600, 7, 8)
    assert (status.mtime_ns, status.atime_ns) == (1_500_000_000, 2 * 10**9)
    assert status.version == base.version  # what a listing says, without the metadata
    assert status.complete


@pytest.mark.parametrize("metadata", [
    {}, {"mode": "x", "uid": "-1", "gid": "", "mtime": "soon"}, {"mtime": "1.x"},
    {"mtime": "."}, {"other": "1"}, {"mtime": "--5"}, {"mtime": "\u00b2"}, {"mtime": "1.\u00b2"},
    {"mode": "\u00b2"},
])
def test_missing_or_unparsable_metadata_keeps_the_defaults(metadata: dict[str, str]) -> None:
    base = listed()
    assert with_metadata(base, metadata) == base


def test_a_directory_marker_s_metadata() -> None:
    status = with_metadata(listed(Kind.DIRECTORY), {"mode": "16832", "mtime": "3"})
    assert status.mode == 0o700
    assert status.mtime_ns == 3 * 10**9
    assert status.version == listed(Kind.DIRECTORY).version
