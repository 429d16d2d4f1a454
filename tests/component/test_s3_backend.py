"""The fsspec backend against S3 (moto on loopback): directory renames, key by key."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
import trio

from alluxiofuse.backends.ufs import UfsBackend
from alluxiofuse.errors import AlluxioFuseError
from alluxiofuse.model import Attrs
from tests.support.s3server import S3Server, moto_s3

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
    ("call_s3", "copy_object", 1),  # the first copy
    ("call_s3", "copy_object", 5),  # part-way, after markers and files were copied
    ("call_s3", "/d/m/deep/'", 1),  # a marker's copy
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
    fs.call_s3 = failing_on(2, fs.call_s3, "copy_object")
    with pytest.raises(AlluxioFuseError):
        await backend(s3, fs).rename("d", "t", 0)
    assert keys(s3) == before


@pytest.mark.expect_log(r"^rename: cannot remove 'data/root/d/a': OSError\(5, ", count=1)
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


# -- modes, owners and times in object metadata (issue 15, point 9)


def head(s3: S3Server, name: str) -> dict[str, Any]:
    return dict(s3.fs().call_s3("head_object", Bucket=s3.bucket, Key=f"{ROOT}/{name}"))


async def test_a_commit_keeps_mode_owner_and_mtime_in_the_object(
    s3: S3Server, tmp_path: Path,
) -> None:
    b = backend(s3)
    for name, data in (("f", b"data"), ("empty", b"")):
        staged = tmp_path / name
        staged.write_bytes(data)
        done = await b.commit(name, str(staged), mode=0o600, owner=(7, 8),
                              mtime_ns=981_173_106_500_000_000, size=len(data))
        assert head(s3, name)["Metadata"] == {
            "mode": "33152", "uid": "7", "gid": "8", "mtime": "981173106.500000000"}
        status = await b.stat(name)
        assert status == done.status
        assert (status.mode, status.uid, status.gid) == (0o600, 7, 8)
        assert status.mtime_ns == 981_173_106_500_000_000
        assert s3.fs().cat_file(f"{s3.bucket}/{ROOT}/{name}") == data
        # A listing carries no metadata: it says so, and names the same version.
        [entry] = [e for e in await b.list("") if e.name == name]
        assert not entry.complete
        assert entry.mode is None
        assert entry.version == status.version


async def test_objects_without_metadata_keep_the_defaults(s3: S3Server) -> None:
    put(s3, "plain", "dir/", "prefix/x")
    b = backend(s3)
    status = await b.stat("plain")
    assert (status.mode, status.uid, status.gid, status.atime_ns) == (None, None, None, None)
    assert status.mtime_ns == status.version.mtime_ns  # LastModified
    for name in ("dir", "prefix"):
        d = await b.stat(name)
        assert d.is_dir and d.mode is None and d.mtime_ns is None
    with pytest.raises(AlluxioFuseError) as e:
        await b.stat("missing")
    assert e.value.errno == errno.ENOENT


async def test_setattr_rewrites_the_metadata_in_place(s3: S3Server) -> None:
    fs = s3.fs()
    fs.call_s3("put_object", Bucket=s3.bucket, Key=f"{ROOT}/f", Body=b"content",
               ContentType="text/plain", Metadata={"mode": "33188", "other": "kept"})
    b = backend(s3)
    before = await b.stat("f")
    await b.setattr("f", Attrs(mode=0o640))
    await b.setattr("f", Attrs(uid=5, gid=6))
    status = await b.setattr("f", Attrs(atime_ns=10**9, mtime_ns=2 * 10**9 + 1))
    h = head(s3, "f")
    assert h["Metadata"] == {"mode": "33184", "other": "kept", "uid": "5", "gid": "6",
                             "atime": "1", "mtime": "2.000000001"}
    assert h["ContentType"] == "text/plain"
    assert fs.cat_file(f"{s3.bucket}/{ROOT}/f") == b"content"
    assert (status.mode, status.uid, status.gid) == (0o640, 5, 6)
    assert (status.mtime_ns, status.atime_ns) == (2 * 10**9 + 1, 10**9)
    assert status.etag == before.etag and status.size == before.size


async def test_setattr_of_directories_with_and_without_a_marker(s3: S3Server) -> None:
    put(s3, "marked/", "marked/a", "prefix/a")
    b = backend(s3)
    await b.mkdir("made", 0o750, (3, 4))
    assert head(s3, "made/")["Metadata"] == {"mode": str(0o40750), "uid": "3", "gid": "4"}
    assert (await b.stat("made")).mode == 0o750
    for name in ("marked", "prefix", "made"):
        status = await b.setattr(name, Attrs(mode=0o700, mtime_ns=5 * 10**9))
        assert status.is_dir and status.mode == 0o700 and status.mtime_ns == 5 * 10**9
        assert head(s3, f"{name}/")["Metadata"]["mode"] == str(0o40700)
    assert keys(s3) == [f"{ROOT}/", f"{ROOT}/made/", f"{ROOT}/marked/", f"{ROOT}/marked/a",
                        f"{ROOT}/prefix/", f"{ROOT}/prefix/a"]
    with pytest.raises(AlluxioFuseError) as e:
        await b.setattr("missing", Attrs(mode=0o700))
    assert e.value.errno == errno.ENOENT
    bucket = UfsBackend(s3.fs(), s3.bucket, trio.CapacityLimiter(4), 30.0,
                        description=s3.url())
    with pytest.raises(AlluxioFuseError) as e:  # the bucket has no object to keep them
        await bucket.setattr("", Attrs(mode=0o700))
    assert e.value.errno == errno.ENOTSUP
    assert (await bucket.stat("")).is_dir


async def test_a_rename_keeps_the_metadata(s3: S3Server) -> None:
    b = backend(s3)
    await b.mkdir("d", 0o700, (1, 2))
    await b.mkdir("d/sub", 0o750, (1, 2))
    put(s3, "d/sub/f")
    await b.setattr("d/sub/f", Attrs(mode=0o600, mtime_ns=10**9))
    await b.rename("d", "d2", 0)
    assert (await b.stat("d2")).mode == 0o700
    assert (await b.stat("d2/sub")).mode == 0o750
    f = await b.stat("d2/sub/f")
    assert (f.mode, f.mtime_ns) == (0o600, 10**9)


async def test_a_directory_rename_is_given_time_for_its_keys(s3: S3Server) -> None:
    """Each copy takes a while, and all of them far longer than --io-timeout (1 s here):
    the rename is given time per key, and finishes."""
    put(s3, "d/", *(f"d/{i}" for i in range(6)))
    before = keys(s3)
    fs = s3.fs()
    call = fs.call_s3

    def slow_copy(method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "copy_object":
            time.sleep(0.4)
        return call(method, *args, **kwargs)
    fs.call_s3 = slow_copy
    b = UfsBackend(fs, f"{s3.bucket}/{ROOT}", trio.CapacityLimiter(4), 1.0,
                   description=s3.url(ROOT))
    await b.rename("d", "d2", 0)
    assert keys(s3) == renamed(before, "d", "d2")


async def test_objects_copied_in_parts_keep_their_metadata(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Objects copied in parts (over 150 MiB, here every object, so that a test can move
    them) keep their metadata and headers through renames and setattr."""
    import s3fs.core

    from alluxiofuse.backends import keys

    monkeypatch.setattr(keys, "_COPY_MAX", 0)
    monkeypatch.setattr(s3fs.core, "MANAGED_COPY_THRESHOLD", 0)
    fs = s3.fs()
    fs.call_s3("put_object", Bucket=s3.bucket, Key=f"{ROOT}/d/big", Body=b"big" * 1000,
               ContentType="text/plain", Metadata={"mode": "33152", "mtime": "7"})
    b = backend(s3, fs)
    await b.rename("d/big", "d/bigger", 0)
    await b.rename("d", "d2", 0)
    h = head(s3, "d2/bigger")
    assert h["Metadata"] == {"mode": "33152", "mtime": "7"}
    assert h["ContentType"] == "text/plain"
    status = await b.setattr("d2/bigger", Attrs(mode=0o640))
    assert head(s3, "d2/bigger")["Metadata"] == {"mode": "33184", "mtime": "7"}
    assert (status.mode, status.mtime_ns) == (0o640, 7 * 10**9)
    assert fs.cat_file(f"{s3.bucket}/{ROOT}/d2/bigger") == b"big" * 1000


async def test_a_store_with_real_directories_renames_and_undoes_the_same_way(
    tmp_path: Path,
) -> None:
    """The same rename through fsspec on a store with directories of its own (a local
    directory read as ``file://``): made, not copied; a failed copy undoes them."""
    fs = fsspec.filesystem("file", skip_instance_cache=True)
    root = tmp_path / "root"
    for name in ("d/a", "d/sub/b", "d/sub/deeper/c"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())
    (root / "d/empty").mkdir()
    (root / "t").mkdir()

    def tree() -> list[str]:
        return sorted(str(p.relative_to(root)) + ("/" if p.is_dir() else "")
                      for p in root.rglob("*"))
    before = tree()
    b = UfsBackend(fs, str(root), trio.CapacityLimiter(4), 30.0, description="file")
    fs.cp_file = failing_on(2, fs.cp_file, "")
    with pytest.raises(AlluxioFuseError):
        await b.rename("d", "t", 0)
    assert tree() == before
    del fs.cp_file  # the class's again
    await b.rename("d", "t", 0)
    assert tree() == sorted(n.replace("d/", "t/", 1) for n in before if n != "t/")
