"""Awkward file names and a large directory come through the mount byte for byte."""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from pathlib import Path

import pytest

from tests.support.mounts import MountFactory, errno_of, read_bytes, with_timeout

pytestmark = pytest.mark.integration

NFC = unicodedata.normalize("NFC", "café-Å")
NFD = unicodedata.normalize("NFD", "café-Å")

AWKWARD: list[bytes] = [
    b"with space", b" leading space", b"trailing space ", os.fsencode(NFC), os.fsencode(NFD),
    "日本語のファイル".encode(), "emoji-\U0001f600".encode(), b"pct%41%2F", b"plus+sign",
    b"hash#tag", b"question?mark", b"amp&ersand", b"equals=sign", b"single'quote",
    b'double"quote', b"back\\slash", b"-leading-dash", b"--double-dash", b"semi;colon",
    b"star*", b"tab\tname", b"new\nline", b"a" * 255, ("日" * 85).encode(),
    ("é" * 127).encode(), b"bad\xff\xfeutf8", b"\xc3(", b"latin1-\xe9",
]


@pytest.mark.parametrize("scheme", ["", "flaky://"], ids=["local", "fsspec"])
def test_awkward_names_list_stat_and_read(
    mount: MountFactory, tmp_path: Path, scheme: str,
) -> None:
    assert NFC != NFD
    assert len(b"a" * 255) == 255 and len(("日" * 85).encode()) == 255
    src = tmp_path / "src"
    src.mkdir()
    srcb = os.fsencode(src)
    files_dir = os.path.join(srcb, b"files")
    dirs_dir = os.path.join(srcb, b"dirs")
    os.mkdir(files_dir)
    os.mkdir(dirs_dir)
    content: dict[bytes, bytes] = {}
    for i, name in enumerate(AWKWARD):
        data = b"%d:" % i + name * 3
        fd = os.open(os.path.join(files_dir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, data)
        os.close(fd)
        content[name] = data
        os.mkdir(os.path.join(dirs_dir, name))
        with open(os.path.join(dirs_dir, name, name), "wb") as f:
            f.write(data[::-1])
    assert len(os.listdir(files_dir)) == len(AWKWARD)  # all distinct on the source

    m = mount(f"{scheme}{src}")
    mnt = os.fsencode(m.path)
    listed = with_timeout(lambda: os.listdir(os.path.join(mnt, b"files")), 20)
    assert sorted(listed) == sorted(AWKWARD)  # bytes compare, no duplicates, none lost
    assert sorted(os.listdir(os.path.join(mnt, b"dirs"))) == sorted(AWKWARD)
    for name in AWKWARD:
        path = os.path.join(mnt, b"files", name)
        st = with_timeout(lambda path=path: os.stat(path), 10)
        assert stat.S_ISREG(st.st_mode), name
        assert st.st_size == len(content[name]), name
        assert stat.S_IMODE(st.st_mode) == 0o640, name
        src_mtime = os.stat(os.path.join(files_dir, name)).st_mtime_ns
        assert abs(st.st_mtime_ns - src_mtime) < 1000, name  # fsspec: float seconds
        assert read_bytes(path) == content[name], name
        sub = os.path.join(mnt, b"dirs", name)
        assert stat.S_ISDIR(os.stat(sub).st_mode), name
        assert os.listdir(sub) == [name], name
        assert read_bytes(os.path.join(sub, name)) == content[name][::-1], name
    # The two normal forms are two files, each with its own content.
    assert read_bytes(os.path.join(mnt, b"files", os.fsencode(NFC))) == content[os.fsencode(NFC)]
    assert read_bytes(os.path.join(mnt, b"files", os.fsencode(NFD))) == content[os.fsencode(NFD)]
    # str paths with surrogate escapes reach the same file as the bytes path.
    bad = os.fsdecode(b"bad\xff\xfeutf8")
    assert read_bytes(os.path.join(m.path, "files", bad)) == content[b"bad\xff\xfeutf8"]
    # Names that do not exist, and names too long for any file system.
    assert errno_of(lambda: os.stat(os.path.join(mnt, b"files", b"a" * 254))) == errno.ENOENT
    assert errno_of(lambda: os.stat(os.path.join(mnt, b"files", b"a" * 256))) == errno.ENAMETOOLONG
    assert errno_of(
        lambda: os.stat(os.path.join(mnt, b"files", ("日" * 86).encode()))
    ) == errno.ENAMETOOLONG


def test_directory_with_20000_entries(mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    big = src / "big"
    big.mkdir(parents=True)
    names = {f"entry-{i:05d}-{'x' * (i % 50)}" for i in range(20_000)}
    for name in names:
        os.close(os.open(big / name, os.O_WRONLY | os.O_CREAT, 0o644))
    (big / "entry-00007-xxxxxxx").write_bytes(b"seven")
    m = mount(src)

    listed = with_timeout(lambda: os.listdir(m.path / "big"), 60)
    assert len(listed) == 20_000
    assert set(listed) == names

    def scan() -> dict[str, int]:
        sizes = {}
        with os.scandir(m.path / "big") as it:
            for entry in it:
                assert entry.is_file(follow_symlinks=False)
                sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
        return sizes

    sizes = with_timeout(scan, 60)
    assert set(sizes) == names
    assert sizes["entry-00007-xxxxxxx"] == 5
    assert sum(sizes.values()) == 5

    def stat_all() -> int:
        return sum(os.stat(m.path / "big" / name).st_size for name in names)

    assert with_timeout(stat_all, 60) == 5
    assert read_bytes(m.path / "big" / "entry-00007-xxxxxxx") == b"seven"
    # A second listing, after the caches may have expired, is still exact.
    assert sorted(with_timeout(lambda: os.listdir(m.path / "big"), 60)) == sorted(names)


def test_directory_larger_than_the_metadata_cache(mount: MountFactory, tmp_path: Path) -> None:
    """120,000 entries (COCO's train2017 has 118,287 in one directory), a listing of about
    12 MB, under a metadata cache of 5 MiB: listed whole, each name with its size, twice."""
    src = tmp_path / "src"
    wide = src / "wide"
    wide.mkdir(parents=True)
    expected = {}
    for i in range(120_000):
        name = f"{i:06d}.jpg"
        fd = os.open(wide / name, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, i % 4099)  # sparse: sizes to compare, no bytes to write
        finally:
            os.close(fd)
        expected[name] = i % 4099
    m = mount(src, "--metadata-cache-size", "5MiB")

    def scan() -> dict[str, int]:
        with os.scandir(m.path / "wide") as it:
            return {e.name: e.stat(follow_symlinks=False).st_size for e in it}

    for _ in range(2):
        assert with_timeout(scan, 120) == expected


@pytest.mark.parametrize("scheme", ["", "flaky://"], ids=["local", "fsspec"])
def test_awkward_names_are_written_renamed_and_removed(
    mount: MountFactory, tmp_path: Path, scheme: str,
) -> None:
    """Every awkward name can be created, written, renamed and removed through the mount,
    and lands in the source under exactly that name (255-byte names have no room for a
    suffix: commits beside a file use a fixed-length temporary name)."""
    src = tmp_path / "src"
    src.mkdir()
    m = mount(f"{scheme}{src}")
    mnt, srcb = os.fsencode(m.path), os.fsencode(src)
    for i, name in enumerate(AWKWARD):
        data = b"%d:" % i + name
        fd = os.open(os.path.join(mnt, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, data)
        os.close(fd)
        os.mkdir(os.path.join(mnt, b"d" + name[:254]))
    assert sorted(os.listdir(srcb)) == sorted([*AWKWARD, *(b"d" + n[:254] for n in AWKWARD)])
    for i, name in enumerate(AWKWARD):
        with open(os.path.join(srcb, name), "rb") as f:
            assert f.read() == b"%d:" % i + name, name
        os.rename(os.path.join(mnt, name), os.path.join(mnt, b"d" + name[:254], name))
    for name in AWKWARD:
        inner = os.path.join(mnt, b"d" + name[:254], name)
        assert read_bytes(inner).startswith(b"%d:" % AWKWARD.index(name))
        os.unlink(inner)
        os.rmdir(os.path.join(mnt, b"d" + name[:254]))
    assert os.listdir(srcb) == []
    assert os.listdir(mnt) == []
