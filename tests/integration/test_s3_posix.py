"""POSIX behaviour of an S3 mount (moto on loopback): directory renames, and the modes,
owners and times kept in object metadata."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mounts import Mount, MountFactory, errno_of, run, wait_until
from tests.support.needs import need
from tests.support.s3server import S3Server, moto_s3

pytestmark = pytest.mark.integration

ROOT = "root"  # the mounted prefix inside the bucket


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with moto_s3() as server:
        server.fs().pipe_file(f"{server.bucket}/{ROOT}/", b"")
        yield server


def mount_s3(mount: MountFactory, s3: S3Server, *options: str) -> Mount:
    ufs = [f"--ufs-option={k}={v if isinstance(v, str) else json.dumps(v)}"
           for k, v in s3.ufs_options.items()]
    return mount(s3.url(ROOT), *ufs, *options)


def keys(s3: S3Server) -> list[str]:
    """Every key in the bucket, exactly (markers keep their slash)."""
    out = s3.fs().call_s3("list_objects_v2", Bucket=s3.bucket)
    return sorted(o["Key"] for o in out.get("Contents", []))


def put(s3: S3Server, name: str, **kwargs: object) -> None:
    s3.fs().call_s3("put_object", Bucket=s3.bucket, Key=f"{ROOT}/{name}",
                    Body=b"" if name.endswith("/") else name.encode(), **kwargs)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: a file's bytes, None for a directory."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*"))}


def test_an_object_store_refuses_special_files_and_hard_links(
    s3: S3Server, mount: MountFactory,
) -> None:
    """What a bucket cannot hold is refused with ENOTSUP, and nothing is left of it."""
    m = mount_s3(mount, s3)
    (m.path / "f").write_bytes(b"f")
    assert errno_of(lambda: os.mkfifo(m.path / "fifo")) == errno.ENOTSUP
    assert errno_of(lambda: os.mknod(m.path / "null", 0o666 | stat.S_IFCHR,
                                     os.makedev(1, 3))) == errno.ENOTSUP
    assert errno_of(lambda: os.link(m.path / "f", m.path / "g")) == errno.ENOTSUP
    assert keys(s3) == [f"{ROOT}/", f"{ROOT}/f"]  # the root marker, and the file


# -- directory renames (issue 15, point 7)


def test_mv_of_a_directory_made_through_the_mount_moves_it_whole(
    s3: S3Server, mount: MountFactory,
) -> None:
    m = mount_s3(mount, s3)
    run(["sh", "-c", "mkdir -p d/sub && echo hi > d/sub/f && mv d d2"], cwd=m.path)
    assert tree(m.path) == {"d2": None, "d2/sub": None, "d2/sub/f": b"hi\n"}
    assert keys(s3) == [f"{ROOT}/", f"{ROOT}/d2/", f"{ROOT}/d2/sub/", f"{ROOT}/d2/sub/f"]


def test_mv_of_directories_of_every_shape(s3: S3Server, mount: MountFactory) -> None:
    """Marker directories, prefix-only ones (made directly in the bucket), empty ones and
    files, nested; each renamed through the mount, then everything renamed at once."""
    for name in ("files/a", "files/b", "empty/", "marked/", "marked/a", "prefix/p/x",
                 "mix/", "mix/a", "mix/e/", "mix/m/", "mix/m/y", "mix/p/q/r"):
        put(s3, name)
    m = mount_s3(mount, s3, "--attr-timeout", "0", "--dir-timeout", "0")
    run(["mkdir", "-p", "made/sub/deeper"], cwd=m.path)
    (m.path / "made/sub/f").write_bytes(b"f")
    before = tree(m.path)
    top = ["files", "empty", "marked", "prefix", "mix", "made"]
    for name in top:
        os.rename(m.path / name, m.path / f"{name}2")
    want = {f"{k.split('/', 1)[0]}2{k[len(k.split('/', 1)[0]):]}": v for k, v in before.items()}
    assert tree(m.path) == want
    os.mkdir(m.path / "all")
    for name in top:
        os.rename(m.path / f"{name}2", m.path / "all" / name)
    assert tree(m.path / "all") == before
    assert not [k for k in keys(s3) if not k.startswith(f"{ROOT}/all/") and k != f"{ROOT}/"]


@pytest.mark.expect_log(r"^rename: BackendError: .*\(ObjectNotInActiveTierError\)", count=2)
def test_a_failed_directory_rename_leaves_the_source_whole(
    s3: S3Server, mount: MountFactory,
) -> None:
    """An archived (GLACIER) object cannot be copied: the rename fails part-way, after
    the other keys were copied, and what was copied is removed again."""
    for name in ("d/", "d/a", "d/sub/", "d/sub/b"):
        put(s3, name)
    put(s3, "d/z-archived", StorageClass="GLACIER")
    before = keys(s3)
    m = mount_s3(mount, s3)
    listed = sorted(str(p.relative_to(m.path)) for p in m.path.rglob("*"))  # not readable
    assert errno_of(lambda: os.rename(m.path / "d", m.path / "d2")) == 5  # EIO
    assert keys(s3) == before
    assert sorted(str(p.relative_to(m.path)) for p in m.path.rglob("*")) == listed
    result = subprocess.run(["mv", str(m.path / "d"), str(m.path / "d3")], capture_output=True,
                            timeout=60, check=False)
    assert result.returncode != 0
    assert keys(s3) == before


# -- modes, owners and times in object metadata (issue 15, point 9)

MTIME_NS = 981_173_106_123_456_789  # 2001-02-03 04:05:06.123456789
Attributes = dict[str, tuple[int, int, int, int, int, bytes | None]]


def attributes(root: Path, *, whole_seconds: bool = False) -> Attributes:
    """(type and mode, uid, gid, size, mtime, bytes) of every path under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        mtime = st.st_mtime_ns - st.st_mtime_ns % 10**9 if whole_seconds else st.st_mtime_ns
        out[str(p.relative_to(root))] = (
            st.st_mode, st.st_uid, st.st_gid, 0 if p.is_dir() else st.st_size, mtime,
            None if p.is_dir() else p.read_bytes())
    return out


def make_source(src: Path) -> None:
    """Files and directories with modes, owners and times none of them has by default."""
    (src / "sub/deeper").mkdir(parents=True)
    (src / "sub/empty-dir").mkdir()
    for name, data, mode in (("a", b"alpha", 0o600), ("sub/b", b"b" * 70000, 0o751),
                             ("sub/deeper/c", b"c", 0o444), ("empty", b"", 0o640)):
        (src / name).write_bytes(data)
        os.chmod(src / name, mode)
    os.chown(src / "sub/b", 1234, 5678)
    os.chmod(src / "sub", 0o700)
    os.chmod(src / "sub/empty-dir", 0o750)
    for i, p in enumerate(sorted(src.rglob("*"), reverse=True)):  # children first
        os.utime(p, ns=(MTIME_NS, MTIME_NS + i * 10**9))


TOOLS = {
    "cp -a": lambda src, dst: ["cp", "-a", f"{src}/.", str(dst)],
    "rsync -a": lambda src, dst: ["rsync", "-a", f"{src}/", f"{dst}/"],
    "tar x": lambda src, dst: ["sh", "-c", f"tar cf - -C {src} . | tar xf - -C {dst}"],
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("tool", TOOLS)
def test_cp_rsync_and_tar_keep_modes_owners_and_times(
    s3: S3Server, mount: MountFactory, tmp_path: Path, tool: str,
) -> None:
    need(shutil.which(TOOLS[tool]("", "")[0]), f"{tool} is not installed")
    src = tmp_path / "src"
    make_source(src)
    tar = tool == "tar x"  # GNU tar's default format keeps whole seconds
    want = attributes(src, whole_seconds=tar)
    m = mount_s3(mount, s3, "--attr-timeout", "0.5", "--entry-timeout", "0.5",
                 "--dir-timeout", "0.5")
    dst = m.path / "copy"
    dst.mkdir()
    result = run(TOOLS[tool](src, dst), check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stderr == b""
    assert attributes(dst, whole_seconds=tar) == want
    time.sleep(1)  # every cache has expired: read back from the objects' metadata
    assert attributes(dst, whole_seconds=tar) == want
    run(["ls", "-lR", str(dst)])  # a listing (readdirplus) ...
    assert attributes(dst, whole_seconds=tar) == want  # ... does not hide the metadata
    m.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "dropped the metadata and page caches" in m.log_text(), 10)
    assert attributes(dst, whole_seconds=tar) == want
    assert m.unmount() == 0
    again = mount_s3(mount, s3)
    assert attributes(again.path / "copy", whole_seconds=tar) == want


@pytest.fixture
def s3fs_fuse(s3: S3Server, tmp_path: Path) -> Iterator[Path]:
    """The bucket's ``ROOT`` mounted by s3fs-fuse (its own caches kept short)."""
    need(shutil.which("s3fs"), "s3fs-fuse is not installed (Debian: apt install s3fs)")
    passwd = tmp_path / "s3fs.passwd"
    passwd.write_text("testing-key:testing-secret\n")
    passwd.chmod(0o600)
    mnt = tmp_path / "s3fs"
    mnt.mkdir()
    options = (f"url={s3.endpoint_url},use_path_request_style,passwd_file={passwd},"
               "stat_cache_expire=1")
    run(["s3fs", f"{s3.bucket}:/{ROOT}", str(mnt), "-o", options], env=s3.env)
    try:
        assert wait_until(lambda: os.path.ismount(mnt), 30)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30,
                       check=False)


def test_s3fs_fuse_and_alluxiofuse_read_each_others_attributes(
    s3: S3Server, mount: MountFactory, s3fs_fuse: Path,
) -> None:
    m = mount_s3(mount, s3, "--attr-timeout", "0", "--entry-timeout", "0",
                 "--dir-timeout", "0")
    for writer, reader in ((s3fs_fuse, m.path), (m.path, s3fs_fuse)):
        name = f"by-{'s3fs' if writer == s3fs_fuse else 'alluxiofuse'}"
        written = write_with_attributes(writer / name)
        assert eventually(reader / name, written) == written


def eventually(root: Path, want: Attributes, timeout: float = 10.0) -> Attributes:
    """``attributes(root)`` once it is ``want`` (the other mount's caches expire), or as
    it is after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (got := attributes(root)) != want and time.monotonic() < deadline:
        time.sleep(0.2)
    return got


def write_with_attributes(top: Path) -> Attributes:
    """A directory and a file with a mode, owner and time of their own, as written."""
    (top / "d").mkdir(parents=True)
    (top / "d/f").write_bytes(b"data")
    os.chmod(top / "d/f", 0o640)
    os.chown(top / "d/f", 1234, 5678)
    os.utime(top / "d/f", ns=(MTIME_NS, MTIME_NS))
    os.chmod(top / "d", 0o710)
    os.utime(top / "d", ns=(MTIME_NS, MTIME_NS + 10**9))
    written = attributes(top)
    assert written["d/f"][:5] == (0o100640, 1234, 5678, 4, MTIME_NS)
    assert written["d"][0] == 0o40710
    return written
