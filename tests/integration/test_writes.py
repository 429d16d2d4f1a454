"""Writes through a real mount: the tools programs use, the write types, and no data loss.

Failures are injected with ``flaky://`` (tests/support/flakyfs.py): ``open_write`` failing or
hanging stands for an under-storage that refuses or stalls uploads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from alluxiofuse.writes.spool import Record, Spool
from tests.support.flakyfs import clear_failure, set_failure
from tests.support.mounts import (
    DAEMON,
    REPO,
    MountFactory,
    errno_of,
    fusermount_u,
    read_bytes,
    run,
    wait_until,
)

pytestmark = pytest.mark.integration

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def status_of(target: Path | str, cache_dir: Path) -> str:
    return run([*DAEMON, "status", str(target), "--cache-dir", str(cache_dir)]).stdout.decode()


# -- what programs do


def test_tools_write_through_the_mount(mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "old.txt").write_bytes(b"old content\n")
    m = mount(src)
    p = m.path
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "a.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    (payload / "sub").mkdir()
    (payload / "sub" / "b.txt").write_bytes(b"b\n")
    os.utime(payload / "sub" / "b.txt", ns=(1_600_000_000_000_000_000,) * 2)

    run(["cp", "-a", str(payload), str(p / "copy")])
    run(["tar", "-C", str(payload), "-cf", str(tmp_path / "t.tar"), "."])
    (p / "untar").mkdir()
    run(["tar", "-C", str(p / "untar"), "-xf", str(tmp_path / "t.tar")])
    run(["sh", "-c", f"echo appended >> '{p}/old.txt'"])
    run(["truncate", "-s", "3", str(p / "untar" / "sub" / "b.txt")])
    # An editor's save: write a new file, then rename it over the old one.
    (p / ".old.txt.swp").write_bytes(b"edited\n")
    os.rename(p / ".old.txt.swp", p / "edited.txt")

    for tree in ("copy", "untar"):
        assert (src / tree / "a.bin").read_bytes() == (payload / "a.bin").read_bytes()
        assert (src / tree / "sub").is_dir()
    assert (src / "untar" / "sub" / "b.txt").read_bytes() == b"b\n\0"
    # cp -a and tar keep modification times where the source keeps them.
    assert os.stat(src / "copy" / "sub" / "b.txt").st_mtime_ns == 1_600_000_000_000_000_000
    assert os.stat(p / "copy" / "sub" / "b.txt").st_mtime_ns == 1_600_000_000_000_000_000
    assert (src / "old.txt").read_bytes() == b"old content\nappended\n"
    assert (src / "edited.txt").read_bytes() == b"edited\n"
    assert not (src / ".old.txt.swp").exists()
    assert run(["diff", "-r", str(payload), str(p / "copy")]).returncode == 0


def test_attributes_links_and_rename_flags(mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_bytes(b"x")
    (src / "y").write_bytes(b"y")
    p = mount(src).path

    os.chmod(p / "x", 0o600)
    os.utime(p / "x", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    st = os.stat(src / "x")
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o600, 1_500_000_000_000_000_000)
    os.symlink("x", p / "link")
    assert os.readlink(src / "link") == "x"
    assert os.readlink(p / "link") == "x"
    assert errno_of(lambda: renameat2(p / "x", p / "y", RENAME_NOREPLACE)) == errno.EEXIST
    renameat2(p / "x", p / "y", RENAME_EXCHANGE)
    assert ((src / "x").read_bytes(), (src / "y").read_bytes()) == (b"y", b"x")
    assert read_bytes(p / "x") == b"y"


def test_hard_links_on_a_local_source(mount: MountFactory, tmp_path: Path) -> None:
    """Two names, one inode through the mount and in the source; a write through either
    name is the file's; one name removed, the other keeps the file."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "old").write_bytes(b"old\n")
    os.link(src / "old", src / "old-link")  # made behind the mount
    p = mount(src).path
    assert os.stat(p / "old").st_ino == os.stat(p / "old-link").st_ino
    assert os.stat(p / "old").st_nlink == 2

    (p / "a").write_bytes(b"hello\n")
    os.mkdir(p / "d")
    os.link(p / "a", p / "d" / "b")
    a, b = os.stat(p / "a"), os.stat(p / "d" / "b")
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    assert os.stat(src / "a").st_ino == os.stat(src / "d" / "b").st_ino
    with open(p / "d" / "b", "ab") as f:  # a write through one name is the file's
        f.write(b"more\n")
    assert read_bytes(p / "a") == (src / "a").read_bytes() == b"hello\nmore\n"
    assert os.stat(src / "a").st_ino == os.stat(src / "d" / "b").st_ino  # still one file

    # A file being written is linked as it stands, and its later writes are the link's.
    fd = os.open(p / "w", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"first ")
        os.link(p / "w", p / "w-link")
        assert (src / "w-link").read_bytes() == b"first "
        os.write(fd, b"second")
    finally:
        os.close(fd)
    assert read_bytes(p / "w-link") == b"first second"

    os.unlink(p / "a")
    b = os.stat(p / "d" / "b")
    assert b.st_nlink == 1 and read_bytes(p / "d" / "b") == b"hello\nmore\n"
    os.rename(p / "d" / "b", p / "c")
    assert read_bytes(p / "c") == b"hello\nmore\n"
    assert errno_of(lambda: os.link(p / "d", p / "d2")) == errno.EPERM  # not a directory
    # A name renamed over leaves its file to its other names, one link fewer, at once.
    (p / "t").write_bytes(b"t")
    os.link(p / "t", p / "t2")
    assert os.stat(p / "t2").st_nlink == 2
    (p / "s").write_bytes(b"s")
    os.rename(p / "s", p / "t")
    assert os.stat(p / "t2").st_nlink == 1 and read_bytes(p / "t2") == b"t"
    assert read_bytes(p / "t") == b"s"
    assert errno_of(lambda: os.link(p / "c", p / "old")) == errno.EEXIST


def test_special_files_on_a_local_source(mount: MountFactory, tmp_path: Path) -> None:
    """FIFOs, sockets and devices are made in the source, listed and stat-ed with their
    types, modes, owners and device numbers, and work through the mount (the kernel
    serves their opens); renamed and removed like any entry."""
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "old-fifo", 0o600)
    p = mount(src).path
    os.mkfifo(p / "fifo", 0o640)
    os.mknod(p / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(p / "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    os.chown(p / "fifo", 1234, 5678)
    for name, kind in (("fifo", stat.S_IFIFO), ("null", stat.S_IFCHR), ("blk", stat.S_IFBLK),
                       ("old-fifo", stat.S_IFIFO)):
        there, here = os.lstat(src / name), os.lstat(p / name)
        assert stat.S_IFMT(there.st_mode) == stat.S_IFMT(here.st_mode) == kind, name
        assert (here.st_mode, here.st_uid, here.st_gid, here.st_rdev) == (
            there.st_mode, there.st_uid, there.st_gid, there.st_rdev), name
    assert stat.S_IMODE(os.lstat(p / "fifo").st_mode) == 0o640  # the caller's mode, no umask
    assert os.lstat(p / "blk").st_rdev == os.makedev(7, 200)
    listed = {e.name: e for e in os.scandir(p)}
    assert listed["fifo"].stat(follow_symlinks=False).st_rdev == 0
    assert stat.S_ISCHR(listed["null"].stat(follow_symlinks=False).st_mode)

    # A FIFO made through the mount carries bytes between two of its users.
    received: list[bytes] = []

    def reader() -> None:
        with open(p / "fifo", "rb") as f:
            received.append(f.read())

    thread = threading.Thread(target=reader)
    thread.start()
    with open(p / "fifo", "wb") as f:
        f.write(b"through the fifo")
    thread.join(10)
    assert received == [b"through the fifo"]
    # A device node does not open its device: FUSE mounts are nodev unless mounted with
    # `-o dev` (as root, by mount.alluxiofuse).
    assert "nodev" in mount_options(p)
    assert errno_of(lambda: os.open(p / "null", os.O_RDONLY)) == errno.EACCES

    # A socket bound at a path in the mount is connected to through it.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(p / "sock"))
        server.listen(1)
        assert stat.S_ISSOCK(os.lstat(src / "sock").st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(str(p / "sock"))
            conn, _ = server.accept()
            with conn:
                client.sendall(b"hello")
                assert conn.recv(5) == b"hello"

    os.rename(p / "fifo", p / "fifo2")
    assert stat.S_ISFIFO(os.lstat(src / "fifo2").st_mode)
    for name in ("fifo2", "null", "blk", "sock", "old-fifo"):
        os.unlink(p / name)
    assert os.listdir(src) == os.listdir(p) == []


def test_open_unlinked_file_keeps_working(mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    p = mount(src).path
    fd = os.open(p / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"before ")
        os.unlink(p / "f")
        os.write(fd, b"after")
        assert os.pread(fd, 100, 0) == b"before after"
        assert os.fstat(fd).st_size == len(b"before after")
    finally:
        os.close(fd)
    assert not (src / "f").exists()
    assert not (p / "f").exists()


def test_new_file_is_visible_in_the_mount_before_its_first_close(
    mount: MountFactory, tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    p = mount(src).path
    with open(p / "growing", "wb") as f:
        f.write(b"12345")
        f.flush()
        assert os.listdir(p) == ["growing"]
        assert read_bytes(p / "growing") == b"12345"  # another open in the mount
        assert not (src / "growing").exists()  # other clients: at close (close-to-open)
    assert (src / "growing").read_bytes() == b"12345"


# -- no data loss


@pytest.mark.expect_log(r"^flush: BackendError: .*injected failure in open_write$", count=2)
@pytest.mark.expect_log(r"^rename: BackendError: .*injected failure in open_write$", count=1)
@pytest.mark.expect_log(r"^(keep|renamed-over): upload owed after a failed commit", count=2)
@pytest.mark.expect_log(r"^upload of (keep|renamed-over) failed \(BackendError: .*injected failure")
def test_failed_upload_is_eio_at_close_and_the_bytes_land_later(
    mount: MountFactory, tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep").write_bytes(b"old")
    control = str(tmp_path / "control")
    set_failure(control, ["open_write"])
    m = mount(f"flaky://{src}", f"--ufs-option=control={control}")
    fd = os.open(m.path / "keep", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new content")
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.EIO
    assert (src / "keep").read_bytes() == b"old"  # never replaced by part of the new
    # A replacing rename commits the new file first: it fails, and the target is intact.
    fd = os.open(m.path / "renamed-over", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"never committed")
    assert errno_of(lambda: os.rename(m.path / "renamed-over", m.path / "keep")) == errno.EIO
    assert (src / "keep").read_bytes() == b"old"
    with pytest.raises(OSError):
        os.close(fd)
    # The released files are owed and retried in the background once the store is back.
    clear_failure(control)
    assert wait_until(lambda: (src / "keep").exists()
                      and (src / "keep").read_bytes() == b"new content", 30)
    assert wait_until(lambda: (src / "renamed-over").exists(), 30)
    assert (src / "renamed-over").read_bytes() == b"never committed"
    assert "keep: upload owed after a failed commit; its bytes are in" in m.log_text()


@pytest.mark.timeout(180)
def test_async_through_uploads_survive_kill_9(mount: MountFactory, tmp_path: Path) -> None:
    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    control = str(tmp_path / "control")
    set_failure(control, ["open_write"], mode="hang")  # every upload stalls
    options = (f"--ufs-option=control={control}", "--write-type", "ASYNC_THROUGH",
               "--cache-dir", str(cache))
    m = mount(f"flaky://{src}", *options)
    files = {f"d/f{i}": os.urandom(1000 * i + 1) for i in range(12)}
    (m.path / "d").mkdir()
    for name, data in files.items():
        (m.path / name).write_bytes(data)  # close returns: journaled, not uploaded
    for name, data in files.items():
        assert read_bytes(m.path / name) == data  # read-your-writes meanwhile
    assert sorted(os.listdir(m.path / "d")) == sorted(n[2:] for n in files)
    assert "12 uploads pending (its daemon is running" in status_of(m.path, cache)
    assert not any((src / name).exists() for name in files)

    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(10)
    fusermount_u(m.path)
    assert "12 uploads pending (no daemon is running: they resume" in status_of(
        f"flaky://{src}", cache)
    clear_failure(control)

    again = mount(f"flaky://{src}", *options)
    assert wait_until(lambda: all((src / n).exists() and (src / n).read_bytes() == d
                                  for n, d in files.items()), 60), status_of(again.path, cache)
    assert "0 uploads pending" in status_of(again.path, cache)
    assert "resuming 12 uploads" in again.log_text()



@pytest.mark.expect_log(r"^an owed upload of lost[123] has lost its data", count=3, level="ERROR")
def test_status_and_the_pending_uploads_metric_count_the_same_uploads(
    mount: MountFactory, tmp_path: Path,
) -> None:
    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    # Owed from an earlier run, and never to be uploaded: their data files are lost, so
    # the uploader never queues them, yet the journal still owes them.
    spool = Spool.open(str(cache), str(src))
    for seq in (1, 2, 3):
        spool.journal(Record(data=f"{seq}.data", path=f"lost{seq}", size=100 * seq))
    spool.close()
    m = mount(src, "--cache-dir", str(cache))
    assert "3 uploads pending (its daemon is running" in status_of(m.path, cache)
    scrape = m.scrape()
    assert scrape("alluxiofuse_pending_uploads") == 3
    assert scrape("alluxiofuse_pending_upload_bytes") == 600
    assert "has lost its data file" in m.log_text()


@pytest.mark.timeout(180)
@pytest.mark.expect_log(r"^a file being written when the last daemon stopped was never", count=2)
def test_after_kill_9_the_spool_keeps_only_what_is_nowhere_else(
    mount: MountFactory, tmp_path: Path,
) -> None:
    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    options = ("--cache-dir", str(cache))

    def crash_while_writing(name: str) -> Path:
        """A daemon dies with two files open: one committed by fsync (its data file is
        the source's file now, linked into place), one whose bytes are only in the spool."""
        m = mount(src, *options)
        [spool] = cache.iterdir()
        assert wait_until(lambda: len(os.listdir(spool / "data")) >= 16, 10)  # made ahead
        committed = os.open(m.path / f"{name}-committed", os.O_WRONLY | os.O_CREAT, 0o644)
        unflushed = os.open(m.path / name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(committed, b"committed")
        os.fsync(committed)
        os.write(unflushed, name.encode())
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(10)
        for fd in (committed, unflushed):
            with contextlib.suppress(OSError):  # no daemon to answer the flush
                os.close(fd)
        fusermount_u(m.path)
        return spool

    def orphans(spool: Path) -> dict[bytes, int]:
        return {p.read_bytes(): p.stat().st_nlink for p in (spool / "orphaned").iterdir()}

    spool = crash_while_writing("first")
    m = mount(src, *options)
    # Only the bytes nowhere else are kept, and the log says so of those alone.
    assert orphans(spool) == {b"first": 1}
    assert (src / "first-committed").stat().st_nlink == 1
    assert m.log_text().count("its bytes are kept in") == 1
    m.close()
    spool = crash_while_writing("second")  # the same steps: the same data file names
    # What a crash in the middle of a local commit leaves (a note names the temporary
    # file beside the target), and a record half written; a temporary file no note of
    # this spool names belongs to someone else and stays.
    (src / ".alluxiofuse-00000000000000aa").write_bytes(b"half committed")
    (spool / "commits" / ".alluxiofuse-00000000000000aa").write_bytes(
        b".alluxiofuse-00000000000000aa")
    (src / ".alluxiofuse-00000000000000bb").write_bytes(b"another daemon's")
    (spool / "journal" / "99.json.tmp").write_bytes(b"{")
    mount(src, *options)
    assert orphans(spool) == {b"first": 1, b"second": 1}  # no orphan lands on another
    assert sorted(os.listdir(src)) == [".alluxiofuse-00000000000000bb", "first-committed",
                                       "second-committed"]
    assert os.listdir(spool / "commits") == []
    assert os.listdir(spool / "journal") == []

@pytest.mark.timeout(120)
def test_sigterm_drains_owed_uploads_before_exiting(tmp_path: Path) -> None:
    src, mnt, cache = tmp_path / "src", tmp_path / "mnt", tmp_path / "cache"
    src.mkdir()
    mnt.mkdir()
    control = str(tmp_path / "control")
    set_failure(control, ["open_write"], mode="hang")
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen(
        [*DAEMON, "mount", f"flaky://{src}", str(mnt), "-f", "--write-type", "ASYNC_THROUGH",
         "--cache-dir", str(cache), f"--ufs-option=control={control}", "--log-file", str(log)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert wait_until(lambda: os.path.ismount(mnt), 30)
        data = os.urandom(2 * 1024 * 1024)
        (mnt / "big").write_bytes(data)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert proc.poll() is None  # still draining: the upload is stalled
        clear_failure(control)
        assert proc.wait(60) == 0
        assert hashlib.sha256((src / "big").read_bytes()).digest() == hashlib.sha256(
            data).digest()
        assert not os.path.ismount(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        fusermount_u(mnt)



def test_an_open_unlinked_file_has_no_links(mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    p = mount(src).path
    (p / "f").write_bytes(b"committed")  # its spool file was linked into the source
    assert os.stat(p / "f").st_nlink == 1
    for flags in (os.O_RDONLY, os.O_RDWR):
        (p / "g").write_bytes(b"x")
        fd = os.open(p / "g", flags)
        try:
            assert os.fstat(fd).st_nlink == 1
            os.unlink(p / "g")
            assert os.fstat(fd).st_nlink == 0
        finally:
            os.close(fd)


@pytest.mark.expect_log(r"^fsync: BackendError: .*injected failure in open_write$", count=1)
def test_a_sparse_file_whose_commit_failed_reads_back_its_bytes(
    mount: MountFactory, tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    control = str(tmp_path / "control")
    set_failure(control, ["open_write"])
    p = mount(f"flaky://{src}", f"--ufs-option=control={control}").path
    gib2 = 2 << 30
    fd = os.open(p / "sparse", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"head")
        os.ftruncate(fd, gib2 + 10)  # a hole of 2 GiB costs nothing on disk
        os.pwrite(fd, b"tail", gib2 + 2)
        assert errno_of(lambda: os.fsync(fd)) == errno.EIO  # the commit fails
        assert os.pread(fd, 8, 0) == b"head" + bytes(4)
        assert os.pread(fd, 4, 1 << 30) == bytes(4)
        assert os.pread(fd, 8, gib2 + 1) == b"\0tail\0\0\0"
        assert os.pread(fd, 100, gib2 + 6) == bytes(4)
        assert os.pread(fd, 10, gib2 + 10) == b""
        os.unlink(p / "sparse")  # never to be committed: nothing owed at unmount
    finally:
        os.close(fd)
    assert not (src / "sparse").exists()


def mount_options(path: Path) -> list[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(path):
            return fields[5].split(",")
    raise AssertionError(f"{path} is not mounted")
