"""Unmodified tools over a mounted tree give what they give over the source itself.

Every test mounts the same generated tree (awkward names, nested dirs, 0 B to 3 MiB files)
from a fresh daemon, so each reads through the daemon rather than the kernel's cache.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest

from tests.support.mounts import (
    MountFactory,
    errno_of,
    make_tree,
    read_bytes,
    run,
    with_timeout,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("tree") / "src"
    root.mkdir()
    content = make_tree(root)
    # Owners, modes and times that differ from file to file, so that comparing them means
    # something: other users' files, odd modes, nanosecond, pre-1970 and far-future mtimes.
    modes = [0o600, 0o640, 0o444, 0o755, 0o700, 0o604]
    times = [1, 1_234_567_890_123_456_789, 4_102_444_800_999_999_999, -86_400_500_000_000,
             1_700_000_000_000_000_001]
    for i, rel in enumerate(sorted(content)):
        path = root / rel
        if i % 3 == 0:
            os.chown(path, 1000 + i, 2000 + i % 5)
        if i % 2 == 0:
            os.chmod(path, modes[i % len(modes)])
        if i % 4 == 0:
            t = times[i % len(times)]
            os.utime(path, ns=(t, t))
    for i, d in enumerate(sorted({p.parent for p in root.rglob("*") if p.parent != root})):
        if i % 3 == 0:
            os.chown(d, 3000 + i, 3000)
        if i % 4 == 1:
            os.chmod(d, 0o750)
    return root, content


def _ls_lr(where: Path) -> list[str]:
    out = run(["ls", "-lR", "--time-style=full-iso", "."], cwd=where).stdout.decode()
    return [line for line in out.splitlines() if not line.startswith("total ")]


def test_ls_lr_matches_source(mount: MountFactory, tree: tuple[Path, dict[str, bytes]]) -> None:
    src, content = tree
    m = mount(src)
    mounted, expected = _ls_lr(m.path), _ls_lr(src)
    # The tree is really there (not two empty listings), with its awkward names.
    assert sum(1 for line in expected if line.startswith("-")) == len(content)
    assert any("uni-ü-日本" in line for line in expected)
    assert mounted == expected
    # The mount's root shows the source root's mode, owner and times.
    root_line = ["ls", "-ld", "--time-style=full-iso", "."]
    assert (run(root_line, cwd=m.path).stdout.split()[:8]
            == run(root_line, cwd=src).stdout.split()[:8])


def test_cat_every_file(mount: MountFactory, tree: tuple[Path, dict[str, bytes]]) -> None:
    src, content = tree
    m = mount(src)
    names = sorted(content)
    out = run(["cat", "--", *names], cwd=m.path).stdout
    assert len(out) == sum(len(content[n]) for n in names)
    assert out == b"".join(content[n] for n in names)
    for name in names[:20]:  # and one file at a time
        assert run(["cat", "--", name], cwd=m.path).stdout == content[name]


def test_cp_r_then_diff_r(
    mount: MountFactory, tree: tuple[Path, dict[str, bytes]], tmp_path: Path,
) -> None:
    src, content = tree
    m = mount(src)
    out = tmp_path / "copy"
    run(["cp", "-r", f"{m.path}/.", str(out)])
    diff = run(["diff", "-r", str(src), str(out)], check=False)
    assert diff.returncode == 0, diff.stdout.decode(errors="replace")[:2000]
    copied = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert copied == set(content)


def test_tar_of_mount_equals_tar_of_source(
    mount: MountFactory, tree: tuple[Path, dict[str, bytes]], tmp_path: Path,
) -> None:
    src, content = tree
    m = mount(src)
    archives = {}
    for label, where in (("mnt", m.path), ("src", src)):
        archive = tmp_path / f"{label}.tar"
        run(["tar", "--sort=name", "--format=gnu", "-cf", str(archive), "-C", str(where), "."])
        archives[label] = archive
    listing = {label: run(["tar", "tvf", str(a)]).stdout.decode().splitlines()
               for label, a in archives.items()}
    # Names, modes, owners, sizes, mtimes: the same members, in the same order.
    assert listing["mnt"] == listing["src"]
    assert len([line for line in listing["mnt"] if line.startswith("-")]) == len(content)
    # Headers and contents alike: the archives are identical byte for byte.
    assert archives["mnt"].read_bytes() == archives["src"].read_bytes()
    out = tmp_path / "extracted"
    out.mkdir()
    run(["tar", "xf", str(archives["mnt"]), "-C", str(out)])
    diff = run(["diff", "-r", str(src), str(out)], check=False)
    assert diff.returncode == 0, diff.stdout.decode(errors="replace")[:2000]


def test_find_listing_matches_source(
    mount: MountFactory, tree: tuple[Path, dict[str, bytes]],
) -> None:
    src, content = tree
    m = mount(src)
    fmt = "%P %s %y %m %U %G %n %T@\\n"

    def listing(where: Path) -> list[str]:
        return sorted(run(["find", ".", "-printf", fmt], cwd=where).stdout.decode().splitlines())

    expected = listing(src)
    assert sum(1 for line in expected if " f " in line) >= len(content)
    assert listing(m.path) == expected
    simple = "%P %s %y\\n"
    assert (sorted(run(["find", str(m.path), "-printf", simple]).stdout.splitlines())
            == sorted(run(["find", str(src), "-printf", simple]).stdout.splitlines()))


def test_du_matches_source(mount: MountFactory, tree: tuple[Path, dict[str, bytes]]) -> None:
    src, content = tree
    m = mount(src)
    for args in (["du", "-s", "--apparent-size", "-b", "."], ["du", "-s", "."],
                 ["du", "-a", "."]):
        mounted = sorted(run(args, cwd=m.path).stdout.decode().splitlines())
        expected = sorted(run(args, cwd=src).stdout.decode().splitlines())
        assert mounted == expected, args
    apparent = int(run(["du", "-s", "--apparent-size", "-b", "."], cwd=m.path).stdout.split()[0])
    assert apparent >= sum(len(d) for d in content.values())


def test_sha256sum_of_every_file(
    mount: MountFactory, tree: tuple[Path, dict[str, bytes]],
) -> None:
    src, content = tree
    m = mount(src)
    names = sorted(content)
    out = run(["sha256sum", "--", *names], cwd=m.path).stdout.decode().splitlines()
    got = {}
    for line in out:
        digest, name = line.split("  ", 1)
        got[name] = digest
    assert got == {n: hashlib.sha256(content[n]).hexdigest() for n in names}


def test_generic_fsspec_path_reads_and_lists(
    mount: MountFactory, tree: tuple[Path, dict[str, bytes]],
) -> None:
    """``flaky://`` without a control file: fsspec info/ls/cat_file, not the os fast path."""
    src, content = tree
    m = mount(f"flaky://{src}")

    def walk(root: Path) -> dict[str, tuple[str, int, int]]:
        found = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                rel = os.path.relpath(path, root)
                kind = "d" if stat.S_ISDIR(st.st_mode) else "f"
                found[rel] = (kind, st.st_size if kind == "f" else 0, stat.S_IMODE(st.st_mode))
        return found

    mounted = with_timeout(lambda: walk(m.path), 60)
    assert mounted == walk(src)
    for rel, data in content.items():
        st = os.stat(m.path / rel)
        # fsspec reports float seconds: the mtime survives to well under a microsecond.
        assert abs(st.st_mtime_ns - os.stat(src / rel).st_mtime_ns) < 1000, rel
        assert read_bytes(m.path / rel) == data, rel
    names = sorted(content)
    out = run(["sha256sum", "--", *names], cwd=m.path).stdout.decode().splitlines()
    assert [line.split("  ", 1)[0] for line in out] == [
        hashlib.sha256(content[n]).hexdigest() for n in names
    ]


# -- read-only, statvfs, symlinks


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    snap = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = ""
        if stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        snap[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return snap


def test_read_only_mount_refuses_every_change_with_erofs(
    mount: MountFactory, tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "file").write_bytes(b"content\n")
    (src / "dir" / "inner").write_bytes(b"inner\n")
    (src / "empty").mkdir()
    before = _snapshot(src)
    m = mount(src, "--read-only")
    p = m.path

    tools = [
        ["touch", f"{p}/new"], ["touch", f"{p}/file"], ["mkdir", f"{p}/newdir"],
        ["rm", f"{p}/file"], ["rm", "-r", f"{p}/dir"], ["rmdir", f"{p}/empty"],
        ["mv", f"{p}/file", f"{p}/moved"], ["mv", f"{p}/dir", f"{p}/empty/dir"],
        ["chmod", "600", f"{p}/file"], ["truncate", "-s", "0", f"{p}/file"],
        ["ln", "-s", "file", f"{p}/link"], ["ln", f"{p}/file", f"{p}/hard"],
        ["cp", "/etc/hostname", f"{p}/copied"], ["sh", "-c", f"echo x >> '{p}/file'"],
    ]
    for cmd in tools:
        result = run(cmd, check=False, timeout=20)
        assert result.returncode != 0, cmd
        assert b"Read-only file system" in result.stderr, (cmd, result.stderr)

    calls = {
        "open O_WRONLY": lambda: os.open(p / "file", os.O_WRONLY),
        "open O_RDWR": lambda: os.open(p / "file", os.O_RDWR),
        "open O_APPEND": lambda: os.open(p / "file", os.O_WRONLY | os.O_APPEND),
        "open O_TRUNC": lambda: os.open(p / "file", os.O_WRONLY | os.O_TRUNC),
        "create": lambda: os.open(p / "created", os.O_WRONLY | os.O_CREAT, 0o644),
        "truncate": lambda: os.truncate(p / "file", 0),
        "mkdir": lambda: os.mkdir(p / "made"),
        "unlink": lambda: os.unlink(p / "file"),
        "rmdir": lambda: os.rmdir(p / "empty"),
        "rename": lambda: os.rename(p / "file", p / "renamed"),
        "chmod": lambda: os.chmod(p / "file", 0o600),
        "chown": lambda: os.chown(p / "file", 1, 1),
        "utime": lambda: os.utime(p / "file", (0, 0)),
        "symlink": lambda: os.symlink("file", p / "sym"),
        "link": lambda: os.link(p / "file", p / "hardlink"),
        "setxattr": lambda: os.setxattr(p / "file", "user.x", b"1"),
        "mknod": lambda: os.mkfifo(p / "fifo"),
    }
    for what, call in calls.items():
        assert errno_of(call) == errno.EROFS, what

    assert read_bytes(p / "file") == b"content\n"
    assert sorted(os.listdir(p)) == ["dir", "empty", "file"]
    assert _snapshot(src) == before
    assert m.proc.poll() is None


def test_statvfs(mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    m = mount(src)
    got = with_timeout(lambda: os.statvfs(m.path), 10)
    want = os.statvfs(src)
    assert got.f_namemax == 255
    assert got.f_blocks == want.f_blocks
    assert got.f_frsize == want.f_frsize
    assert got.f_files == want.f_files
    assert 0 < got.f_bfree <= got.f_blocks
    assert run(["df", str(m.path)]).returncode == 0


def test_symlinks(mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "target").write_bytes(b"through the link\n")
    (src / "rel").symlink_to("dir/target")
    (src / "dirlink").symlink_to("dir")
    (src / "dir" / "up").symlink_to("../rel")
    (src / "dangling").symlink_to("no/such/file")
    m = mount(src)
    p = m.path
    for name in ("rel", "dirlink", "dir/up", "dangling"):
        st = os.lstat(p / name)
        assert stat.S_ISLNK(st.st_mode), name
        assert os.readlink(p / name) == os.readlink(src / name), name
        assert st.st_size == os.lstat(src / name).st_size, name
    assert read_bytes(p / "rel") == b"through the link\n"
    assert read_bytes(p / "dir" / "up") == b"through the link\n"
    assert read_bytes(p / "dirlink" / "target") == b"through the link\n"
    assert sorted(os.listdir(p / "dirlink")) == ["target", "up"]
    assert errno_of(lambda: read_bytes(p / "dangling")) == errno.ENOENT
    assert run(["readlink", str(p / "rel")]).stdout == b"dir/target\n"
    assert run(["cat", str(p / "rel")]).stdout == b"through the link\n"
