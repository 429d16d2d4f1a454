"""Faults of the spool's disk through real mounts: a full disk (a small tmpfs as
--cache-dir) and a failing one (tests/support/faultfs.py, a FUSE passthrough that returns
EIO on demand), under a local-directory source and an S3 one, THROUGH and ASYNC_THROUGH.

The spool is on a file system of its own here: device-mapper targets (dm-error,
dm-flakey) are not available on every test machine, a FUSE passthrough is wherever these
tests run at all (they need /dev/fuse and root).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.checklogs import ExpectLog
from tests.support.disks import fill
from tests.support.faultfs import set_faults
from tests.support.mounts import REPO, Mount, MountFactory, fusermount_u, ismount, wait_until
from tests.support.s3server import S3Server, moto_s3

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MiB = 1 << 20
ROOT = "root"  # the mounted prefix inside the bucket, and a suffix of its own per test


class Source:
    """The mounted source, read and written behind the mount."""

    def __init__(self, url: str, options: list[str], get: Callable[[str], bytes],
                 put: Callable[[str, bytes], None]) -> None:
        self.url, self.options, self.get, self.put = url, options, get, put


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """One moto server for the module (a server start and stop cost a second); each test
    mounts a prefix of its own in its bucket."""
    with moto_s3() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def sources(request: pytest.FixtureRequest) -> Iterator[Callable[[Path], Source]]:
    """``sources(disk)``: a local directory on ``disk`` (the spool's disk: a local commit
    links its data file there), or an S3 bucket (moto on loopback).

    The cases whose fault strikes before anything reaches the source (the data file's
    fsync, the journal) run on the local source only: the S3 one would take the same path
    to the same failure."""
    if request.param == "local":
        def local(disk: Path) -> Source:
            src = disk / "src"
            src.mkdir()
            return Source(str(src), [], lambda name: (src / name).read_bytes(),
                          lambda name, data: _write(src / name, data))
        yield local
        return
    s3: S3Server = request.getfixturevalue("s3")
    root = f"{ROOT}-{uuid.uuid4().hex}"
    s3.fs().pipe_file(f"{s3.bucket}/{root}/", b"")
    options = [f"--ufs-option={k}={v if isinstance(v, str) else json.dumps(v)}"
               for k, v in s3.ufs_options.items()]
    yield lambda disk: _s3_source(s3, root, options)


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _s3_source(s3: S3Server, root: str, options: list[str]) -> Source:
    def get(name: str) -> bytes:
        return bytes(s3.fs().cat_file(f"{s3.bucket}/{root}/{name}"))

    def put(name: str, data: bytes) -> None:
        s3.fs().pipe_file(f"{s3.bucket}/{root}/{name}", data)
    return Source(s3.url(root), options, get, put)


@pytest.fixture(params=["THROUGH", "ASYNC_THROUGH"])
def write_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 8 MiB: the spool's disk, full at once."""
    disk = tmp_path / "small-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(disk)],
                   check=True, timeout=30)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False, timeout=30)


@pytest.fixture
def faulty_disk(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served by tests/support/faultfs.py: (its mount point, its control
    file for ``set_faults``)."""
    backing, disk, control = tmp_path / "backing", tmp_path / "faulty-disk", tmp_path / "faults"
    backing.mkdir()
    disk.mkdir()
    set_faults(str(control), {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.faultfs", str(backing), str(disk), str(control)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: ismount(disk) or proc.poll() is not None, 20)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        yield disk, str(control)
    finally:
        set_faults(str(control), {})
        fusermount_u(disk)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def mount_on(mount: MountFactory, source: Source, cache: Path, write_type: str) -> Mount:
    # The bound is far above the disk: the disk refuses first. Uploads that cannot land
    # are waited for a short while at unmount (they stay journaled).
    return mount(source.url, *source.options, "--cache-dir", str(cache), "--write-type",
                 write_type, "--cache-size", "1GiB", "--drain-timeout", "5")


def spool_of(cache: Path) -> Path:
    (spool,) = [p for p in cache.iterdir() if p.is_dir() and (p / "journal").is_dir()]
    return spool


def write_until_error(path: Path, chunk: bytes, count: int) -> tuple[int | None, int | None]:
    """Write ``count`` chunks to ``path`` (created or truncated); (the errno of the first
    write that failed, the errno of the close)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    write_errno = close_errno = None
    try:
        for _ in range(count):
            os.write(fd, chunk)
    except OSError as e:
        write_errno = e.errno
    finally:
        try:
            os.close(fd)
        except OSError as e:
            close_errno = e.errno
    return write_errno, close_errno


def close_errno_of(path: Path, data: bytes, *, durable: bool = False) -> int | None:
    """Write ``data`` to ``path`` whole (each write succeeds); the errno of the fsync
    (``durable``) or the close, None if it succeeded."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.close(fd)
        return e.errno
    try:
        os.close(fd)
    except OSError as e:
        return e.errno
    return None


def landed(source: Source, name: str, data: bytes) -> bool:
    try:
        return source.get(name) == data
    except (OSError, FileNotFoundError):
        return False


def restart_cleanly(m: Mount, mount: MountFactory, source: Source, cache: Path,
                    write_type: str) -> Mount:
    """Unmount ``m`` and mount the source again over the same spool; the new mount."""
    assert m.unmount() == 0
    again = mount_on(mount, source, cache, write_type)
    journal = spool_of(cache) / "journal"
    assert sorted(os.listdir(journal)) == []
    return again


# -- a full disk


def test_a_full_spool_disk_fails_the_write_and_keeps_the_committed_file(
    sources: Callable[[Path], Source], write_type: str, small_disk: Path,
    mount: MountFactory,
    expect_log: ExpectLog,
) -> None:
    expect_log(r"^big\.bin: a write to the spool failed \(NoSpace", count=1)
    source = sources(small_disk)
    old, other = os.urandom(MiB), os.urandom(MiB)
    source.put("big.bin", old)
    source.put("other.bin", other)
    cache = small_disk / "cache"
    m = mount_on(mount, source, cache, write_type)
    assert (m.path / "other.bin").read_bytes() == other
    # 16 MiB into 8: the disk is full part-way; the write that finds it full says so,
    # and so does the close, which commits nothing.
    assert write_until_error(m.path / "big.bin", os.urandom(MiB), 16) == (errno.ENOSPC,
                                                                          errno.ENOSPC)
    assert (m.path / "other.bin").read_bytes() == other  # reads go on
    assert source.get("big.bin") == old
    assert (m.path / "big.bin").read_bytes() == old
    spool = spool_of(cache)
    assert os.listdir(spool / "journal") == []
    assert os.listdir(spool / "data") == [] or all(
        os.path.getsize(spool / "data" / n) == 0 for n in os.listdir(spool / "data"))
    # The failed file's bytes were dropped with it: the disk has room again, and the
    # next write of the file lands, without a restart.
    new = os.urandom(2 * MiB)
    (m.path / "big.bin").write_bytes(new)
    assert wait_until(lambda: landed(source, "big.bin", new), 30)
    assert (m.path / "big.bin").read_bytes() == new
    again = restart_cleanly(m, mount, source, cache, write_type)
    assert (again.path / "big.bin").read_bytes() == new
    assert "resuming" not in again.log_text()


def test_space_freed_by_another_lets_the_next_write_succeed(
    sources: Callable[[Path], Source], write_type: str, small_disk: Path,
    mount: MountFactory,
    expect_log: ExpectLog,
) -> None:
    expect_log(r"^f: a write to the spool failed \(NoSpace", count=1)
    source = sources(small_disk)
    old = os.urandom(MiB)
    source.put("f", old)
    cache = small_disk / "cache"
    m = mount_on(mount, source, cache, write_type)
    ballast = fill(small_disk)
    new = os.urandom(2 * MiB)
    assert write_until_error(m.path / "f", new, 1) == (errno.ENOSPC, errno.ENOSPC)
    assert source.get("f") == old
    # A daemon killed now, and started again on the disk still full, comes up and
    # serves reads; the journal owes nothing.
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(10)
    fusermount_u(m.path)
    m = mount_on(mount, source, cache, write_type)
    assert (m.path / "f").read_bytes() == old
    assert os.listdir(spool_of(cache) / "journal") == []
    ballast.unlink()
    (m.path / "f").write_bytes(new)
    assert wait_until(lambda: landed(source, "f", new), 30)
    restart_cleanly(m, mount, source, cache, write_type)


@pytest.mark.parametrize("sources", ["local"], indirect=True)
@pytest.mark.expect_log(r"^f: closed with a failed upload, and it cannot be retried "
                        r"\(\[Errno 28\] No space.*\); its bytes are kept in "
                        r".*/orphaned/\d+\.data$", count=1, level="ERROR")
def test_a_journal_record_the_full_disk_refuses_fails_the_close_and_leaves_no_record(
    sources: Callable[[Path], Source], small_disk: Path, mount: MountFactory,
) -> None:
    source = sources(small_disk)
    old, new = os.urandom(MiB), os.urandom(MiB)
    source.put("f", old)
    cache = small_disk / "cache"
    m = mount_on(mount, source, cache, "ASYNC_THROUGH")
    fd = os.open(m.path / "f", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, new)  # all in the spool
    ballast = fill(small_disk)  # no room left for the record
    with pytest.raises(OSError) as closing:
        os.close(fd)
    assert closing.value.errno == errno.ENOSPC
    # The release (after the close returned) journals it once more, and fails too.
    assert wait_until(lambda: "cannot be retried" in m.log_text(), 20)
    spool = spool_of(cache)
    assert os.listdir(spool / "journal") == []  # no record, not even half of one
    assert [p.read_bytes() for p in (spool / "orphaned").iterdir()] == [new]
    assert source.get("f") == old
    ballast.unlink()
    assert m.unmount() == 0
    again = mount_on(mount, source, cache, "ASYNC_THROUGH")
    assert os.listdir(spool / "journal") == []
    assert [p.read_bytes() for p in (spool / "orphaned").iterdir()] == [new]
    assert (again.path / "f").read_bytes() == old
    assert source.get("f") == old


# -- a failing disk


@pytest.mark.expect_log(r"^f: a write to the spool failed \(BackendError", count=1)
def test_eio_at_write_fails_the_write_and_the_close_and_keeps_the_committed_file(
    sources: Callable[[Path], Source], write_type: str, faulty_disk: tuple[Path, str],
    mount: MountFactory,
    expect_log: ExpectLog,
) -> None:
    expect_log(r"^(write|flush): BackendError: ", count=None)
    disk, control = faulty_disk
    source = sources(disk)
    old, other = os.urandom(MiB), os.urandom(MiB)
    source.put("f", old)
    source.put("other", other)
    cache = disk / "cache"
    m = mount_on(mount, source, cache, write_type)
    set_faults(control, {"write": "EIO"}, match="/data/")
    assert write_until_error(m.path / "f", os.urandom(MiB), 4) == (errno.EIO, errno.EIO)
    assert (m.path / "other").read_bytes() == other
    set_faults(control, {})
    assert source.get("f") == old
    assert os.listdir(spool_of(cache) / "journal") == []
    new = os.urandom(2 * MiB)
    (m.path / "f").write_bytes(new)
    assert wait_until(lambda: landed(source, "f", new), 30)
    restart_cleanly(m, mount, source, cache, write_type)


@pytest.mark.parametrize("sources", ["local"], indirect=True)
@pytest.mark.parametrize("durable", [False, True], ids=["close", "fsync"])
@pytest.mark.expect_log(r"^f: a write to the spool failed \(BackendError", count=1)
@pytest.mark.expect_log(r"^(flush|fsync): BackendError: ", count=None)
def test_eio_at_the_fsync_of_an_async_close_commits_nothing(
    sources: Callable[[Path], Source], faulty_disk: tuple[Path, str], mount: MountFactory,
    durable: bool,
) -> None:
    disk, control = faulty_disk
    source = sources(disk)
    old, new = os.urandom(MiB), os.urandom(MiB)
    source.put("f", old)
    cache = disk / "cache"
    m = mount_on(mount, source, cache, "ASYNC_THROUGH")
    set_faults(control, {"fsync": "EIO"}, match="/data/")
    assert close_errno_of(m.path / "f", new, durable=durable) == errno.EIO
    # The release (after the close returned) drops it.
    assert wait_until(lambda: "closed incomplete" in m.log_text(), 20)
    set_faults(control, {})
    assert os.listdir(spool_of(cache) / "journal") == []
    assert (m.path / "f").read_bytes() == old
    assert source.get("f") == old
    restart_cleanly(m, mount, source, cache, "ASYNC_THROUGH")
    assert source.get("f") == old


@pytest.mark.parametrize("durable", [False, True], ids=["close", "fsync"])
@pytest.mark.expect_log(r"^(flush|fsync): BackendError: ", count=None)
@pytest.mark.expect_log(r"^f: upload owed after a failed commit", count=1)
@pytest.mark.expect_log(r"^upload of f failed \(BackendError: .*Input/output error", count=None)
def test_eio_reading_the_spool_at_a_through_close_keeps_the_old_version_until_it_reads(
    sources: Callable[[Path], Source], faulty_disk: tuple[Path, str], mount: MountFactory,
    durable: bool,
) -> None:
    disk, control = faulty_disk
    source = sources(disk)
    old, new = os.urandom(MiB), os.urandom(MiB)
    source.put("f", old)
    cache = disk / "cache"
    m = mount_on(mount, source, cache, "THROUGH")
    # What the commit does with the data file: an upload reads it, a local commit links
    # it into the source.
    set_faults(control, {"link" if source.options == [] else "read": "EIO"}, match="/data/")
    assert close_errno_of(m.path / "f", new, durable=durable) == errno.EIO
    assert source.get("f") == old
    assert wait_until(lambda: "upload of f failed" in m.log_text(), 20)
    assert source.get("f") == old  # nothing lands while the spool cannot be read
    set_faults(control, {})
    # Every write succeeded: the close's upload is owed (as for any failed commit) and
    # lands whole once the spool reads again.
    assert wait_until(lambda: landed(source, "f", new), 30)
    assert wait_until(lambda: os.listdir(spool_of(cache) / "journal") == [], 10)


@pytest.mark.parametrize("sources", ["local"], indirect=True)
@pytest.mark.parametrize("fault", [{"write": "EIO"}, {"fsync": "EIO"}, {"rename": "EIO"},
                                   {"fsyncdir": "EIO"}], ids=lambda f: next(iter(f)))
@pytest.mark.expect_log(r"^flush: BackendError: ", count=1)
@pytest.mark.expect_log(r"^f: closed with a failed upload, and it cannot be retried "
                        r"\(\[Errno 5\] Input/output error.*\); its bytes are kept in "
                        r".*/orphaned/\d+\.data$", count=1, level="ERROR")
def test_eio_writing_the_journal_fails_the_close_and_leaves_no_record(
    sources: Callable[[Path], Source], faulty_disk: tuple[Path, str], mount: MountFactory,
    fault: dict[str, str],
) -> None:
    disk, control = faulty_disk
    source = sources(disk)
    old, new, other = os.urandom(MiB), os.urandom(MiB), os.urandom(MiB)
    source.put("f", old)
    source.put("other", other)
    cache = disk / "cache"
    m = mount_on(mount, source, cache, "ASYNC_THROUGH")
    set_faults(control, fault, match="/journal/")
    assert close_errno_of(m.path / "f", new) == errno.EIO
    assert (m.path / "other").read_bytes() == other
    # The release (after the close returned) journals it once more, and fails too.
    assert wait_until(lambda: "cannot be retried" in m.log_text(), 20)
    set_faults(control, {})
    spool = spool_of(cache)
    assert os.listdir(spool / "journal") == []
    assert [p.read_bytes() for p in (spool / "orphaned").iterdir()] == [new]
    assert source.get("f") == old
    assert m.unmount() == 0
    again = mount_on(mount, source, cache, "ASYNC_THROUGH")
    assert os.listdir(spool / "journal") == []
    assert [p.read_bytes() for p in (spool / "orphaned").iterdir()] == [new]
    assert (again.path / "f").read_bytes() == old
    assert source.get("f") == old


@pytest.mark.expect_log(r"^a journal record the last daemon left cannot be read .*: set "
                        r"aside as .*/journal/7\.unreadable", count=1)
@pytest.mark.expect_log(r"^a file being written when the last daemon stopped was never "
                        r"closed; its bytes are kept in .*/orphaned/7\.data", count=1)
def test_a_torn_journal_record_is_set_aside_and_the_whole_ones_are_uploaded(
    sources: Callable[[Path], Source], tmp_path: Path, mount: MountFactory,
) -> None:
    source = sources(tmp_path)
    old, owed, torn = os.urandom(MiB), os.urandom(MiB), os.urandom(MiB)
    source.put("torn", old)
    cache = tmp_path / "cache"
    m = mount_on(mount, source, cache, "ASYNC_THROUGH")
    m.proc.send_signal(signal.SIGKILL)  # leaves its spool as a crash does
    m.proc.wait(10)
    fusermount_u(m.path)
    spool = spool_of(cache)
    (spool / "data" / "6.data").write_bytes(owed)
    (spool / "journal" / "6.json").write_text(json.dumps(
        {"data": "6.data", "path": "owed", "size": len(owed), "closed_ns": 1}))
    (spool / "data" / "7.data").write_bytes(torn)
    (spool / "journal" / "7.json").write_bytes(b'{"data": "7.data", "path": "to\0\0\0\0')
    again = mount_on(mount, source, cache, "ASYNC_THROUGH")
    assert wait_until(lambda: landed(source, "owed", owed), 30)
    assert (again.path / "torn").read_bytes() == old
    assert source.get("torn") == old
    assert sorted(os.listdir(spool / "journal")) == ["7.unreadable"]
    assert (spool / "orphaned" / "7.data").read_bytes() == torn
    assert "resuming 1 uploads" in again.log_text()
