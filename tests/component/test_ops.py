"""ops.Operations driven directly, without a kernel, over a local and a generic fsspec source."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

import tests.support.flakyfs
from alluxiofuse.backends.local import LocalUfs
from alluxiofuse.backends.source import open_ufs
from alluxiofuse.backends.ufs import UfsBackend
from alluxiofuse.config import FOREVER, build_config
from alluxiofuse.daemon.process import check_source
from alluxiofuse.fs.filesystem import Filesystem
from alluxiofuse.fs.inodes import ROOT_INODE
from alluxiofuse.fs.pages import PageKey
from alluxiofuse.fs.replies import Attributes
from alluxiofuse.metrics import Metrics
from alluxiofuse.ops import Operations
from alluxiofuse.writes.spool import Spool
from alluxiofuse.writes.staging import DiskIO
from alluxiofuse.writes.writes import Writes

MiB = 1 << 20


class Mounted:
    """An Operations instance over ``source`` with the helpers tests need."""

    def __init__(self, ops: Operations, metrics: Metrics, source: Path) -> None:
        self.ops = ops
        self.fs = ops.fs
        self.metrics = metrics
        self.source = source

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def lookup_path(self, path: str) -> pyfuse3.EntryAttributes:
        ino = ROOT_INODE
        attrs = await self.ops.getattr(ino)
        for part in [p for p in path.split("/") if p]:
            attrs = await self.ops.lookup(ino, os.fsencode(part))
            ino = attrs.st_ino
        return attrs

    async def read_all(self, path: str, chunk: int = 128 * 1024) -> bytes:
        attrs = await self.lookup_path(path)
        info = await self.ops.open(attrs.st_ino, os.O_RDONLY, None)
        out = bytearray()
        try:
            while data := await self.ops.read(info.fh, len(out), chunk):
                out += data
        finally:
            await self.ops.release(info.fh)
        return bytes(out)

    async def listing(self, dir_fh: int, refuse_after: int | None = None) -> list[str]:
        """All entries of an open directory, in reply buffers of ``refuse_after`` entries."""
        names: list[str] = []
        start = 0
        while True:
            batch: list[tuple[str, int]] = []

            def reply(
                name: str, attrs: Attributes, next_id: int, batch: list[Any] = batch,
            ) -> bool:
                if refuse_after is not None and len(batch) == refuse_after:
                    return False
                batch.append((name, next_id))
                return True

            await self.fs.readdir(dir_fh, start, reply)
            if not batch:
                return names
            names += [n for n, _ in batch]
            start = batch[-1][1]


async def make(
    source: str | Path, nursery: trio.Nursery, *,
    invalidate_attrs: Callable[[int], None] = lambda ino: None, **options: Any,
) -> Mounted:
    values = {"source": str(source), "mountpoint": "/unused", "page_cache_size": "8MiB",
              "strict": True, **options}
    made_cache_dir = None  # ours to remove when the filesystem stops
    if not values.get("read_only") and "cache_dir" not in values:
        values["cache_dir"] = made_cache_dir = tempfile.mkdtemp(prefix="alluxiofuse-spool-")
    ufs = values.pop("ufs_options", {})
    config = build_config(values, ufs)
    metrics = Metrics(CollectorRegistry())
    backend = open_ufs(config.source, config.ufs_options, trio.CapacityLimiter(4),
                       config.io_timeout, object_metadata=not config.ignore_object_metadata)
    root = await check_source(backend)
    writes = None
    if not config.read_only:
        spool = Spool.open(config.cache_dir, config.source, config.cache_size)
        writes = Writes(config, backend, spool, DiskIO(trio.CapacityLimiter(4), 10.0))
        nursery.start_soon(_run_then_close, writes, spool, made_cache_dir)
    elif made_cache_dir is not None:
        shutil.rmtree(made_cache_dir)
    fs = Filesystem(config, backend, root, metrics, spawn=nursery.start_soon,
                    invalidate_attrs=invalidate_attrs, writes=writes)
    return Mounted(Operations(fs, config, metrics), metrics, Path(str(source)))


async def _run_then_close(writes: Writes, spool: Spool, cache_dir: str | None) -> None:
    try:
        await writes.run()
    finally:
        spool.close()
        if cache_dir is not None:  # tests leave nothing behind
            shutil.rmtree(cache_dir, ignore_errors=True)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "small.txt").write_bytes(b"hello\n")
    (src / "dir" / "three-pages.bin").write_bytes(os.urandom(3 * MiB + 5))
    (src / "dir" / "sub" / "empty").write_bytes(b"")
    os.symlink("small.txt", src / "link")
    os.chmod(src / "small.txt", 0o640)
    return src


@pytest.fixture
async def local(tree: Path, nursery: trio.Nursery) -> AsyncIterator[Mounted]:
    yield await make(tree, nursery)


async def test_local_source_uses_the_os_fast_path(local: Mounted) -> None:
    assert isinstance(local.fs.backend, LocalUfs)


async def test_attributes_come_from_the_source(local: Mounted, tree: Path) -> None:
    attrs = await local.lookup_path("small.txt")
    st = os.lstat(tree / "small.txt")
    assert stat.S_ISREG(attrs.st_mode) and stat.S_IMODE(attrs.st_mode) == 0o640
    assert (attrs.st_size, attrs.st_mtime_ns, attrs.st_uid, attrs.st_gid) == (
        st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid)
    assert attrs.st_blocks == st.st_blocks
    assert attrs.st_blksize == MiB  # big buffers for cp and cat
    assert attrs.entry_timeout == 60.0 and attrs.attr_timeout == 60.0  # the defaults
    link = await local.lookup_path("link")
    assert stat.S_ISLNK(link.st_mode)
    assert await local.ops.readlink(link.st_ino, None) == b"small.txt"


async def test_the_kernel_asks_again_for_the_roots_attributes_within_a_second(
    local: Mounted,
) -> None:
    """Else a stat of the mountpoint would hide a dead daemon for the whole --attr-timeout."""
    root = await local.ops.getattr(ROOT_INODE)
    assert root.attr_timeout == 1.0 and local.fs.config.attr_timeout == 60.0
    assert (await local.lookup_path("dir")).attr_timeout == 60.0


async def test_overrides_win_over_the_source(tree: Path, nursery: trio.Nursery) -> None:
    m = await make(tree, nursery, uid="1234", gid="99", file_mode="0444", dir_mode="0500")
    f = await m.lookup_path("small.txt")
    d = await m.lookup_path("dir")
    assert (f.st_uid, f.st_gid, stat.S_IMODE(f.st_mode)) == (1234, 99, 0o444)
    assert stat.S_ISDIR(d.st_mode) and stat.S_IMODE(d.st_mode) == 0o500


async def test_inode_numbers_are_stable_across_forget(local: Mounted) -> None:
    first = await local.lookup_path("dir/three-pages.bin")
    await local.ops.forget([(first.st_ino, 1)])
    assert local.fs.inodes.by_path("dir/three-pages.bin") is None
    again = await local.lookup_path("dir/three-pages.bin")
    assert again.st_ino == first.st_ino


async def test_missing_name_is_a_cached_negative_entry(local: Mounted) -> None:
    attrs = await local.ops.lookup(ROOT_INODE, b"nope")
    assert attrs.st_ino == 0 and attrs.entry_timeout == 5.0  # the default


async def test_without_negative_cache_a_missing_name_is_enoent(
    tree: Path, nursery: trio.Nursery,
) -> None:
    m = await make(tree, nursery, negative_timeout=0)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await m.ops.lookup(ROOT_INODE, b"nope")
    assert e.value.errno == errno.ENOENT
    assert m.sample("alluxiofuse_fuse_errors_total", op="lookup", errno="ENOENT") == 1
    assert m.fs.drop_caches().misses == []  # the kernel was given none to cache


async def test_an_immutable_mount_tells_the_kernel_to_keep_everything(
    tree: Path, nursery: trio.Nursery,
) -> None:
    """--immutable: names, attributes and missing names are given to the kernel for the
    mount's life (FOREVER), the root's attributes still for 1 s (a dead daemon shows)."""
    m = await make(tree, nursery, immutable=True, read_only=True)
    found = await m.ops.lookup(ROOT_INODE, b"small.txt")
    assert (found.entry_timeout, found.attr_timeout) == (FOREVER, FOREVER)
    missing = await m.ops.lookup(ROOT_INODE, b"nope")
    assert (missing.st_ino, missing.entry_timeout) == (0, FOREVER)
    assert (await m.ops.getattr(found.st_ino)).attr_timeout == FOREVER
    assert (await m.ops.getattr(ROOT_INODE)).attr_timeout == 1.0


async def test_without_a_metadata_cache_a_missing_name_is_still_enoent(
    tree: Path, nursery: trio.Nursery,
) -> None:
    m = await make(tree, nursery, metadata_cache_size=1)  # nothing fits
    assert (await m.ops.lookup(ROOT_INODE, b"nope")).st_ino == 0  # negative entry, no EIO
    assert (await m.ops.lookup(ROOT_INODE, b"small.txt")).st_size == 6


@pytest.mark.parametrize("size", [1, 1000, 1 << 20])
async def test_a_directory_larger_than_the_metadata_cache_is_listed_whole(
    tree: Path, nursery: trio.Nursery, size: int,
) -> None:
    """A listing larger than ``--metadata-cache-size`` is served, not refused: it is only
    not cached (1 MiB: it is)."""
    (tree / "wide").mkdir()
    names = sorted(f"f{i:03d}" for i in range(50))
    for name in names:
        (tree / "wide" / name).write_bytes(name.encode())
    m = await make(tree, nursery, metadata_cache_size=size)
    wide = await m.lookup_path("wide")
    for _ in range(2):  # and again, whatever the first one left behind
        fh = await m.ops.opendir(wide.st_ino, None)
        try:
            assert await m.listing(fh, refuse_after=7) == names
        finally:
            await m.ops.releasedir(fh)
    assert (m.fs.meta.listing("wide") is not None) == (size == 1 << 20)
    for name in names[:5]:  # lookups after the listing, misses and all
        assert (await m.ops.lookup(wide.st_ino, name.encode())).st_size == 4
    assert (await m.ops.lookup(wide.st_ino, b"nope")).st_ino == 0
    assert await m.read_all("wide/f049") == b"f049"


async def test_the_metadata_cache_shows_its_bytes_and_its_bound(
    tree: Path, nursery: trio.Nursery,
) -> None:
    m = await make(tree, nursery, metadata_cache_size="2MiB")
    assert m.sample("alluxiofuse_metadata_cache_capacity_bytes") == 2 << 20
    before = m.sample("alluxiofuse_metadata_cache_bytes")
    fh = await m.ops.opendir(ROOT_INODE, None)
    await m.ops.releasedir(fh)
    listing = m.fs.meta.listing("")
    assert listing is not None
    assert m.sample("alluxiofuse_metadata_cache_bytes") == before + listing.nbytes
    m.fs.drop_caches()
    assert m.sample("alluxiofuse_metadata_cache_bytes") == 0


async def test_a_cache_drop_names_the_negative_entries_the_kernel_was_given(
    local: Mounted,
) -> None:
    dir_ino = (await local.lookup_path("dir")).st_ino
    assert (await local.ops.lookup(ROOT_INODE, b"nope")).st_ino == 0
    assert (await local.ops.lookup(dir_ino, b"gone")).st_ino == 0
    assert (await local.ops.lookup(dir_ino, b"three-pages.bin")).st_ino != 0
    caches = local.fs.drop_caches()
    assert sorted(caches.misses) == sorted([(ROOT_INODE, "nope"), (dir_ino, "gone")])
    assert dir_ino in caches.inodes
    assert local.fs.drop_caches().misses == []  # each is dropped once


async def test_hostile_names(tree: Path, nursery: trio.Nursery) -> None:
    names = ["sp ace", "ü-日本", "a%41", "p+q", "h#", "q?", "a&b=c", "x" * 255, "-dash"]
    for n in names:
        (tree / n).write_bytes(n.encode())
    m = await make(tree, nursery)
    fh = await m.ops.opendir(ROOT_INODE, None)
    assert set(names) <= set(await m.listing(fh))
    for n in names:
        assert await m.read_all(n) == n.encode()
    with pytest.raises(pyfuse3.FUSEError) as e:
        await m.ops.lookup(ROOT_INODE, b"y" * 256)
    assert e.value.errno == errno.ENAMETOOLONG


async def test_readdir_pages_without_skipping_or_repeating(
    tree: Path, nursery: trio.Nursery,
) -> None:
    many = tree / "many"
    many.mkdir()
    for i in range(2500):
        (many / f"f{i:05d}").write_bytes(b"")
    m = await make(tree, nursery)
    dir_ino = (await m.lookup_path("many")).st_ino
    fh = await m.ops.opendir(dir_ino, None)
    names = await m.listing(fh, refuse_after=97)
    assert names == sorted(f"f{i:05d}" for i in range(2500))
    # Every entry the kernel took holds exactly one lookup; refused ones hold none.
    held = [m.fs.inodes.by_path(f"many/{n}") for n in names]
    assert all(i is not None and i.lookups == 1 for i in held)
    await m.ops.releasedir(fh)


async def test_reads_return_exact_bytes_across_pages(local: Mounted, tree: Path) -> None:
    data = (tree / "dir" / "three-pages.bin").read_bytes()
    assert await local.read_all("dir/three-pages.bin") == data
    attrs = await local.lookup_path("dir/three-pages.bin")
    info = await local.ops.open(attrs.st_ino, os.O_RDONLY, None)
    for off, size in [(MiB - 3, 10), (0, 1), (3 * MiB, 100), (3 * MiB + 5, 10), (2 * MiB, MiB)]:
        assert await local.ops.read(info.fh, off, size) == data[off:off + size]
    await local.ops.release(info.fh)


async def test_keep_cache_only_while_the_version_is_unchanged(
    tree: Path, nursery: trio.Nursery,
) -> None:
    m = await make(tree, nursery, attr_timeout=0)
    ino = (await m.lookup_path("small.txt")).st_ino
    first = await m.ops.open(ino, os.O_RDONLY, None)
    second = await m.ops.open(ino, os.O_RDONLY, None)
    assert (first.keep_cache, second.keep_cache) == (False, True)
    assert await m.ops.read(first.fh, 0, 100) == b"hello\n"
    (tree / "small.txt").write_bytes(b"changed!\n")
    third = await m.ops.open(ino, os.O_RDONLY, None)
    assert third.keep_cache is False
    assert await m.ops.read(third.fh, 0, 100) == b"changed!\n"
    # The handle opened before the change never mixes versions: it is stale now.
    with pytest.raises(pyfuse3.FUSEError) as e:
        await m.ops.read(first.fh, 0, 100)
    assert e.value.errno == errno.ESTALE


async def test_a_read_that_finds_the_file_changed_lets_the_next_open_see_the_change(
    tree: Path, nursery: trio.Nursery,
) -> None:
    # With attributes cached for a minute, the open after a stale read must not take the
    # cached, old version again: that would fail every open until the cache expired.
    invalidated: list[int] = []
    m = await make(tree, nursery, invalidate_attrs=invalidated.append)
    ino = (await m.lookup_path("small.txt")).st_ino
    fi = await m.ops.open(ino, os.O_RDONLY, None)
    (tree / "small.txt").write_bytes(b"changed behind the mount\n")
    with pytest.raises(pyfuse3.FUSEError) as e:
        await m.ops.read(fi.fh, 0, 100)
    assert e.value.errno == errno.ESTALE
    await m.ops.release(fi.fh)
    fi = await m.ops.open(ino, os.O_RDONLY, None)
    assert ino in invalidated  # the kernel asks for the new size before its next read
    assert await m.ops.read(fi.fh, 0, 100) == b"changed behind the mount\n"
    await m.ops.release(fi.fh)


async def test_every_mutation_of_a_read_only_mount_is_erofs(
    tree: Path, nursery: trio.Nursery,
) -> None:
    local = await make(tree, nursery, read_only=True)
    ops = local.ops
    ino = (await local.lookup_path("small.txt")).st_ino
    calls = [
        ops.setattr(ino, pyfuse3.EntryAttributes(), pyfuse3.SetattrFields(), None, None),
        ops.mknod(ROOT_INODE, b"n", stat.S_IFREG | 0o644, 0, None),
        ops.mkdir(ROOT_INODE, b"d", 0o755, None),
        ops.unlink(ROOT_INODE, b"small.txt", None),
        ops.rmdir(ROOT_INODE, b"dir", None),
        ops.symlink(ROOT_INODE, b"s", b"t", None),
        ops.rename(ROOT_INODE, b"small.txt", ROOT_INODE, b"x", 0, None),
        ops.link(ino, ROOT_INODE, b"l", None),
        ops.create(ROOT_INODE, b"c", 0o644, os.O_WRONLY | os.O_CREAT, None),
        ops.write(1, 0, b"x"),
        ops.setxattr(ino, b"user.a", b"b", None),
        ops.removexattr(ino, b"user.a", None),
        ops.open(ino, os.O_WRONLY, None),
        ops.open(ino, os.O_RDWR, None),
        ops.open(ino, os.O_RDONLY | os.O_TRUNC, None),
    ]
    for call in calls:
        with pytest.raises(pyfuse3.FUSEError) as e:
            await call
        assert e.value.errno == errno.EROFS


async def test_statfs_reports_the_source_filesystem(local: Mounted, tree: Path) -> None:
    s = await local.ops.statfs(None)
    v = os.statvfs(tree)
    assert (s.f_blocks, s.f_namemax, s.f_frsize) == (v.f_blocks, v.f_namemax, v.f_frsize)


async def test_sequential_reads_prefetch_and_count_it(
    tree: Path, tmp_path: Path, nursery: trio.Nursery,
) -> None:
    # Through generic fsspec every page costs a worker thread, so read-ahead is what
    # keeps a sequential reader from waiting (local pages in the kernel's cache are read
    # inline instead, see below).
    (tree / "seq.bin").write_bytes(os.urandom(16 * MiB))
    m = await make(f"flaky://{tree}", nursery, page_cache_size="32MiB",
                   ufs_options={"control": str(tmp_path / "control.json")})
    assert await m.read_all("seq.bin") == (tree / "seq.bin").read_bytes()
    used = m.sample("alluxiofuse_readahead_used_bytes_total")
    missed = m.sample("alluxiofuse_page_cache_miss_bytes_total")
    assert used >= 8 * MiB, "most pages of a sequential read should come from read-ahead"
    assert used + missed == 16 * MiB


async def test_an_open_that_sees_a_new_version_makes_the_kernel_refresh_its_size(
    tree: Path, nursery: trio.Nursery,
) -> None:
    # The kernel reads up to the size its cached attributes hold; had it kept the old,
    # larger size, the new version's end would look like a short read, filled with zeros.
    invalidated: list[int] = []
    m = await make(tree, nursery, attr_timeout=0, invalidate_attrs=invalidated.append)
    ino = (await m.lookup_path("small.txt")).st_ino  # the kernel is told the old size
    fi = await m.ops.open(ino, os.O_RDONLY, None)
    await m.ops.release(fi.fh)
    assert invalidated == []
    (tree / "small.txt").write_bytes(b"hi\n")
    fi = await m.ops.open(ino, os.O_RDONLY, None)  # sees the new version first
    assert invalidated == [ino]
    assert await m.ops.read(fi.fh, 0, 4096) == b"hi\n"
    await m.ops.release(fi.fh)
    assert (await m.ops.getattr(ino, None)).st_size == 3  # what the kernel asks next
    fi = await m.ops.open(ino, os.O_RDONLY, None)
    await m.ops.release(fi.fh)
    assert invalidated == [ino]


async def test_a_directory_snapshot_never_turns_a_newer_open_file_stale(
    tree: Path, nursery: trio.Nursery,
) -> None:
    m = await make(tree, nursery, attr_timeout=0.2, dir_timeout=60)
    dir_ino = (await m.lookup_path("dir")).st_ino
    fh = await m.ops.opendir(dir_ino, None)  # the snapshot holds the current version
    (tree / "dir" / "three-pages.bin").write_bytes(b"new content")
    await trio.sleep(0.3)  # past --attr-timeout: the next lookup sees the new version
    attrs = await m.ops.lookup(dir_ino, b"three-pages.bin")
    assert attrs.st_size == len(b"new content")
    fi = await m.ops.open(attrs.st_ino, os.O_RDONLY, None)
    assert await m.listing(fh) == ["sub", "three-pages.bin"]  # readdirplus from the old snapshot
    assert await m.ops.read(fi.fh, 0, 4096) == b"new content"
    await m.ops.release(fi.fh)
    await m.ops.releasedir(fh)


async def test_local_pages_in_the_kernel_cache_are_read_without_a_worker_thread(
    tree: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small pages only: a whole 1 MiB page is copied in a worker thread, cached or not.
    (tree / "hot.bin").write_bytes(data := os.urandom(3 * 65536))
    m = await make(tree, nursery, page_cache_size="32MiB", page_size="64KiB",
                   dir_readahead=0, attr_timeout=0)
    ino = (await m.lookup_path("hot.bin")).st_ino
    threaded: list[str] = []
    for name in ("_read_sync", "_read_many_sync"):
        original = getattr(LocalUfs, name)
        monkeypatch.setattr(LocalUfs, name, lambda self, *a, _o=original, _n=name: (
            threaded.append(_n), _o(self, *a))[1])
    fi = await m.ops.open(ino, os.O_RDONLY, None)
    got = b"".join([await m.ops.read(fi.fh, off, 65536) for off in range(0, 3 * 65536, 65536)])
    await m.ops.release(fi.fh)
    assert got == data
    assert threaded == []
    await m.ops.forget([(ino, 1)])
    (tree / "hot.bin").write_bytes(data[::-1])  # a new version
    # A page the kernel does not have: its cache-only probe misses (made to here: whether
    # a page just evicted is missed is up to the disk, as the probe's miss starts the
    # kernel reading it, and a fast disk may finish before the probe returns).
    monkeypatch.setattr(LocalUfs, "read_nowait", lambda self, *args: None)
    ino = (await m.lookup_path("hot.bin")).st_ino
    fi = await m.ops.open(ino, os.O_RDONLY, None)
    assert await m.ops.read(fi.fh, 0, 65536) == data[::-1][:65536]
    assert threaded, "a page the kernel does not have cached is read in a worker thread"


# -- a generic fsspec source that fails on demand


@pytest.fixture
async def flaky(tree: Path, tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Mounted]:
    control = str(tmp_path / "control.json")
    m = await make(f"flaky://{tree}", nursery, strict=False, io_timeout=1,
                   attr_timeout=0, dir_timeout=0, negative_timeout=0,
                   ufs_options={"control": control})
    m.control = control  # type: ignore[attr-defined]
    yield m
    tests.support.flakyfs.clear_failure(control)


async def test_generic_fsspec_source_reads(flaky: Mounted, tree: Path) -> None:
    assert type(flaky.fs.backend) is UfsBackend
    assert await flaky.read_all("dir/three-pages.bin") == (
        tree / "dir" / "three-pages.bin").read_bytes()
    fh = await flaky.ops.opendir((await flaky.lookup_path("dir")).st_ino, None)
    assert await flaky.listing(fh) == ["sub", "three-pages.bin"]


@pytest.mark.parametrize("mode", ["oserror", "hang"])
@pytest.mark.expect_log(r"^getattr: (BackendError: \[Errno 5\] injected failure in info"
                        r"|BackendTimeout: .*: no answer within 1s)$", count=2)
@pytest.mark.expect_log(r"^opendir: (BackendError: \[Errno 5\] injected failure in ls"
                        r"|BackendTimeout: .*: no answer within 1s)$", count=1)
async def test_backend_failure_is_eio_and_the_mount_recovers(
    flaky: Mounted, mode: str,
) -> None:
    ino = (await flaky.lookup_path("small.txt")).st_ino
    tests.support.flakyfs.set_failure(flaky.control, ["info", "ls", "cat_file"], mode)  # type: ignore[attr-defined]
    for call in (flaky.ops.getattr(ino), flaky.ops.opendir(ROOT_INODE, None),
                 flaky.read_all("small.txt")):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await call
        assert e.value.errno == errno.EIO
    reason = "error" if mode == "oserror" else "timeout"
    assert flaky.sample("alluxiofuse_backend_errors_total", reason=reason) >= 3
    tests.support.flakyfs.clear_failure(flaky.control)  # type: ignore[attr-defined]
    assert await flaky.read_all("small.txt") == b"hello\n"


@pytest.mark.expect_log(r"^lookup: unexpected RuntimeError: injected unexpected failure",
                        count=1, level="ERROR")
async def test_unexpected_errors_are_eio_and_counted(flaky: Mounted) -> None:
    tests.support.flakyfs.set_failure(flaky.control, ["info"], "unexpected")  # type: ignore[attr-defined]
    with pytest.raises(pyfuse3.FUSEError) as e:
        await flaky.ops.lookup(ROOT_INODE, b"small.txt")
    assert e.value.errno == errno.EIO
    assert flaky.sample("alluxiofuse_unexpected_errors_total", op="lookup",
                        type="RuntimeError") == 1


@pytest.mark.expect_log(r"^lookup: unexpected RuntimeError: injected unexpected failure",
                        count=1, level="ERROR")
async def test_strict_mode_reraises_unexpected_errors(
    tree: Path, tmp_path: Path, nursery: trio.Nursery,
) -> None:
    control = str(tmp_path / "control.json")
    m = await make(f"flaky://{tree}", nursery, strict=True, attr_timeout=0,
                   ufs_options={"control": control})
    tests.support.flakyfs.set_failure(control, ["info"], "unexpected")
    with pytest.raises(RuntimeError, match="injected"):
        await m.ops.lookup(ROOT_INODE, b"small.txt")


async def read_files_in(m: Mounted, names: list[str]) -> tuple[dict[str, bytes], int]:
    """Open and read files of directory ``many`` in the given order, as a program would.

    Returns the contents and how many files were fetched ahead of their open: their first
    page cached, or (a local source) the file warmed in the kernel's cache.
    """
    warmed: set[str] = set()
    backend = m.fs.backend
    if backend.warms:
        real_warm = backend.warm

        async def warm(reads: Any) -> None:
            warmed.update(path for path, *_ in reads)
            await real_warm(reads)

        backend.warm = warm  # type: ignore[method-assign]
    dir_ino = (await m.lookup_path("many")).st_ino
    fh = await m.ops.opendir(dir_ino, None)
    await m.listing(fh)  # the kernel now knows every entry (readdirplus)
    await m.ops.releasedir(fh)
    out, ahead = {}, 0
    for name in names:
        ino = (await m.ops.lookup(dir_ino, name.encode())).st_ino
        inode = m.fs.inodes.get(ino)
        ahead += (PageKey(ino, inode.status.version, 0) in m.fs.pages
                  or f"many/{name}" in warmed)
        info = await m.ops.open(ino, os.O_RDONLY, None)
        await trio.testing.wait_all_tasks_blocked()  # let read-ahead run, as time would
        out[name] = await m.ops.read(info.fh, 0, 1 << 20)
        await m.ops.release(info.fh)
    return out, ahead


@pytest.fixture(params=["generic", "local"])
def dir_source(request: pytest.FixtureRequest, tree: Path) -> str:
    """A generic fsspec source (read-ahead fills the page cache) or a local one (warms)."""
    if request.param == "local":
        return str(tree)
    return f"flaky://{tree}"


async def make_dir_source(source: str, nursery: trio.Nursery, tmp_path: Path,
                          **options: Any) -> Mounted:
    if source.startswith("flaky://"):
        options["ufs_options"] = {"control": str(tmp_path / "control.json")}
    m = await make(source, nursery, **options)
    assert m.fs.backend.warms == (not source.startswith("flaky://"))
    return m


@pytest.fixture
def many_small(tree: Path) -> dict[str, bytes]:
    (tree / "many").mkdir()
    files = {f"f{i:03d}": os.urandom(1000 + i) for i in range(60)}
    for name, data in files.items():
        (tree / "many" / name).write_bytes(data)
    return files


async def test_files_read_in_order_are_fetched_ahead(
    dir_source: str, many_small: dict[str, bytes], nursery: trio.Nursery, tmp_path: Path,
) -> None:
    m = await make_dir_source(dir_source, nursery, tmp_path, dir_readahead=16)
    contents, ahead = await read_files_in(m, sorted(many_small))
    assert contents == many_small
    assert ahead >= len(many_small) - 3, "all but the first files are fetched before open"
    if not m.fs.backend.warms:
        total = sum(len(d) for d in many_small.values())
        assert m.sample("alluxiofuse_readahead_used_bytes_total") == total
    assert m.sample("alluxiofuse_readahead_wasted_bytes_total") == 0


def record_batches(m: Mounted) -> list[list[str]]:
    """The paths of each read-ahead batch (``read_many``) the backend is asked for from now."""
    backend = m.fs.backend
    batches: list[list[str]] = []
    real_read_many = backend.read_many

    async def read_many(reads: Any) -> Any:
        batches.append([path for path, *_ in reads])
        return await real_read_many(reads)

    backend.read_many = read_many  # type: ignore[method-assign]
    return batches


async def test_a_batch_fetched_ahead_never_holds_the_file_being_opened(
    many_small: dict[str, bytes], nursery: trio.Nursery, tmp_path: Path, tree: Path,
) -> None:
    # That file's first page is fetched as a reader's, by the open itself; in the batch
    # too, a read of it done before the batch began would fetch it a second time.
    m = await make_dir_source(f"flaky://{tree}", nursery, tmp_path, dir_readahead=16)
    batches = record_batches(m)
    opened: list[str] = []
    real_open = m.fs.open

    async def open_(ino: int, flags: int) -> Any:
        opened.append(m.fs.inodes.get(ino).path)
        count = len(batches)
        result = await real_open(ino, flags)
        await trio.testing.wait_all_tasks_blocked()
        for batch in batches[count:]:
            assert opened[-1] not in batch, (opened[-1], batch)
        return result

    m.fs.open = open_  # type: ignore[method-assign]
    contents, _ = await read_files_in(m, sorted(many_small))
    assert contents == many_small and batches, "read ahead in batches"


async def test_files_the_kernel_holds_are_not_fetched_ahead_again(
    many_small: dict[str, bytes], nursery: trio.Nursery, tmp_path: Path, tree: Path,
) -> None:
    # Read in order once, the files are in the kernel's cache (each open after says keep
    # it); read in order again, nothing may be fetched ahead for them: nobody would read it.
    m = await make_dir_source(f"flaky://{tree}", nursery, tmp_path, dir_readahead=16)
    names = sorted(many_small)
    await read_files_in(m, names)
    batches = record_batches(m)
    dir_ino = (await m.lookup_path("many")).st_ino
    for name in names:
        ino = (await m.ops.lookup(dir_ino, name.encode())).st_ino
        info = await m.ops.open(ino, os.O_RDONLY, None)
        assert info.keep_cache
        await trio.testing.wait_all_tasks_blocked()
        await m.ops.release(info.fh)
    assert batches == []


async def test_a_batch_the_prefetch_budget_cuts_short_is_resumed(
    many_small: dict[str, bytes], nursery: trio.Nursery, tmp_path: Path, tree: Path,
) -> None:
    # A 4 KiB budget takes three of these ~1 KB files per batch; the rest must still come.
    m = await make_dir_source(f"flaky://{tree}", nursery, tmp_path, dir_readahead=16,
                              page_size="4KiB", prefetch_budget="4KiB")
    contents, ahead = await read_files_in(m, sorted(many_small))
    assert contents == many_small
    assert ahead >= len(many_small) - 3


async def test_shuffled_reads_fetch_nothing_ahead(
    dir_source: str, many_small: dict[str, bytes], nursery: trio.Nursery, tmp_path: Path,
) -> None:
    import random

    m = await make_dir_source(dir_source, nursery, tmp_path, dir_readahead=16)
    names = sorted(many_small)
    random.Random(3).shuffle(names)
    contents, ahead = await read_files_in(m, names)
    assert contents == many_small
    assert ahead <= 3, "a shuffled order builds no streak"
    assert m.sample("alluxiofuse_readahead_wasted_bytes_total") == 0


async def test_directory_readahead_can_be_turned_off(
    dir_source: str, many_small: dict[str, bytes], nursery: trio.Nursery, tmp_path: Path,
) -> None:
    m = await make_dir_source(dir_source, nursery, tmp_path, dir_readahead=0)
    contents, ahead = await read_files_in(m, sorted(many_small))
    assert contents == many_small and ahead == 0


async def test_lookups_in_one_directory_are_answered_by_one_listing(
    tree: Path, many_small: dict[str, bytes], tmp_path: Path, nursery: trio.Nursery,
) -> None:
    m = await make(f"flaky://{tree}", nursery, ufs_options={"control": str(tmp_path / "c")})
    fs = m.fs.backend.fs  # type: ignore[attr-defined]
    dir_ino = (await m.lookup_path("many")).st_ino
    names = sorted(many_small)
    ls_before = fs.calls.get("ls", 0)
    for name in names[:2]:  # the first miss is a stat, the second lists the directory
        await m.ops.lookup(dir_ino, name.encode())
    assert fs.calls["ls"] == ls_before + 1
    after_listing = dict(fs.calls)
    for name in names:
        attrs = await m.ops.lookup(dir_ino, name.encode())
        assert attrs.st_size == len(many_small[name])
    negative = await m.ops.lookup(dir_ino, b"not-there")
    assert negative.st_ino == 0
    assert fs.calls == after_listing, "every later lookup was answered by the listing"


async def test_a_failing_listing_falls_back_to_stat(
    tree: Path, many_small: dict[str, bytes], tmp_path: Path, nursery: trio.Nursery,
) -> None:
    control = str(tmp_path / "c")
    m = await make(f"flaky://{tree}", nursery, ufs_options={"control": control})
    dir_ino = (await m.lookup_path("many")).st_ino
    tests.support.flakyfs.set_failure(control, ["ls"])
    for name in sorted(many_small)[:5]:
        attrs = await m.ops.lookup(dir_ino, name.encode())
        assert attrs.st_size == len(many_small[name])


async def test_a_change_drops_its_directorys_attributes_here_and_in_the_kernel(
    tree: Path, nursery: trio.Nursery,
) -> None:
    invalidated: list[int] = []
    m = await make(tree, nursery, attr_timeout=60, invalidate_attrs=invalidated.append)
    dir_ino = (await m.lookup_path("dir")).st_ino

    def source(path: Path) -> tuple[int, int, int]:
        st = os.stat(path)
        return st.st_nlink, st.st_mtime_ns, st.st_ctime_ns

    async def mounted(ino: int) -> tuple[int, int, int]:
        a = await m.ops.getattr(ino)
        return a.st_nlink, a.st_mtime_ns, a.st_ctime_ns

    before = await mounted(dir_ino)  # cached for 60 s
    await m.ops.mkdir(dir_ino, b"new", 0o755, None)
    assert await mounted(dir_ino) == source(tree / "dir") != before
    assert invalidated == [dir_ino]
    invalidated.clear()
    root_before = await mounted(ROOT_INODE)
    await m.ops.rename(dir_ino, b"new", ROOT_INODE, b"moved", 0, None)
    assert await mounted(dir_ino) == source(tree / "dir")
    assert await mounted(ROOT_INODE) == source(tree) != root_before
    assert sorted(invalidated) == sorted([dir_ino, ROOT_INODE])
