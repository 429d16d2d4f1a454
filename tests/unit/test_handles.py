"""Open handles: exact reads of one file version through the page cache, its end, its
errors and a change seen under it; the table that numbers the handles."""

from __future__ import annotations

import dataclasses
from typing import cast

import pytest
import trio
import trio.testing

from alluxiofuse.errors import BackendError, StaleFile
from alluxiofuse.fs.handles import DirHandle, HandleTable, StagedHandle
from alluxiofuse.writes.staging import StagedFile
from tests.support.fakebackend import DATA, PS, Env

# ``nursery`` is pytest-trio's fixture: a nursery cancelled when the test ends.


@pytest.mark.parametrize(
    ("offset", "size"),
    [(0, 1), (0, PS), (15, 2), (1, PS), (0, 100), (31, 33), (PS * 10, PS * 5 + 3),
     (64 * PS, 5), (64 * PS - 1, 100), (0, len(DATA)), (3, len(DATA) + 1000)],
)
async def test_reads_return_exact_bytes(nursery: trio.Nursery, offset: int, size: int) -> None:
    env = Env(nursery, max_readahead=0)
    handle = env.open()
    assert await handle.read(offset, size) == DATA[offset:offset + size]
    # Each page was fetched once, at its own offset, and never past the end of the file.
    offsets = env.backend.read_offsets()
    assert len(offsets) == len(set(offsets))
    assert all(o % PS == 0 for o in offsets)
    assert all(o + n <= len(DATA) for o, n in env.backend.reads)
    assert handle.window == 0


async def test_cache_metrics_count_bytes_served(nursery: trio.Nursery) -> None:
    env = Env(nursery, max_readahead=0)
    handle = env.open()

    def sample(name: str) -> float:
        return env.registry.get_sample_value(f"alluxiofuse_page_cache_{name}_bytes_total") or 0

    assert await handle.read(5, 3 * PS) == DATA[5:5 + 3 * PS]  # pages 0-3, all misses
    assert (sample("miss"), sample("hit")) == (4 * PS, 0)
    assert await handle.read(7, 2 * PS + 1) == DATA[7:8 + 2 * PS]  # pages 0-2, all hits
    assert (sample("miss"), sample("hit")) == (4 * PS, 2 * PS + 1)
    assert await handle.read(len(DATA) - 3, 100) == DATA[-3:]  # the short last page
    assert (sample("miss"), sample("hit")) == (4 * PS + 5, 2 * PS + 1)


async def test_reads_past_eof(nursery: trio.Nursery) -> None:
    env = Env(nursery)
    handle = env.open()
    assert await handle.read(len(DATA), 10) == b""
    assert await handle.read(len(DATA) + 1000, 10) == b""
    assert await handle.read(0, 0) == b""
    assert env.backend.reads == []
    assert await handle.read(len(DATA) - 3, 10) == DATA[-3:]


async def test_empty_file(nursery: trio.Nursery) -> None:
    env = Env(nursery, data=b"")
    handle = env.open()
    handle.start()
    assert await handle.read(0, 4096) == b""
    await trio.testing.wait_all_tasks_blocked()
    assert env.backend.reads == []


async def test_sequential_read_of_whole_file_in_odd_chunks(nursery: trio.Nursery) -> None:
    env = Env(nursery)
    handle = env.open()
    out = bytearray()
    while chunk := await handle.read(len(out), 7):
        out += chunk
    assert bytes(out) == DATA
    await trio.testing.wait_all_tasks_blocked()
    # Read-ahead or not, every page came from the backend exactly once.
    assert sorted(env.backend.read_offsets()) == list(range(0, len(DATA), PS))


async def test_demand_read_error_propagates(nursery: trio.Nursery) -> None:
    env = Env(nursery, max_readahead=0)
    env.backend.fail_at = {3 * PS}
    handle = env.open()
    with pytest.raises(BackendError):
        await handle.read(2 * PS, 2 * PS)
    env.backend.fail_at = set()
    assert await handle.read(2 * PS, 2 * PS) == DATA[2 * PS:4 * PS]


async def test_stale_when_inode_version_changes(nursery: trio.Nursery) -> None:
    env = Env(nursery)
    handle = env.open()
    assert await handle.read(0, 4) == DATA[:4]
    reads = len(env.backend.reads)
    env.inode.status = dataclasses.replace(env.inode.status, mtime_ns=2)
    with pytest.raises(StaleFile):
        await handle.read(0, 4)
    with pytest.raises(StaleFile):
        await handle.read(PS * 3, 4)
    assert len(env.backend.reads) == reads
    # A handle opened on the new version reads again (and never sees the old pages).
    env.backend.status = env.inode.status
    env.backend.data = bytes(reversed(DATA))
    fresh = env.open()
    assert fresh.version.mtime_ns == 2
    assert await fresh.read(0, 4) == bytes(reversed(DATA))[:4]


async def test_stale_when_size_changes(nursery: trio.Nursery) -> None:
    env = Env(nursery)
    handle = env.open()
    env.inode.status = dataclasses.replace(env.inode.status, size=len(DATA) + 1)
    with pytest.raises(StaleFile):
        await handle.read(0, 1)
    assert env.backend.reads == []


async def test_handle_table_numbers_every_open_once_and_finds_staged_files(
    nursery: trio.Nursery,
) -> None:
    """Numbers count up from 1 across every kind of handle and are never reused, so a late
    request on a closed handle finds nothing; an inode's staged file is found through an
    open ``StagedHandle`` of that inode, and only while one is open."""
    table = HandleTable()
    staged = cast(StagedFile, object())  # only its identity matters here
    assert table.add(DirHandle(1, "", [])) == 1
    writer = StagedHandle(7, staged, writing=True)
    assert table.add(writer) == 2
    assert table.add(Env(nursery).open()) == 3  # inode 5, read as a file: nothing staged
    assert len(table) == 3
    assert table.get(2) is writer
    assert table.staged(7) is staged
    assert table.staged(5) is None and table.staged(1) is None
    table.remove(2)
    assert table.get(2) is None and len(table) == 2
    assert table.staged(7) is None, "no open handle of inode 7 left"
    assert table.add(DirHandle(1, "", [])) == 4, "a number is never reused"
    table.remove(1)
    assert table.get(1) is None
