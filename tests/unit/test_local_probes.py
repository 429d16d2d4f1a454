"""Cache-only probes of a local directory, and LocalUfs's answers without a worker thread."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest
import trio

from alluxiofuse.backends.local import LocalUfs
from alluxiofuse.backends.local_probes import CacheProbes
from alluxiofuse.backends.source import open_ufs
from alluxiofuse.errors import StaleFile
from alluxiofuse.model import Kind
from tests.support.oscache import cached_pages, evict_from_os_cache, misses_after_eviction


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.bin").write_bytes(bytes(range(256)) * 64)
    os.symlink("d", tmp_path / "dirlink")
    os.mkfifo(tmp_path / "fifo")
    return tmp_path


@pytest.fixture
def probes(tree: Path) -> CacheProbes:
    p = CacheProbes.for_root(str(tree))
    if p is None:
        pytest.fail(f"no cache-only probes for {tree} (statfs type, or openat2 missing)")
    return p


def test_lstat_of_a_cached_path_matches_os_lstat(probes: CacheProbes, tree: Path) -> None:
    expected = os.lstat(tree / "d" / "f.bin")  # now in the dentry cache
    got = probes.lstat("d/f.bin")
    assert got is not None
    assert (got.st_ino, got.st_size, got.st_mtime_ns) == (
        expected.st_ino, expected.st_size, expected.st_mtime_ns)
    link = probes.lstat("dirlink")  # the link itself, not followed
    assert link is not None and link.st_ino == os.lstat(tree / "dirlink").st_ino


def test_known_missing_path_raises_and_symlinked_parents_are_left_to_threads(
    probes: CacheProbes, tree: Path,
) -> None:
    with pytest.raises(FileNotFoundError):
        os.lstat(tree / "nope")
    with pytest.raises(FileNotFoundError):  # the kernel now caches the miss
        probes.lstat("nope")
    os.lstat(tree / "dirlink" / "f.bin")
    assert probes.lstat("dirlink/f.bin") is None  # RESOLVE_NO_SYMLINKS


def test_pread_answers_only_from_the_page_cache(probes: CacheProbes, tree: Path) -> None:
    path = tree / "d" / "f.bin"
    data = path.read_bytes()
    got = probes.pread("d/f.bin", 100, 1000)
    assert got is not None and got[0] == data[100:1100] and got[1].st_size == len(data)
    got = probes.pread("d/f.bin", len(data) - 10, 1000)  # short only at the end of the file
    assert got is not None and got[0] == data[-10:]
    assert misses_after_eviction(path, lambda: probes.pread("d/f.bin", 0, len(data)))


def test_probes_are_refused_where_they_could_block(tmp_path: Path) -> None:
    assert CacheProbes.for_root(str(tmp_path / "missing")) is None
    assert CacheProbes.for_root("/proc") is None  # not a local block or memory filesystem


async def test_local_backend_answers_cached_status_and_bytes_inline(tree: Path) -> None:
    backend = open_ufs(str(tree), {}, trio.CapacityLimiter(1), 5.0)
    assert isinstance(backend, LocalUfs)
    status = await backend.stat("d/f.bin")  # a worker thread: the reference answer
    assert backend.stat_nowait("d/f.bin") == status
    assert backend.stat_nowait("") is None  # the root is always stat-ed in a thread
    data = (tree / "d" / "f.bin").read_bytes()
    assert backend.read_nowait("d/f.bin", 0, 100, status.version) == data[:100]
    os.lstat(tree / "fifo")
    fifo = backend.stat_nowait("fifo")
    assert fifo is not None and fifo.kind is Kind.FIFO  # served as it is, never opened
    os.utime(tree / "d" / "f.bin", ns=(1, 1))
    with pytest.raises(StaleFile):
        backend.read_nowait("d/f.bin", 0, 100, status.version)
    await backend.aclose()
    assert backend.stat_nowait("d/f.bin") is None


async def test_local_backend_keeps_serving_the_directory_it_opened(tree: Path) -> None:
    backend = open_ufs(str(tree / "d"), {}, trio.CapacityLimiter(1), 5.0)
    os.rename(tree / "d", tree / "moved")
    (tree / "d").mkdir()  # a different directory at the old path
    assert [e.name for e in await backend.list("")] == ["f.bin"]
    assert (await backend.stat("f.bin")).size == 256 * 64
    await backend.aclose()


async def test_warm_brings_files_into_the_kernel_cache_and_ignores_missing_ones(
    tree: Path,
) -> None:
    backend = open_ufs(str(tree), {}, trio.CapacityLimiter(1), 5.0)
    assert backend.warms
    status = await backend.stat("d/f.bin")
    assert misses_after_eviction(tree / "d" / "f.bin", lambda: backend.read_nowait(
        "d/f.bin", 0, status.size, status.version))
    evict_from_os_cache(tree / "d" / "f.bin")
    await backend.warm([("d/f.bin", 0, status.size, status.version),
                        ("gone", 0, 10, status.version)])
    pages = -(-status.size // mmap.PAGESIZE)
    with trio.fail_after(5):  # WILLNEED starts the reads; they finish in the background
        # Nothing to wait on: poll the kernel's cache, asking mincore (a cache-only read
        # would start reading the file itself).
        while True:
            await trio.sleep(0.01)
            if cached_pages(tree / "d" / "f.bin") == pages:
                break
    data = backend.read_nowait("d/f.bin", 0, status.size, status.version)
    assert data == (tree / "d" / "f.bin").read_bytes()
    await backend.aclose()
