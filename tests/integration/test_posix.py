"""POSIX rules a conformance suite (pjdfstest) checks, through a real mount of a local
directory: modes as asked, trees deeper than PATH_MAX, parents' attributes after a change,
and SIGHUP dropping the kernel's negative entries."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.mounts import MountFactory, errno_of, read_bytes, wait_until
from tests.support.s3server import moto_s3

pytestmark = pytest.mark.integration

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_mkdir_keeps_the_mode_the_kernel_asks_for(mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with umask(0o077):  # the daemon inherits a umask that would take bits away
        m = mount(src)
    with umask(0):
        for name, mode in (("open", 0o777), ("sticky", 0o1777), ("odd", 0o751),
                           ("private", 0o700)):
            os.mkdir(m.path / name, mode)
            assert stat.S_IMODE(os.stat(src / name).st_mode) == mode, name
            assert stat.S_IMODE(os.stat(m.path / name).st_mode) == mode, name
        os.close(os.open(m.path / "file", os.O_WRONLY | os.O_CREAT, 0o666))
        assert stat.S_IMODE(os.stat(src / "file").st_mode) == 0o666
        assert stat.S_IMODE(os.stat(m.path / "file").st_mode) == 0o666
    with umask(0o027):  # the caller's umask is the kernel's to apply: applied once
        os.mkdir(m.path / "masked", 0o777)
    assert stat.S_IMODE(os.stat(src / "masked").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(m.path / "masked").st_mode) == 0o750


# 30 levels of 200-byte names: 6,030 bytes from the mount's root, more than PATH_MAX (4,096).
_DEEP = [f"{i:02d}" + "d" * 198 for i in range(30)]


def _open_dirs(top: Path, names: list[str]) -> list[int]:
    """Descriptors of ``top`` and each directory below it along ``names``, each opened
    relative to the one above, as a program that ``cd``s down the tree works."""
    fds = [os.open(top, _DIR)]
    try:
        for name in names:
            fds.append(os.open(name, _DIR, dir_fd=fds[-1]))
    except BaseException:
        _close(fds)
        raise
    return fds


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _read_at(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def test_a_tree_deeper_than_path_max_is_made_used_and_removed_through_the_mount(
    mount: MountFactory, tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    m = mount(src)
    data = os.urandom(300_001)
    fds = [os.open(m.path, _DIR)]
    try:
        for name in _DEEP:
            os.mkdir(name, 0o755, dir_fd=fds[-1])
            fds.append(os.open(name, _DIR, dir_fd=fds[-1]))
        bottom = fds[-1]
        fd = os.open("f", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640,
                     dir_fd=bottom)
        try:
            assert os.write(fd, data) == len(data)
        finally:
            os.close(fd)  # the commit: raises if it fails
        source = _open_dirs(src, _DEEP)
        try:
            assert _read_at(source[-1], "f") == data  # committed, whole
            assert stat.S_IMODE(os.stat("f", dir_fd=source[-1]).st_mode) == 0o640
        finally:
            _close(source)
        assert _read_at(bottom, "f") == data

        # Every other operation down there too.
        os.rename("f", "g", src_dir_fd=bottom, dst_dir_fd=bottom)
        os.symlink("g", "s", dir_fd=bottom)
        assert os.readlink("s", dir_fd=bottom) == "g"
        os.chmod("g", 0o600, dir_fd=bottom)
        os.utime("g", ns=(1_000_000_000, 2_000_000_000), dir_fd=bottom)
        st = os.stat("g", dir_fd=bottom)
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size) == (
            0o600, 2_000_000_000, len(data))
        with open(os.open("g", os.O_WRONLY | os.O_APPEND, dir_fd=bottom), "wb") as f:
            f.write(b"more")
        assert _read_at(bottom, "g") == data + b"more"
        listed = os.open(".", _DIR, dir_fd=bottom)  # a listing is a snapshot of its open
        try:
            assert sorted(os.listdir(listed)) == ["g", "s"]
        finally:
            os.close(listed)

        os.unlink("g", dir_fd=bottom)
        os.unlink("s", dir_fd=bottom)
        for level in range(len(_DEEP) - 1, -1, -1):
            os.close(fds.pop())
            os.rmdir(_DEEP[level], dir_fd=fds[-1])
    finally:
        _close(fds)
    assert os.listdir(src) == []
    assert os.listdir(m.path) == []


LONG = ("--attr-timeout", "60", "--entry-timeout", "60", "--dir-timeout", "60",
        "--negative-timeout", "60")


def _times_and_links(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_mtime_ns, st.st_ctime_ns, st.st_nlink


def test_a_change_through_the_mount_shows_in_its_directory_at_once(
    mount: MountFactory, tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    m = mount(src, *LONG)  # every attribute cached for 60 s, by the daemon and the kernel

    def write_then_close() -> None:
        with open(m.path / "a" / "new", "wb") as f:
            f.write(b"x")
            os.stat(m.path / "a")  # the kernel caches it while the file is not yet in it
        # The close put the file in the source: that changed the directory.

    steps = [
        ("mkdir", lambda: os.mkdir(m.path / "a" / "sub"), ["a"]),
        ("create", lambda: (m.path / "a" / "f").write_bytes(b"x"), ["a"]),
        ("symlink", lambda: os.symlink("f", m.path / "a" / "l"), ["a"]),
        ("rename in a directory", lambda: os.rename(m.path / "a" / "f", m.path / "a" / "g"),
         ["a", "a/g"]),
        ("rename across", lambda: os.rename(m.path / "a" / "sub", m.path / "b" / "sub"),
         ["a", "b", "b/sub"]),
        ("close of a new file", write_then_close, ["a"]),
        ("rename out", lambda: os.rename(m.path / "a" / "new", m.path / "b" / "moved"),
         ["a", "b"]),
        ("unlink", lambda: os.unlink(m.path / "a" / "g"), ["a"]),
        ("rmdir", lambda: os.rmdir(m.path / "b" / "sub"), ["b"]),
        ("chmod", lambda: os.chmod(m.path / "b" / "moved", 0o600), ["b/moved"]),
    ]
    for what, change, paths in steps:
        before = {p: _times_and_links(m.path / p) for p in paths if os.path.lexists(m.path / p)}
        time.sleep(0.02)  # past the file system's timestamp granularity
        change()
        for p in paths:
            assert _times_and_links(m.path / p) == _times_and_links(src / p), (what, p)
            assert _times_and_links(m.path / p) != before.get(p), (what, p)


def test_sighup_makes_a_name_made_in_the_source_show_at_once(
    mount: MountFactory, tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    m = mount(src, *LONG)
    names = [m.path / "new", m.path / "d" / "new", m.path / "d" / "newdir"]
    for path in names:  # misses, now negative entries in the kernel for 60 s
        assert errno_of(lambda path=path: os.stat(path)) == errno.ENOENT
    (src / "new").write_bytes(b"top")
    (src / "d" / "new").write_bytes(b"below")
    (src / "d" / "newdir").mkdir()
    time.sleep(0.2)
    assert errno_of(lambda: os.stat(names[1])) == errno.ENOENT  # cached for 60 s
    m.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "dropped the metadata and page caches" in m.log_text(), 10)
    assert os.stat(names[0]).st_size == 3  # by name, without listing the directory first
    assert read_bytes(names[1]) == b"below"
    assert os.path.isdir(names[2])


@pytest.mark.timeout(120)
def test_an_object_store_refuses_at_create_a_key_it_cannot_keep(
    mount: MountFactory, tmp_path: Path,
) -> None:
    """S3 keys are at most 1,024 bytes: a longer one could never be committed."""
    with moto_s3() as s3:
        s3.fs().pipe_file(f"{s3.bucket}/tree/", b"")
        options = [f"--ufs-option={k}={v if isinstance(v, str) else json.dumps(v)}"
                   for k, v in s3.ufs_options.items()]
        m = mount(s3.url("tree"), *options)
        deep = m.path.joinpath(*["d" * 250] * 4)  # "tree/" and 1,003 bytes
        deep.mkdir(parents=True)
        (deep / ("f" * 14)).write_bytes(b"fits")  # a 1,023-byte key
        too_long = deep / ("f" * 100)
        assert errno_of(lambda: too_long.write_bytes(b"x")) == errno.ENAMETOOLONG
        assert errno_of(lambda: too_long.mkdir()) == errno.ENAMETOOLONG
        assert errno_of(lambda: (deep / ("f" * 14)).rename(too_long)) == errno.ENAMETOOLONG
        files = [k for k in s3.fs().find(f"{s3.bucket}/tree") if not k.endswith("/")]
        assert [k.rpartition("/")[2] for k in files] == ["f" * 14]  # nothing else made
        assert read_bytes(deep / ("f" * 14)) == b"fits"


def test_a_create_in_a_directory_gone_from_the_source_fails_at_once(
    mount: MountFactory, tmp_path: Path,
) -> None:
    """Accepted, the new file's commit could never land: its upload would be owed for ever."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "e").mkdir()
    (src / "other").mkdir()
    # The kernel keeps what it learns of "d" and "e" for 60 s; the daemon's cache holds one
    # status (about 900 bytes), so it has forgotten theirs by the time the file is made.
    m = mount(src, *LONG, "--negative-timeout", "0", "--metadata-cache-size", "1000")
    assert os.path.isdir(m.path / "d")
    assert os.path.isdir(m.path / "e")
    assert os.path.isdir(m.path / "other")
    (src / "d").rmdir()
    (src / "e").rmdir()
    (src / "e").write_bytes(b"now a file")
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    for path, code in ((m.path / "d" / "new", errno.ENOENT), (m.path / "e" / "new", errno.ENOTDIR)):
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as e:
            assert e.errno == code, path
        else:
            with contextlib.suppress(OSError):  # the commit fails
                os.close(fd)
            pytest.fail(f"{path} was created: its commit can never land")
    assert sorted(os.listdir(src)) == ["e", "other"]
