"""Read-ahead of open files: the window's growth, reset and bounds, the mount-wide prefetch
budget, what is fetched ahead, drop-behind of pages read through, a file's streams on
streaming backends, and runs of pages on span backends."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from alluxiofuse.errors import ConnectionDropped, StaleFile
from alluxiofuse.fs.pages import PageCache, PageKey
from alluxiofuse.fs.readahead import Prefetcher
from alluxiofuse.metrics import Metrics
from alluxiofuse.model import Version
from tests.support.fakebackend import DATA, PS, Env, FakeBackend, StreamBackend

# ``nursery`` is pytest-trio's fixture: a nursery cancelled when the test ends.


async def test_prefetcher_budget(nursery: trio.Nursery) -> None:
    """Bytes in flight never exceed the budget; finished fetches give theirs back."""
    pages = PageCache(1000 * PS, Metrics(CollectorRegistry()))
    p = Prefetcher(nursery.start_soon, pages, budget=3 * PS)
    release = trio.Event()

    async def fetch() -> bytes:
        await release.wait()
        return b"x" * PS

    def key(i: int) -> PageKey:
        return PageKey(1, Version(PS, 0), i)

    def wanted() -> bool:
        return True

    assert p.prefetch(key(0), fetch, PS, wanted)
    assert p.prefetch(key(1), fetch, 2 * PS, wanted)
    assert not p.prefetch(key(2), fetch, 1, wanted)
    assert p.prefetch(key(0), fetch, PS, wanted), "a page already in flight costs nothing"
    assert p.in_flight == 3 * PS
    release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert p.in_flight == 0
    assert key(0) in pages and key(1) in pages
    assert p.prefetch(key(0), fetch, PS, wanted) and p.in_flight == 0, "cached: nothing to do"


async def test_read_ahead_asks_once_per_page_and_again_after_a_jump(
    nursery: trio.Nursery,
) -> None:
    env = Env(nursery, streams=True)
    handle = env.open()
    key = partial(PageKey, handle.ino, handle.version)
    for page in range(4):
        await handle.read(page * PS, PS)
    await trio.testing.wait_all_tasks_blocked()
    assert key(4) in env.pages  # read ahead (pages 0-3 were read through: dropped)
    await handle.read(0, PS)  # back to the start: random, a new stream
    await handle.read(PS, PS)  # sequential again: read-ahead starts over
    await trio.testing.wait_all_tasks_blocked()
    assert key(2) in env.pages, "no read-ahead after the jump back"


async def test_sequential_reads_drop_the_pages_they_read_through(nursery: trio.Nursery) -> None:
    """Streams: the kernel caches what it was given, so a page a sequential reader has
    read to its end leaves the page cache at once; and a read-ahead task that starts only
    after the reader got there first (and read the page itself) does not go back for it,
    which would cost a stream reopened and read from the start."""
    env = Env(nursery, streams=True)
    spawned: list[tuple[Any, ...]] = []
    env.prefetcher.spawn = lambda *task: spawned.append(task)  # started only when told
    handle = env.open()
    assert await handle.read(0, PS) == DATA[:PS]  # read-ahead of page 1 spawned, not started
    assert await handle.read(PS, PS + 5) == DATA[PS:2 * PS + 5]  # reads page 1 itself
    key = partial(PageKey, handle.ino, handle.version)
    assert key(0) not in env.pages and key(1) not in env.pages  # read through: dropped
    assert key(2) in env.pages  # read only part-way: kept for the next read
    for task in spawned:
        nursery.start_soon(*task)
    await trio.testing.wait_all_tasks_blocked()
    assert len(env.backend.opened) == 1, "went back for a page read through"
    assert await handle.read(40 * PS, 3) == DATA[40 * PS:40 * PS + 3]  # random: kept
    assert key(40) in env.pages


async def test_any_backend_drops_what_a_sequential_reader_read_through(
    nursery: trio.Nursery,
) -> None:
    """Read by range too, a page read to its end in order leaves the page cache: the kernel
    holds it for the reader now, and kept here as well, every page of a large file would
    stay until evicted, each one fresh memory. Random reads keep theirs: the kernel holds
    only the bytes they asked for, and the rest of the page is what a nearby read wants."""
    env = Env(nursery, max_readahead=4 * PS)
    handle = env.open()
    key = partial(PageKey, handle.ino, handle.version)
    got = b""
    while len(got) < len(DATA):  # in kernel-sized reads that straddle pages
        got += await handle.read(len(got), 3 * PS // 2)
    assert got == DATA
    await trio.testing.wait_all_tasks_blocked()
    assert env.pages.used == 0, "pages read through stayed cached"
    assert sorted(env.backend.read_offsets()) == [i * PS for i in range(65)]  # each once
    random = env.open()
    assert await random.read(40 * PS + 3, 5) == DATA[40 * PS + 3:40 * PS + 8]
    assert await random.read(10 * PS, 5) == DATA[10 * PS:10 * PS + 5]
    assert key(40) in env.pages and key(10) in env.pages


async def test_readers_of_one_file_each_get_every_byte_while_pages_drop(
    nursery: trio.Nursery,
) -> None:
    """Several sequential readers of one file, at their own pace: a page one of them drops
    is fetched again for another that still wants it (the kernel answers that one from its
    cache, where it can), and none waits for a page that left, or gets another's bytes."""
    env = Env(nursery, max_readahead=4 * PS)
    results: dict[int, bytes] = {}

    async def reader(n: int, chunk: int) -> None:
        handle = env.open()
        got = b""
        while len(got) < len(DATA):
            got += await handle.read(len(got), chunk)
            await trio.lowlevel.checkpoint()  # take turns with the other readers
        results[n] = got

    with trio.fail_after(5):
        async with trio.open_nursery() as readers:
            for n, chunk in enumerate((PS, PS // 3, 2 * PS + 1)):
                readers.start_soon(reader, n, chunk)
    assert results == {0: DATA, 1: DATA, 2: DATA}
    assert env.pages.used == 0
    assert env.prefetcher.in_flight == 0


async def test_a_reader_that_goes_back_reads_ahead_again_though_reads_overlapped(
    nursery: trio.Nursery,
) -> None:
    """Going back starts a new run of sequential reads: what the old run read through must
    not count as read through for the new one, even when the kernel's next read arrives
    before the first read back is answered (else no page up to the old run's end would be
    fetched ahead)."""
    env = Env(nursery, max_readahead=4 * PS)
    handle = env.open()
    for index in range(41):  # read through to page 40
        assert await handle.read(index * PS, PS) == DATA[index * PS:(index + 1) * PS]
    await trio.testing.wait_all_tasks_blocked()
    env.backend.hold.add(10 * PS)
    back: list[bytes] = []

    async def read_back() -> None:
        back.append(await handle.read(10 * PS, PS))

    nursery.start_soon(read_back)
    await trio.testing.wait_all_tasks_blocked()  # waiting for page 10
    next_read = await handle.read(11 * PS, PS)  # the kernel's next read, meanwhile
    assert next_read == DATA[11 * PS:12 * PS]
    env.backend.gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert back == [DATA[10 * PS:11 * PS]]
    assert await handle.read(12 * PS, PS) == DATA[12 * PS:13 * PS]
    await trio.testing.wait_all_tasks_blocked()
    assert PageKey(handle.ino, handle.version, 13) in env.pages, "no read-ahead"


async def test_window_doubles_on_sequential_reads_and_resets_on_random(
    nursery: trio.Nursery,
) -> None:
    env = Env(nursery, max_readahead=8 * PS)
    handle = env.open()
    windows = []
    for page in range(6):
        await handle.read(page * PS, PS)
        windows.append(handle.window)
    assert windows == [1, 2, 4, 8, 8, 8]
    await handle.read(5 * PS + 3, 4)  # same page again: neither grows nor resets
    assert handle.window == 8
    await handle.read(40 * PS, PS)  # a jump: random
    assert handle.window == 0
    await handle.read(41 * PS, PS)
    assert handle.window == 1
    await handle.read(2 * PS, PS)  # backwards: random
    assert handle.window == 0


async def test_window_bounded_by_max_readahead(nursery: trio.Nursery) -> None:
    env = Env(nursery, max_readahead=3 * PS)
    handle = env.open()
    for page in range(5):
        await handle.read(page * PS, PS)
    assert handle.window == 3
    env2 = Env(nursery, max_readahead=PS - 1)  # less than a page: no read-ahead at all
    handle2 = env2.open()
    for page in range(5):
        await handle2.read(page * PS, PS)
    assert handle2.window == 0
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(env2.backend.read_offsets()) == [p * PS for p in range(5)]


async def test_window_grows_once_per_new_page(nursery: trio.Nursery) -> None:
    env = Env(nursery, max_readahead=64 * PS)
    handle = env.open()
    for offset in range(0, PS, 4):  # four small reads inside page 0
        await handle.read(offset, 4)
    assert handle.window == 1
    await handle.read(PS - 2, 4)  # crosses into page 1
    assert handle.window == 2
    await handle.read(2 * PS, 3 * PS)  # pages 2-4 in one read
    assert handle.window == 4


async def test_read_ahead_fetches_the_window(nursery: trio.Nursery) -> None:
    env = Env(nursery, max_readahead=8 * PS)
    handle = env.open()
    await handle.read(0, PS)  # window 1: page 1
    await handle.read(PS, PS)  # window 2: pages 2, 3
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(env.backend.read_offsets()) == [0, PS, 2 * PS, 3 * PS]
    before = len(env.backend.reads)
    assert await handle.read(2 * PS, 2 * PS) == DATA[2 * PS:4 * PS]
    new = env.backend.read_offsets()[before:]
    assert 2 * PS not in new and 3 * PS not in new  # served from prefetched pages
    await trio.testing.wait_all_tasks_blocked()
    assert env.prefetcher.in_flight == 0


async def test_prefetch_never_exceeds_budget(nursery: trio.Nursery) -> None:
    env = Env(nursery, max_readahead=32 * PS, budget=2 * PS)
    env.backend.hold = set(range(4 * PS, len(DATA), PS))
    handle = env.open()
    for page in range(4):
        assert await handle.read(page * PS, PS) == DATA[page * PS:(page + 1) * PS]
        await trio.testing.wait_all_tasks_blocked()
        assert env.prefetcher.in_flight <= 2 * PS
        assert env.backend.active <= 2
    held = sorted(o for o in env.backend.read_offsets() if o >= 4 * PS)
    assert held == [4 * PS, 5 * PS]  # the window wants 8 pages; the budget allows two
    assert env.backend.active == 2
    assert env.prefetcher.in_flight == 2 * PS
    env.backend.gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert env.prefetcher.in_flight == 0
    # The prefetched pages are now served without another backend call.
    before = len(env.backend.reads)
    assert await handle.read(4 * PS, 2 * PS) == DATA[4 * PS:6 * PS]
    new = env.backend.read_offsets()[before:]
    assert 4 * PS not in new and 5 * PS not in new
    await trio.testing.wait_all_tasks_blocked()
    assert env.backend.max_active <= 3  # two prefetches plus at most one demand read


async def test_budget_is_shared_between_handles(nursery: trio.Nursery) -> None:
    env = Env(nursery, max_readahead=32 * PS, budget=3 * PS)
    env.backend.hold = {2 * PS, 3 * PS, 22 * PS}
    a, b, c = env.open(), env.open(), env.open()
    await a.read(0, PS)  # prefetches page 1
    await trio.testing.wait_all_tasks_blocked()
    await a.read(PS, PS)  # window 2: pages 2 and 3, held
    await b.read(20 * PS, PS)  # random: no prefetch
    await b.read(21 * PS, PS)  # window 1: page 22, held; the budget is now spent
    await c.read(40 * PS, PS)
    await c.read(41 * PS, PS)  # window 1, but no budget left for page 42
    await trio.testing.wait_all_tasks_blocked()
    assert env.prefetcher.in_flight == 3 * PS
    assert 42 * PS not in env.backend.read_offsets()
    assert env.backend.active == 3
    env.backend.gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert env.prefetcher.in_flight == 0
    assert await c.read(42 * PS, PS) == DATA[42 * PS:43 * PS]
    assert env.backend.read_offsets().count(42 * PS) == 1


async def test_demand_read_waits_for_prefetch_in_flight(nursery: trio.Nursery) -> None:
    env = Env(nursery, max_readahead=8 * PS)
    env.backend.hold = {PS}
    handle = env.open()
    await handle.read(0, PS)  # prefetches page 1, held
    await trio.testing.wait_all_tasks_blocked()
    assert env.backend.read_offsets() == [0, PS]
    got: list[bytes] = []

    async def demand() -> None:
        got.append(await handle.read(PS, PS))

    nursery.start_soon(demand)
    await trio.testing.wait_all_tasks_blocked()
    assert got == []
    env.backend.gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert got == [DATA[PS:2 * PS]]
    assert env.backend.read_offsets().count(PS) == 1


async def test_start_fetches_the_first_page(nursery: trio.Nursery) -> None:
    env = Env(nursery)
    handle = env.open()
    handle.start()
    await trio.testing.wait_all_tasks_blocked()
    assert env.backend.read_offsets() == [0]
    assert await handle.read(0, 10) == DATA[:10]
    assert env.backend.read_offsets().count(0) == 1


async def test_failed_prefetch_releases_budget_and_demand_read_retries(
    nursery: trio.Nursery,
) -> None:
    env = Env(nursery, max_readahead=8 * PS, budget=4 * PS)
    env.backend.fail_at = {PS}
    handle = env.open()
    await handle.read(0, PS)  # prefetch of page 1 fails quietly (a debug line, no warning)
    await trio.testing.wait_all_tasks_blocked()
    assert env.prefetcher.in_flight == 0
    assert env.backend.read_offsets() == [0, PS]
    env.backend.fail_at = set()
    assert await handle.read(PS, PS) == DATA[PS:2 * PS]
    assert env.backend.read_offsets().count(PS) == 2


# --- backends read as streams (the Alluxio 2.x proxy) -------------------------------------


async def test_a_sequential_read_takes_one_stream_and_closes_it_at_the_end(
    nursery: trio.Nursery,
) -> None:
    env = Env(nursery, streams=True)
    backend = env.backend
    assert isinstance(backend, StreamBackend)
    handle = env.open()
    handle.start()
    out = bytearray()
    while chunk := await handle.read(len(out), 5 * PS + 3):
        out += chunk
    assert bytes(out) == DATA
    await trio.testing.wait_all_tasks_blocked()
    # One stream for the whole file, read-ahead included; every byte sent once.
    assert (len(backend.opened), backend.sent) == (1, len(DATA))
    assert backend.open_streams() == 0, "closed once the end was read"
    await handle.aclose()


async def test_read_ahead_taking_pages_out_of_order_reads_no_byte_twice(
    nursery: trio.Nursery,
) -> None:
    env = Env(nursery, streams=True, max_readahead=16 * PS)
    backend = env.backend
    assert isinstance(backend, StreamBackend)
    handle = env.open()
    # The first read's page and then read-ahead pages from other tasks: whichever task
    # takes the stream first, pages it passes are handed to the tasks waiting for them.
    for offset in range(0, 12 * PS, PS):
        assert await handle.read(offset, PS) == DATA[offset:offset + PS]
    await trio.testing.wait_all_tasks_blocked()
    assert len(backend.opened) == 1
    assert backend.sent == min(len(DATA), (12 + 16) * PS)
    await handle.aclose()
    assert backend.open_streams() == 0


async def test_going_back_reopens_and_going_forward_reads_on(nursery: trio.Nursery) -> None:
    env = Env(nursery, streams=True, max_readahead=0)
    backend = env.backend
    assert isinstance(backend, StreamBackend)
    handle = env.open()
    assert await handle.read(10 * PS, 3) == DATA[10 * PS:10 * PS + 3]
    assert (len(backend.opened), backend.sent) == (1, 11 * PS)  # advanced past 10 pages
    assert await handle.read(20 * PS + 1, 2) == DATA[20 * PS + 1:20 * PS + 3]
    assert (len(backend.opened), backend.sent) == (1, 21 * PS), "forward: read on"
    assert await handle.read(2 * PS, 1) == DATA[2 * PS:2 * PS + 1]
    assert (len(backend.opened), backend.sent) == (2, 24 * PS), "back: a new stream"
    assert backend.opened[0].closed and backend.open_streams() == 1
    await handle.aclose()
    assert backend.open_streams() == 0


async def test_a_stream_cut_while_reading_on_is_reopened_once(nursery: trio.Nursery) -> None:
    env = Env(nursery, streams=True, max_readahead=0)
    backend = env.backend
    assert isinstance(backend, StreamBackend)
    handle = env.open()
    assert await handle.read(0, PS) == DATA[:PS]
    backend.drop_at = {PS}  # as a proxy that expired the stream meanwhile
    assert await handle.read(PS, PS) == DATA[PS:2 * PS]
    assert len(backend.opened) == 2 and backend.open_streams() == 1
    # A fresh stream that fails is not tried again: the error is the read's.
    backend.drop_at = {0}
    handle2 = env.open()
    with pytest.raises(ConnectionDropped):
        await handle2.read(10 * PS, PS)
    assert backend.open_streams() == 1
    await handle.aclose()


async def test_a_file_that_changed_under_its_stream_is_stale(nursery: trio.Nursery) -> None:
    env = Env(nursery, streams=True, max_readahead=0)
    backend = env.backend
    assert isinstance(backend, StreamBackend)
    handle = env.open()
    assert await handle.read(0, PS) == DATA[:PS]
    backend.data = DATA[:3 * PS]  # shorter now, same status: only the stream can tell
    with pytest.raises(StaleFile):
        await handle.read(5 * PS, PS)
    backend.data = DATA + b"more"
    handle2 = env.open()
    with pytest.raises(StaleFile, match="longer"):
        await handle2.read(len(DATA) - 5, 5)
    assert backend.open_streams() == 0


async def test_no_stream_is_opened_once_the_file_is_closed(nursery: trio.Nursery) -> None:
    env = Env(nursery, streams=True, max_readahead=8 * PS)
    backend = env.backend
    assert isinstance(backend, StreamBackend)
    handle = env.open()
    assert await handle.read(0, PS) == DATA[:PS]  # read-ahead of pages 1-2 is spawned
    await handle.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert backend.open_streams() == 0
    with pytest.raises(StaleFile):
        await handle.read(30 * PS, 1)
    assert backend.open_streams() == 0


class SpanBackend(FakeBackend):
    """A backend that reads runs of up to four contiguous pages in one request."""

    span = 4 * PS

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.runs: builtins.list[builtins.list[int]] = []

    async def read_many(
        self, reads: Sequence[tuple[str, int, int, Version]],
    ) -> builtins.list[bytes]:
        self.runs.append([offset // PS for _, offset, _, _ in reads])
        return [await self.read(*read) for read in reads]


async def test_read_ahead_of_a_span_backend_comes_in_full_runs(nursery: trio.Nursery) -> None:
    """A sequential reader's window is asked for in requests of the backend's span (four
    pages here), shorter only for the reader's next pages or the end of the file; every
    page is fetched once."""
    env = Env(nursery, max_readahead=16 * PS)
    backend = env.backend = SpanBackend(DATA)
    h = env.open()
    h.start()
    out = b""
    for offset in range(0, len(DATA), PS):
        out += await h.read(offset, PS)
        await trio.testing.wait_all_tasks_blocked()
    assert out == DATA
    offsets = backend.read_offsets()
    assert sorted(offsets) == list(range(0, len(DATA), PS)), "every page once"
    assert sum(len(run) for run in backend.runs) >= len(offsets) - 2, "read ahead in runs"
    assert len(backend.runs) < len(offsets) // 3
    last = (len(DATA) - 1) // PS
    for run in backend.runs:
        assert run == list(range(run[0], run[0] + len(run))), "contiguous"
        assert len(run) == 4 or run[-1] == last or run[0] <= 8, backend.runs


async def test_the_first_page_after_an_open_is_fetched_as_a_readers(
    nursery: trio.Nursery,
) -> None:
    """The kernel's first read follows the open at once: its page is fetched under the
    waiting readers' bound (``read``), never queued as read-ahead (``read_many``) behind
    other files' runs."""
    env = Env(nursery, max_readahead=16 * PS)
    backend = env.backend = SpanBackend(DATA)
    handle = env.open()
    handle.start()
    await trio.testing.wait_all_tasks_blocked()
    assert backend.read_offsets() == [0] and backend.runs == []
    assert await handle.read(0, PS) == DATA[:PS]
    assert backend.read_offsets().count(0) == 1


async def test_a_page_whose_halves_are_read_out_of_order_is_fetched_once(
    nursery: trio.Nursery,
) -> None:
    """The kernel's concurrent read-ahead requests can arrive out of order: a read that ends
    a page is not a read through it unless what came before it on the page was read."""
    env = Env(nursery, max_readahead=4 * PS)
    handle = env.open()
    half = PS // 2
    assert await handle.read(0, PS) == DATA[:PS]
    assert await handle.read(PS + half, PS - half) == DATA[PS + half:2 * PS]
    assert await handle.read(PS, half) == DATA[PS:PS + half]
    assert await handle.read(2 * PS, PS) == DATA[2 * PS:3 * PS]
    await trio.testing.wait_all_tasks_blocked()
    assert env.backend.read_offsets().count(PS) == 1, env.backend.read_offsets()


async def test_the_fetch_at_the_open_comes_to_nothing_once_the_page_was_read(
    nursery: trio.Nursery,
) -> None:
    """The first page, fetched at the open, is read through and dropped before that task
    starts (a busy loop), and a read the kernel sent out of order resets the window: the
    task must not fetch the page a second time."""
    env = Env(nursery, max_readahead=4 * PS)
    spawned: list[tuple[Any, ...]] = []
    env.prefetcher.spawn = lambda *task: spawned.append(task)  # held back
    handle = env.open()
    handle.start()
    env.prefetcher.spawn = nursery.start_soon
    assert await handle.read(0, PS) == DATA[:PS]  # read through: dropped
    assert await handle.read(3 * PS, 10) == DATA[3 * PS:3 * PS + 10]  # out of order
    for task in spawned:
        nursery.start_soon(*task)
    await trio.testing.wait_all_tasks_blocked()
    assert env.backend.read_offsets().count(0) == 1, env.backend.read_offsets()
