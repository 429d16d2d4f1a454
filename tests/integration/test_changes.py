"""Changes to the source show through once the metadata timeouts pass, and never as a mix.

The mount uses 0.5 s for every timeout. A change may stay invisible for up to two
timeouts: the kernel may take an entry from the daemon's cache just before that entry
expires and keep it for a full timeout of its own. Tests therefore wait ``SETTLE``.
"""

from __future__ import annotations

import errno
import os
import random
import time
from pathlib import Path

import pytest

from tests.support.mounts import (
    Mount,
    MountFactory,
    errno_of,
    read_bytes,
    run,
    with_timeout,
)

pytestmark = pytest.mark.integration

MiB = 1 << 20
TIMEOUT = 0.5
SETTLE = 2 * TIMEOUT + 0.3
TIMEOUTS = ("--attr-timeout", str(TIMEOUT), "--entry-timeout", str(TIMEOUT),
            "--dir-timeout", str(TIMEOUT), "--negative-timeout", str(TIMEOUT))


def _rewrite_in_place(path: Path, data: bytes) -> None:
    """New bytes into the same inode (no rename), with an mtime that surely moved."""
    before = path.stat().st_mtime_ns
    time.sleep(0.02)  # past the file system's timestamp granularity
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate(len(data))
    assert path.stat().st_mtime_ns != before


def _source_with_two_versions(tmp_path: Path, seed: int) -> tuple[Path, bytes, bytes]:
    """A source whose file ``f`` holds the first of two random 8 MiB versions."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(seed)
    old, new = rng.randbytes(8 * MiB), rng.randbytes(8 * MiB)
    (src / "f").write_bytes(old)
    return src, old, new


def _mount(mount: MountFactory, src: Path, scheme: str = "") -> Mount:
    return mount(f"{scheme}{src}", *TIMEOUTS, "--page-size", "1MiB")


def test_rewritten_file_is_served_new_after_timeout(mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(11)
    old = rng.randbytes(3 * MiB + 17)
    (src / "f").write_bytes(old)
    m = _mount(mount, src)
    target = m.path / "f"
    assert read_bytes(target) == old

    versions = [old]
    for new in (rng.randbytes(len(old)),            # same size
                rng.randbytes(len(old) + MiB + 5),  # grown
                rng.randbytes(MiB // 2 + 1),        # shrunk
                b""):                               # emptied
        assert read_bytes(target) == versions[-1]   # the kernel and daemon have it cached
        _rewrite_in_place(src / "f", new)
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline:  # meanwhile: old, new or ESTALE, never a mix
            try:
                got = read_bytes(target)
            except OSError as e:
                assert e.errno == errno.ESTALE, e
            else:
                assert got in (versions[-1], new), (len(got), len(versions[-1]), len(new))
            time.sleep(0.05)
        for _ in range(3):  # after the timeouts: only the new content, through new opens
            assert read_bytes(target) == new
            assert os.stat(target).st_size == len(new)
        versions.append(new)


@pytest.mark.parametrize("scheme", ["", "flaky://"], ids=["local", "fsspec"])
@pytest.mark.parametrize("wait", [True, False], ids=["after-timeout", "within-timeout"])
def test_open_file_never_mixes_versions(
    mount: MountFactory, tmp_path: Path, scheme: str, wait: bool,
) -> None:
    # 8 pages: more than the read-ahead that follows the first page can cover.
    src, old, new = _source_with_two_versions(tmp_path, seed=5)
    m = _mount(mount, src, scheme)

    f = open(m.path / "f", "rb", buffering=0)  # noqa: SIM115 (kept open across the change)
    try:
        assert with_timeout(lambda: f.read(MiB), 10) == old[:MiB]
        _rewrite_in_place(src / "f", new)
        if wait:
            time.sleep(SETTLE)
        outcomes = []
        chunk = 256 * 1024
        for offset in range(MiB, 8 * MiB, chunk):
            try:
                got = with_timeout(lambda offset=offset: os.pread(f.fileno(), chunk, offset), 10)
            except OSError as e:
                assert e.errno == errno.ESTALE, f"read at {offset}: {e}"
                outcomes.append("ESTALE")
                continue
            if got == old[offset:offset + chunk]:
                outcomes.append("old")
            elif got == new[offset:offset + chunk]:
                outcomes.append("NEW")
            else:
                outcomes.append("MIXED")
        assert set(outcomes) <= {"old", "ESTALE"}, (
            f"one open file served bytes of the version written after it was opened: "
            f"{outcomes}"
        )
        # The old bytes of the last pages were never fetched and are gone from the source:
        # the only right answer for them is ESTALE.
        assert outcomes[-1] == "ESTALE", outcomes
    finally:
        f.close()
    if not wait:
        time.sleep(SETTLE)
    assert read_bytes(m.path / "f") == new


def test_created_and_deleted_files_show_after_timeout(
    mount: MountFactory, tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "doomed").write_bytes(b"doomed")
    (src / "dir" / "stays").write_bytes(b"stays")
    m = _mount(mount, src)
    d = m.path / "dir"

    assert sorted(os.listdir(d)) == ["doomed", "stays"]
    assert read_bytes(d / "doomed") == b"doomed"
    # Misses, now cached as negative entries by the kernel and the daemon.
    for name in ("born", "newdir"):
        assert errno_of(lambda name=name: os.stat(d / name)) == errno.ENOENT

    (src / "dir" / "born").write_bytes(b"born")
    (src / "dir" / "newdir").mkdir()
    (src / "dir" / "newdir" / "inner").write_bytes(b"inner")
    (src / "dir" / "doomed").unlink()
    time.sleep(SETTLE)

    assert sorted(with_timeout(lambda: os.listdir(d), 10)) == ["born", "newdir", "stays"]
    assert read_bytes(d / "born") == b"born"
    assert os.stat(d / "born").st_size == 4
    assert read_bytes(d / "newdir" / "inner") == b"inner"
    assert errno_of(lambda: os.stat(d / "doomed")) == errno.ENOENT
    assert errno_of(lambda: read_bytes(d / "doomed")) == errno.ENOENT
    found = run(["find", ".", "-printf", "%P\\n"], cwd=m.path).stdout.decode().split()
    assert sorted(found) == ["dir", "dir/born", "dir/newdir", "dir/newdir/inner", "dir/stays"]

    # And back: the deleted name reappears, the new one goes.
    (src / "dir" / "doomed").write_bytes(b"again")
    (src / "dir" / "born").unlink()
    time.sleep(SETTLE)
    assert sorted(os.listdir(d)) == ["doomed", "newdir", "stays"]
    assert read_bytes(d / "doomed") == b"again"
    assert errno_of(lambda: os.stat(d / "born")) == errno.ENOENT


def _resident_bytes(path: Path) -> int:
    out = run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)]).stdout
    return int(out.split()[0])


def test_unchanged_file_keeps_kernel_cache(mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(2).randbytes(2 * MiB + 3)
    (src / "f").write_bytes(data)
    m = _mount(mount, src)
    target = m.path / "f"

    # "Kept" is most of the file, not every page: these machines run the kernel's
    # proactive reclaim (DAMON pageout), which may take a few cold pages at any time.
    kept = 0.9 * len(data)
    assert read_bytes(target) == data
    assert _resident_bytes(target) >= kept
    time.sleep(SETTLE)  # attributes re-fetched: same version, so the kernel keeps its copy
    assert read_bytes(target) == data
    assert read_bytes(target) == data
    assert _resident_bytes(target) >= kept
    with open(target, "rb") as f:
        f.seek(MiB - 10)
        assert f.read(20) == data[MiB - 10:MiB + 10]
    # A changed file is not served from that copy.
    changed = bytes(b ^ 0xFF for b in data)
    _rewrite_in_place(src / "f", changed)
    time.sleep(SETTLE)
    assert read_bytes(target) == changed


@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_open_file_whose_source_is_deleted_or_replaced(
    mount: MountFactory, tmp_path: Path, change: str,
) -> None:
    """Deleted or atomically replaced (write + rename) under an open file: old bytes or
    ESTALE, the errno of "the file changed under an open handle"; never new bytes, never
    an errno read(2) does not document."""
    src, old, new = _source_with_two_versions(tmp_path, seed=9)
    m = _mount(mount, src)
    with open(m.path / "f", "rb", buffering=0) as f:
        assert with_timeout(lambda: f.read(MiB), 10) == old[:MiB]
        if change == "deleted":
            (src / "f").unlink()
        else:
            (src / "f.tmp").write_bytes(new)
            os.rename(src / "f.tmp", src / "f")
        outcomes = []
        for offset in range(MiB, 8 * MiB, MiB):
            try:
                got = with_timeout(lambda offset=offset: os.pread(f.fileno(), MiB, offset), 10)
            except OSError as e:
                outcomes.append(errno.errorcode.get(e.errno or 0, str(e.errno)))
                continue
            outcomes.append("old" if got == old[offset:offset + MiB] else "NEW-OR-MIXED")
        assert set(outcomes) <= {"old", "ESTALE"}, outcomes
        assert outcomes[-1] == "ESTALE", outcomes
    time.sleep(SETTLE)
    if change == "deleted":
        assert errno_of(lambda: read_bytes(m.path / "f")) == errno.ENOENT
    else:
        assert read_bytes(m.path / "f") == new
