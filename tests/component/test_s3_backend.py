"""The fsspec backend against S3 (moto on loopback): directory renames, key by key."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from alluxiofuse.backends.ufs import UfsBackend
from alluxiofuse.errors import AlluxioFuseError
from tests.s3server import S3Server, moto_s3

ROOT = "root"  # the mounted prefix inside the bucket


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with moto_s3() as s3:
        yield s3


@pytest.fixture
def s3(server: S3Server) -> Iterator[S3Server]:
    """The module's server with an empty bucket but for the mounted prefix's marker."""
    fs = server.fs()
    for key in keys(server):
        fs.call_s3("delete_object", Bucket=server.bucket, Key=key)
    fs.pipe_file(f"{server.bucket}/{ROOT}/", b"")
    yield server


def keys(s3: S3Server) -> list[str]:
    """Every key in the bucket, exactly (markers keep their slash)."""
    out = s3.fs().call_s3("list_objects_v2", Bucket=s3.bucket)
    return sorted(o["Key"] for o in out.get("Contents", []))


def put(s3: S3Server, *names: str) -> None:
    """Objects made directly in the bucket under ROOT (``x/`` is a marker)."""
    fs = s3.fs()
    for name in names:
        fs.call_s3("put_object", Bucket=s3.bucket, Key=f"{ROOT}/{name}",
                   Body=b"" if name.endswith("/") else name.encode())


def backend(s3: S3Server, fs: Any = None) -> UfsBackend:
    return UfsBackend(fs or s3.fs(), f"{s3.bucket}/{ROOT}", trio.CapacityLimiter(4), 30.0,
                      description=s3.url(ROOT))


def renamed(before: list[str], old: str, new: str) -> list[str]:
    """``before`` with ``ROOT/old`` moved to ``ROOT/new``, key by key."""
    prefix = f"{ROOT}/{old}/"
    return sorted(f"{ROOT}/{new}/{k[len(prefix):]}" if k.startswith(prefix) else k
                  for k in before)


MATRIX = {
    "files only (a prefix, no marker)": ["d/a", "d/b"],
    "empty directory (a marker)": ["d/"],
    "marker directory with files": ["d/", "d/a", "d/b"],
    "prefix-only subdirectory": ["d/", "d/p/x"],
    "marker subdirectory with a file": ["d/", "d/sub/", "d/sub/f"],
    "nested mix": ["d/", "d/a", "d/empty/", "d/m/", "d/m/y", "d/m/deep/", "d/m/deep/z",
                   "d/p/q/r", "d/p/x", "d2x", "dd/keep"],
}


@pytest.mark.parametrize("names", MATRIX.values(), ids=MATRIX.keys())
async def test_directory_rename_moves_every_key_exactly(s3: S3Server, names: list[str]) -> None:
    put(s3, *names)
    before = keys(s3)
    b = backend(s3)
    await b.rename("d", "d2", 0)
    assert keys(s3) == renamed(before, "d", "d2")
    assert (await b.stat("d2")).is_dir
    with pytest.raises(AlluxioFuseError) as e:
        await b.stat("d")
    assert e.value.errno == errno.ENOENT


async def test_directory_made_through_the_backend_renames_with_its_subdirectory(
    s3: S3Server,
) -> None:
    """The issue's case: mkdir -p d/sub, a file in it, mv d d2."""
    b = backend(s3)
    await b.mkdir("d", 0o755, None)
    await b.mkdir("d/sub", 0o755, None)
    s3.fs().pipe_file(f"{s3.bucket}/{ROOT}/d/sub/f", b"hi")
    await b.rename("d", "d2", 0)
    assert keys(s3) == [f"{ROOT}/", f"{ROOT}/d2/", f"{ROOT}/d2/sub/", f"{ROOT}/d2/sub/f"]
    assert [s.name for s in await b.list("d2/sub")] == ["f"]


async def test_rename_over_an_empty_directory_and_into_a_subdirectory(s3: S3Server) -> None:
    put(s3, "d/", "d/sub/", "d/sub/f", "t/", "n/")
    b = backend(s3)
    await b.rename("d", "t", 0)
    await b.rename("t/sub", "n/sub", 0)
    assert keys(s3) == [f"{ROOT}/", f"{ROOT}/n/", f"{ROOT}/n/sub/", f"{ROOT}/n/sub/f", f"{ROOT}/t/"]


def failing_on(calls: int, fn: Callable[..., Any], what: str) -> Callable[..., Any]:
    """``fn``, failing with EIO from its ``calls``-th call on whose arguments name ``what``."""
    seen = 0

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal seen
        if what in repr((args, kwargs)):
            seen += 1
            if seen >= calls:
                raise OSError(errno.EIO, f"injected failure of {args!r}")
        return fn(*args, **kwargs)
    return call


@pytest.mark.parametrize(("method", "what", "calls"), [
    ("cp_file", "", 1),  # the first file copy
    ("cp_file", "", 3),  # part-way, after markers and files were copied
    ("call_s3", "copy_object", 2),  # a marker's copy, after the first marker
])
async def test_a_failed_copy_leaves_the_source_whole_and_no_target(
    s3: S3Server, method: str, what: str, calls: int,
) -> None:
    put(s3, *MATRIX["nested mix"])
    before = keys(s3)
    fs = s3.fs()
    setattr(fs, method, failing_on(calls, getattr(fs, method), what))
    with pytest.raises(AlluxioFuseError) as e:
        await backend(s3, fs).rename("d", "d2", 0)
    assert e.value.errno == errno.EIO
    assert keys(s3) == before


async def test_a_failed_copy_over_an_empty_directory_keeps_that_directory(
    s3: S3Server,
) -> None:
    put(s3, "d/", "d/a", "d/b", "t/")
    before = keys(s3)
    fs = s3.fs()
    fs.cp_file = failing_on(2, fs.cp_file, "")
    with pytest.raises(AlluxioFuseError):
        await backend(s3, fs).rename("d", "t", 0)
    assert keys(s3) == before


@pytest.mark.allow_warnings
async def test_a_failed_removal_after_the_copies_finishes_the_rename(s3: S3Server) -> None:
    """Every copy is in: the new tree is whole and the rest of the old one still goes;
    the error is reported."""
    put(s3, "d/", "d/a", "d/b", "d/sub/", "d/sub/c")
    fs = s3.fs()
    fs.rm_file = failing_on(1, fs.rm_file, "/d/a")
    with pytest.raises(AlluxioFuseError):
        await backend(s3, fs).rename("d", "d2", 0)
    assert keys(s3) == [f"{ROOT}/", f"{ROOT}/d/a", f"{ROOT}/d2/", f"{ROOT}/d2/a", f"{ROOT}/d2/b",
                        f"{ROOT}/d2/sub/", f"{ROOT}/d2/sub/c"]
