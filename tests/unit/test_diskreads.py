"""The disk page store on the read path: a later reader (a new page cache, as after a
restart) is served from disk without asking the backend; a new version, a corrupt page or
a disk that hangs never serves wrong bytes."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from alluxiofuse.fs.diskpages import DiskKey, DiskPages
from alluxiofuse.fs.diskreads import DiskReads
from alluxiofuse.model import Data, FileStatus, Kind
from tests.support.fakebackend import DATA, PS, Env


def disk(nursery: trio.Nursery, root: Path, behind_bytes: int = 1 << 20) -> DiskReads:
    store = DiskPages.open(str(root), 1 << 20, page_size=PS)
    return DiskReads(store, "fake://source", spawn=nursery.start_soon, deadline=5.0,
                     behind_bytes=behind_bytes)


async def written(reads: DiskReads) -> None:
    """Wait until the pages fetched are on disk (they are written behind the reads)."""
    with trio.fail_after(5):
        while reads._behind:  # noqa: ASYNC110 (written in worker threads; nothing to wait on)
            await trio.sleep(0.005)


async def read_all(env: Env) -> bytes:
    handle = env.open()
    try:
        return await handle.read(0, len(DATA))
    finally:
        await handle.aclose()


@pytest.mark.parametrize("streams", [False, True])
async def test_a_second_reader_is_served_from_disk(
    nursery: trio.Nursery, tmp_path: Path, streams: bool,
) -> None:
    first = Env(nursery, max_readahead=0, streams=streams, disk=disk(nursery, tmp_path))
    assert await read_all(first) == DATA
    assert first.disk is not None
    await written(first.disk)
    assert first.disk.store.counters.written_bytes > len(DATA)
    # A new page cache and store object over the same directory: a restarted daemon.
    second = Env(nursery, max_readahead=0, streams=streams, disk=disk(nursery, tmp_path))
    assert await read_all(second) == DATA
    assert second.backend.reads == []
    if streams:
        assert second.backend.opened == []  # type: ignore[attr-defined]
    assert second.disk is not None
    assert second.disk.store.counters.hit_bytes == len(DATA)


async def test_read_ahead_runs_are_served_from_disk(
    nursery: trio.Nursery, tmp_path: Path,
) -> None:
    first = Env(nursery, disk=disk(nursery, tmp_path))
    assert await read_all(first) == DATA
    assert first.disk is not None
    await written(first.disk)
    second = Env(nursery, disk=disk(nursery, tmp_path))
    handle = second.open()
    for offset in range(0, len(DATA), PS):  # sequential: the window grows, pages come ahead
        assert await handle.read(offset, PS) == DATA[offset:offset + PS]
    assert second.backend.reads == []
    assert handle.window > 1


async def test_a_new_version_is_never_served_the_old_pages(
    nursery: trio.Nursery, tmp_path: Path,
) -> None:
    first = Env(nursery, max_readahead=0, disk=disk(nursery, tmp_path))
    assert await read_all(first) == DATA
    assert first.disk is not None
    await written(first.disk)
    second = Env(nursery, max_readahead=0, disk=disk(nursery, tmp_path))
    new = bytes(reversed(DATA))
    second.backend.data = new
    second.backend.status = FileStatus("f", Kind.FILE, size=len(new), mtime_ns=2)
    second.inode.status = second.backend.status
    assert await read_all(second) == new
    assert len(second.backend.reads) == 65  # every page, from the source


async def test_a_corrupt_page_is_fetched_again_and_counted(
    nursery: trio.Nursery, tmp_path: Path,
) -> None:
    first = Env(nursery, max_readahead=0, disk=disk(nursery, tmp_path))
    assert await read_all(first) == DATA
    assert first.disk is not None
    await written(first.disk)
    pages = sorted(p for p in (tmp_path / "pages").rglob("*") if p.is_file())
    assert len(pages) == 65
    damaged = pages[7]
    raw = bytearray(damaged.read_bytes())
    raw[-1] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    second = Env(nursery, max_readahead=0, disk=disk(nursery, tmp_path))
    assert await read_all(second) == DATA
    assert len(second.backend.reads) == 1  # the damaged page alone
    assert second.disk is not None
    assert second.disk.store.counters.corrupt == 1
    await written(second.disk)
    assert not damaged.exists() or damaged.read_bytes() != bytes(raw)  # rewritten whole


class SlowStore(DiskPages):
    """A store whose writes wait for ``go``: a disk slower than the source."""

    go: threading.Event

    def put_many(self, pages: Sequence[tuple[DiskKey, Data]]) -> list[bool]:
        assert self.go.wait(5)
        return super().put_many(pages)


async def test_pages_not_written_when_too_many_wait_are_counted(
    nursery: trio.Nursery, tmp_path: Path,
) -> None:
    store = SlowStore.open(str(tmp_path), 1 << 20, page_size=PS)
    store.go = threading.Event()
    reads = DiskReads(store, "fake://source", spawn=nursery.start_soon, deadline=5.0,
                      behind_bytes=2 * PS)
    env = Env(nursery, max_readahead=0, disk=reads)
    assert await read_all(env) == DATA  # the reader never waits for the disk
    assert reads.skipped_bytes == len(DATA) - 2 * PS
    store.go.set()
    await written(reads)
    assert store.counters.written_bytes > 2 * PS  # the two that waited, with their headers
    assert store.stats().pages == 2


class HungStore(DiskPages):
    def get(self, key: DiskKey) -> bytes | None:
        time.sleep(1.0)
        return b"wrong"


@pytest.mark.expect_log(r"no answer within 0\.1s; reading from the source", count=1)
async def test_a_disk_that_hangs_is_a_miss(nursery: trio.Nursery, tmp_path: Path) -> None:
    store = HungStore.open(str(tmp_path), 1 << 20, page_size=PS)
    reads = DiskReads(store, "fake://source", spawn=nursery.start_soon, deadline=0.1)
    env = Env(nursery, max_readahead=0, disk=reads)
    handle = env.open()
    with trio.fail_after(3):
        assert await handle.read(0, 2 * PS) == DATA[:2 * PS]
    assert env.backend.read_offsets() == [0, PS]
