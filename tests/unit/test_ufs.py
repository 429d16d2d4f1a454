"""The fsspec/local under-storage backend: status conversion, names, reads, errors."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
import trio

from alluxiofuse.backends.local import LocalUfs, status_from_stat
from alluxiofuse.backends.objects import status_from_info
from alluxiofuse.backends.source import open_ufs
from alluxiofuse.backends.ufs import UfsBackend
from alluxiofuse.errors import (
    BackendError,
    BackendTimeout,
    ConfigError,
    InvalidArgument,
    NotADirectory,
    NotFound,
    PermissionDenied,
    StaleFile,
)
from alluxiofuse.model import (
    NAME_MAX,
    RENAME_NOREPLACE,
    Attrs,
    FileStatus,
    Kind,
    Version,
    valid_name,
)

UTC = dt.UTC


def limiter() -> trio.CapacityLimiter:
    return trio.CapacityLimiter(4)


# -- status_from_info


def test_status_from_info_local_style() -> None:
    info = {"name": "/d/a.bin", "size": 5, "type": "file", "mtime": 1700000000.5,
            "mode": 0o100640, "created": 1.0}
    s = status_from_info("a.bin", info)
    assert s == FileStatus("a.bin", Kind.FILE, size=5, mtime_ns=1_700_000_000_500_000_000,
                           mode=0o640)
    assert s.version == Version(5, 1_700_000_000_500_000_000, None)


def test_status_from_info_s3_style() -> None:
    info = {"Key": "bucket/k", "name": "bucket/k", "size": 1024, "type": "file",
            "LastModified": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "ETag": '"abc123"',
            "StorageClass": "STANDARD"}
    s = status_from_info("k", info)
    assert s.kind is Kind.FILE
    assert s.size == 1024
    assert s.mtime_ns == 1_704_164_645 * 10**9
    assert s.etag == '"abc123"'
    assert s.mode is None
    assert s.version == Version(1024, 1_704_164_645 * 10**9, '"abc123"')


def test_status_from_info_naive_datetime_is_utc() -> None:
    info = {"size": 1, "type": "file", "LastModified": dt.datetime(2024, 1, 2, 3, 4, 5)}
    assert status_from_info("k", info).mtime_ns == 1_704_164_645 * 10**9


def test_status_from_info_gcs_style() -> None:
    info = {"name": "b/o", "size": "77", "type": "file", "updated": "2024-01-02T03:04:05.678Z",
            "md5Hash": "XrY7u+Ae7tCTyyK7j1rNww==", "generation": "1700000000000000"}
    s = status_from_info("o", info)
    assert s.size == 77
    assert s.mtime_ns == 1_704_164_645_678 * 10**6
    assert s.etag == "XrY7u+Ae7tCTyyK7j1rNww=="


@pytest.mark.parametrize(
    ("value", "expected_ns"),
    [
        ("2005-01-21T17:14:35.363783Z", 1_106_327_675_363_783_000),
        (dt.datetime(2005, 1, 21, 17, 14, 35, 363783, tzinfo=UTC), 1_106_327_675_363_783_000),
        ("2024-01-02T03:04:05.000007+00:00", 1_704_164_645_000_007_000),
    ],
)
def test_status_from_info_keeps_every_microsecond(value: Any, expected_ns: int) -> None:
    # Never fabricate: a time the backend states to the microsecond must not be rounded off.
    s = status_from_info("o", {"size": 1, "type": "file", "updated": value})
    assert s.mtime_ns == expected_ns


def test_status_from_info_float_and_datetime_of_one_instant_agree() -> None:
    # fsspec's memory filesystem reports "created" as a float from ls() and as a datetime
    # from info(); both must give the same version, to the nanosecond.
    stamp = 1795252951.014426
    as_float = status_from_info("f", {"size": 1, "type": "file", "created": stamp})
    as_datetime = status_from_info(
        "f", {"size": 1, "type": "file", "created": dt.datetime.fromtimestamp(stamp, UTC)},
    )
    assert as_datetime.mtime_ns == 1_795_252_951_014_426_000
    assert as_float.version == as_datetime.version


def test_status_from_info_directory() -> None:
    s = status_from_info("d", {"name": "b/d", "size": 4096, "type": "directory"})
    assert s.kind is Kind.DIRECTORY
    assert s.is_dir
    assert s.size == 0
    assert s.mtime_ns is None


def test_status_from_info_missing_facts_stay_none() -> None:
    s = status_from_info("f", {"name": "f", "type": "file"})
    assert s == FileStatus("f", Kind.FILE, size=0)
    assert s.mtime_ns is None and s.etag is None and s.mode is None
    assert s.version == Version(0, 0, None)
    # Empty etags and unparseable times are unknown, not made up.
    s = status_from_info("f", {"size": None, "type": "file", "ETag": "", "updated": "yesterday"})
    assert (s.size, s.etag, s.mtime_ns) == (0, None, None)


@pytest.mark.parametrize("bad", ["abc", [1], {"x": 1}])
def test_status_from_info_bad_size(bad: Any) -> None:
    with pytest.raises(BackendError, match="size"):
        status_from_info("f", {"size": bad, "type": "file"})


# -- valid_name


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a", True),
        ("with space", True),
        (".hidden", True),
        ("...", True),
        ("", False),
        (".", False),
        ("..", False),
        ("a/b", False),
        ("/", False),
        ("a\0b", False),
        ("x" * NAME_MAX, True),
        ("x" * (NAME_MAX + 1), False),
        ("é" * 127, True),  # 254 bytes
        ("é" * 127 + "x", True),  # 255 bytes
        ("é" * 128, False),  # 256 bytes, only 128 characters
        ("€" * 85, True),  # 255 bytes
        ("€" * 86, False),  # 258 bytes
        ("\udcff" * 255, True),  # undecodable bytes kept by surrogateescape: one byte each
        ("\udcff" * 256, False),
    ],
)
def test_valid_name(name: str, ok: bool) -> None:
    assert valid_name(name) is ok


# -- status_from_stat


def test_status_from_stat_kinds(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"12345")
    os.chmod(f, 0o640)
    (tmp_path / "d").mkdir()
    os.symlink("f", tmp_path / "l")
    os.mkfifo(tmp_path / "p")

    sf = status_from_stat("f", os.lstat(f))
    st = os.lstat(f)
    assert sf is not None
    assert sf == FileStatus(
        "f", Kind.FILE, size=5, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns,
        atime_ns=st.st_atime_ns, mode=0o640, uid=st.st_uid, gid=st.st_gid, nlink=1,
        blocks=st.st_blocks,
    )
    sd = status_from_stat("d", os.lstat(tmp_path / "d"))
    assert sd is not None and sd.kind is Kind.DIRECTORY
    sl = status_from_stat("l", os.lstat(tmp_path / "l"))
    assert sl is not None and sl.kind is Kind.SYMLINK and sl.size == 1
    sp = status_from_stat("p", os.lstat(tmp_path / "p"))
    assert sp is not None and (sp.kind, sp.rdev) == (Kind.FIFO, None)
    null = status_from_stat("null", os.lstat("/dev/null"))
    assert null is not None and (null.kind, null.rdev) == (Kind.CHAR_DEVICE, os.makedev(1, 3))


# -- open_ufs


async def test_open_ufs_local_spellings(tmp_path: Path) -> None:
    for source in (str(tmp_path), f"file://{tmp_path}", f"{tmp_path}/"):
        backend = open_ufs(source, {}, limiter(), 5.0)
        assert type(backend) is LocalUfs
        assert backend.root == str(tmp_path)
        assert backend.description == source


async def test_open_ufs_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    backend = open_ufs("sub", {}, limiter(), 5.0)
    assert backend.root == str(tmp_path / "sub")


@pytest.mark.parametrize("source", ["/data", "file:///data", "rel"])
async def test_open_ufs_local_refuses_ufs_options(source: str) -> None:
    with pytest.raises(ConfigError, match="ufs-option"):
        open_ufs(source, {"anon": True}, limiter(), 5.0)


async def test_open_ufs_unknown_protocol() -> None:
    with pytest.raises(ConfigError, match="nosuchproto"):
        open_ufs("nosuchproto://bucket/x", {}, limiter(), 5.0)


async def test_open_ufs_memory_is_generic() -> None:
    backend = open_ufs("memory://some/where/", {}, limiter(), 5.0)
    assert type(backend) is UfsBackend
    assert backend.root == "/some/where"
    assert backend.full_path("") == "/some/where"
    assert backend.full_path("a/b") == "/some/where/a/b"


# -- LocalUfs


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "small").write_bytes(b"hello")
    os.symlink("small", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    return tmp_path


async def test_local_stat(tree: Path) -> None:
    backend = open_ufs(str(tree), {}, limiter(), 5.0)
    root = await backend.stat("")
    assert root.kind is Kind.DIRECTORY and root.name == ""
    f = await backend.stat("d/f.bin")
    assert (f.name, f.kind, f.size) == ("f.bin", Kind.FILE, 1024)
    assert f.mtime_ns == os.stat(tree / "d" / "f.bin").st_mtime_ns
    link = await backend.stat("link")
    assert link.kind is Kind.SYMLINK  # not followed
    with pytest.raises(NotFound):
        await backend.stat("nope")
    assert (await backend.stat("fifo")).kind is Kind.FIFO  # stat-ed, never opened
    with pytest.raises(NotADirectory):
        await backend.stat("small/x")


async def test_local_list(tree: Path) -> None:
    backend = open_ufs(str(tree), {}, limiter(), 5.0)
    entries = {e.name: e for e in await backend.list("")}
    assert set(entries) == {"d", "small", "link", "fifo"}
    assert entries["fifo"].kind is Kind.FIFO
    assert entries["d"].kind is Kind.DIRECTORY
    assert entries["small"].size == 5
    assert entries["link"].kind is Kind.SYMLINK
    assert [e.name for e in await backend.list("d")] == ["f.bin"]
    with pytest.raises(NotFound):
        await backend.list("nope")
    with pytest.raises(NotADirectory):
        await backend.list("small")


async def test_local_read(tree: Path) -> None:
    backend = open_ufs(str(tree), {}, limiter(), 5.0)
    data = (tree / "d" / "f.bin").read_bytes()
    version = (await backend.stat("d/f.bin")).version
    assert await backend.read("d/f.bin", 0, 1024, version) == data
    assert await backend.read("d/f.bin", 100, 10, version) == data[100:110]
    assert await backend.read("d/f.bin", 1000, 100, version) == data[1000:]
    assert await backend.read("d/f.bin", 1024, 100, version) == b""
    with pytest.raises(StaleFile):  # a file removed under an open handle is stale
        await backend.read("gone", 0, 1, version)


async def test_local_read_of_changed_file_is_stale(tree: Path) -> None:
    backend = open_ufs(str(tree), {}, limiter(), 5.0)
    path = tree / "small"
    version = (await backend.stat("small")).version
    path.write_bytes(b"HELLO")  # same size...
    os.utime(path, ns=(version.mtime_ns + 10**9, version.mtime_ns + 10**9))  # ...new mtime
    with pytest.raises(StaleFile):
        await backend.read("small", 0, 5, version)
    new = (await backend.stat("small")).version
    assert await backend.read("small", 0, 5, new) == b"HELLO"
    path.write_bytes(b"HELLO!")
    with pytest.raises(StaleFile):
        await backend.read("small", 0, 5, new)


async def test_local_paths_longer_than_path_max_work_for_every_operation(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    backend = open_ufs(str(src), {}, limiter(), 5.0)
    # 240-byte names: 17 of them with their slashes are 4,096 bytes, one more than a system
    # call takes; such paths are walked, in pieces of at most 4,095 bytes.
    names = [f"{i:02d}" + "n" * 238 for i in range(20)]
    for depth in range(1, len(names) + 1):
        made = await backend.mkdir("/".join(names[:depth]), 0o755, None)
        assert made.kind is Kind.DIRECTORY
    for depth in (16, 17, 18, 20):
        d = "/".join(names[:depth])
        staged = tmp_path / f"staged{depth}"
        staged.write_bytes(b"x" * depth)
        done = await backend.commit(f"{d}/f", str(staged), mode=0o640, size=depth)
        assert (done.status.size, done.status.mode) == (depth, 0o640)
        assert await backend.read(f"{d}/f", 0, 100, done.status.version) == b"x" * depth
        assert [e.name for e in await backend.list(d) if e.kind is Kind.FILE] == ["f"]
        await backend.rename(f"{d}/f", f"{d}/g", 0)
        await backend.rename(f"{d}/g", f"{d}/h", RENAME_NOREPLACE)
        await backend.symlink(f"{d}/s", "h", None)
        assert await backend.readlink(f"{d}/s") == "h"
        assert (await backend.setattr(f"{d}/h", Attrs(mode=0o600))).mode == 0o600
        await backend.sync(f"{d}/h")
        assert (await backend.stat(f"{d}/s")).kind is Kind.SYMLINK
        await backend.unlink(f"{d}/h")
        await backend.unlink(f"{d}/s")
        with pytest.raises(NotFound):
            await backend.stat(f"{d}/h")
    with pytest.raises(NotFound):  # a missing directory on the way
        await backend.stat("/".join([*names[:17], "missing", "f"]))
    for depth in range(len(names), 0, -1):
        await backend.rmdir("/".join(names[:depth]))
    assert os.listdir(src) == []
    await backend.aclose()


async def test_local_read_does_not_follow_symlinks(tree: Path) -> None:
    backend = open_ufs(str(tree), {}, limiter(), 5.0)
    version = (await backend.stat("small")).version
    with pytest.raises(BackendError):  # ELOOP from O_NOFOLLOW: not served as the target
        await backend.read("link", 0, 5, version)


async def test_local_readlink_and_statfs(tree: Path) -> None:
    backend = open_ufs(str(tree), {}, limiter(), 5.0)
    assert await backend.readlink("link") == "small"
    with pytest.raises(InvalidArgument):
        await backend.readlink("small")
    with pytest.raises(NotFound):
        await backend.readlink("nope")
    stats = await backend.statfs()
    vfs = os.statvfs(tree)
    assert stats.block_size == vfs.f_frsize
    assert stats.blocks == vfs.f_blocks
    assert stats.name_max == vfs.f_namemax
    await backend.aclose()


# -- generic fsspec (memory://)


@pytest.fixture
def memroot() -> Iterator[str]:
    """A fresh directory in fsspec's process-wide memory filesystem."""
    fs = fsspec.filesystem("memory")
    root = f"/alluxiofuse-test-{uuid.uuid4().hex}"
    fs.pipe(f"{root}/d/f.bin", bytes(range(256)) * 4)
    fs.pipe(f"{root}/small", b"hello")
    yield root
    fs.rm(root, recursive=True)


async def test_memory_stat_list_read(memroot: str) -> None:
    backend = open_ufs(f"memory://{memroot}", {}, limiter(), 5.0)
    assert type(backend) is UfsBackend
    root = await backend.stat("")
    assert root.kind is Kind.DIRECTORY
    assert (await backend.stat("d")).kind is Kind.DIRECTORY
    f = await backend.stat("d/f.bin")
    assert (f.name, f.kind, f.size) == ("f.bin", Kind.FILE, 1024)
    assert f.mtime_ns is not None
    entries = {e.name: e for e in await backend.list("")}
    assert set(entries) == {"d", "small"}
    assert entries["small"].size == 5
    assert entries["d"].kind is Kind.DIRECTORY
    assert [e.name for e in await backend.list("d")] == ["f.bin"]
    data = bytes(range(256)) * 4
    assert await backend.read("d/f.bin", 0, 1024, f.version) == data
    assert await backend.read("d/f.bin", 1000, 100, f.version) == data[1000:]
    assert await backend.read("d/f.bin", 10, 5, f.version) == data[10:15]
    assert await backend.read("d/f.bin", 1024, 5, f.version) == b""
    with pytest.raises(NotFound):
        await backend.stat("nope")
    with pytest.raises(InvalidArgument):
        await backend.readlink("small")
    assert (await backend.statfs()).name_max == NAME_MAX
    await backend.aclose()


async def test_memory_stat_and_list_agree_on_version(memroot: str) -> None:
    # A listing and a stat of the same unchanged file must give the same version, or an open
    # file turns stale (ESTALE) as soon as a listing refreshes its status.
    backend = open_ufs(f"memory://{memroot}", {}, limiter(), 5.0)
    fs = fsspec.filesystem("memory")
    for i in range(50):
        fs.pipe(f"{memroot}/many/f{i}", b"x" * i)
    listed = {e.name: e.version for e in await backend.list("many")}
    stated = {name: (await backend.stat(f"many/{name}")).version for name in listed}
    assert listed == stated


async def test_memory_read_of_shortened_file_is_stale(memroot: str) -> None:
    backend = open_ufs(f"memory://{memroot}", {}, limiter(), 5.0)
    version = (await backend.stat("small")).version
    fsspec.filesystem("memory").pipe(f"{memroot}/small", b"hi")
    with pytest.raises(StaleFile):
        await backend.read("small", 0, 5, version)
    with pytest.raises(StaleFile):
        await backend.read("small", 4, 5, version)


async def test_memory_sees_changes_without_fsspec_cache(memroot: str) -> None:
    backend = open_ufs(f"memory://{memroot}", {}, limiter(), 5.0)
    assert {e.name for e in await backend.list("")} == {"d", "small"}
    fsspec.filesystem("memory").pipe(f"{memroot}/new", b"n")
    assert {e.name for e in await backend.list("")} == {"d", "small", "new"}
    assert (await backend.stat("new")).size == 1


# -- deadlines and error mapping on the generic path


class SlowFs:
    """Just enough of an fsspec filesystem; ``info`` blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.error: OSError | None = None

    def invalidate_cache(self, path: str | None = None) -> None:
        """This fake keeps no cache."""

    def info(self, path: str) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        self.release.wait(5)
        return {"name": path, "size": 1, "type": "file"}


async def test_call_that_blocks_past_the_timeout_raises_backend_timeout() -> None:
    fs = SlowFs()
    backend = UfsBackend(fs, "root", limiter(), 0.05, description="slow://root")
    try:
        with trio.fail_after(3):
            with pytest.raises(BackendTimeout, match="slow://root"):
                await backend.stat("x")
    finally:
        fs.release.set()


async def test_os_errors_become_domain_errors() -> None:
    fs = SlowFs()
    backend = UfsBackend(fs, "root", limiter(), 5.0, description="x")
    fs.error = PermissionError("denied")
    with pytest.raises(PermissionDenied) as info:
        await backend.stat("x")
    assert info.value.__cause__ is fs.error
    fs.error = FileNotFoundError("root/x")
    with pytest.raises(NotFound):
        await backend.stat("x")
    fs.error = OSError("weird")
    with pytest.raises(BackendError):
        await backend.stat("x")
    fs.error = None
    fs.release.set()
    assert (await backend.stat("x")).size == 1


async def test_stores_that_cannot_be_written_say_so_before_any_write() -> None:
    backend = open_ufs("https://example.invalid/data", {}, limiter(), 5.0)
    assert not backend.writes.files
    assert open_ufs("memory://w/", {}, limiter(), 5.0).writes.files


@pytest.mark.parametrize("linked", [False, True])
async def test_a_local_commit_copies_a_staged_file_from_another_file_system(
    tmp_path: Path, linked: bool,
) -> None:
    """The spool on another file system than the source (a tmpfs): a new file is a copy,
    and so is a commit into a file with hard links (written in place)."""
    src = tmp_path / "src"
    src.mkdir()
    if linked:
        (src / "f").write_bytes(b"old")
        os.link(src / "f", src / "g")
    backend = open_ufs(str(src), {}, limiter(), 5.0)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as spool:
        staged = Path(spool) / "staged"
        content = os.urandom(3 << 20 | 5)
        staged.write_bytes(content)
        assert os.stat(spool).st_dev != os.stat(src).st_dev
        done = await backend.commit("f", str(staged), size=len(content))
    assert (src / "f").read_bytes() == content
    assert done.status.size == len(content) and not done.linked
    if linked:
        assert (src / "g").read_bytes() == content
        assert os.stat(src / "g").st_ino == os.stat(src / "f").st_ino
